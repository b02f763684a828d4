"""The aggregator's Prometheus metrics, exposed through prometheus_client.

`families` reads the ledger's counters (and the refusals the API counted before the ledger)
and describes them as metric families; `registry` makes a CollectorRegistry of the API's own
that does so on every scrape, and `render` is one scrape as exposition text (format 0.0.4).
Names, labels, HELP and TYPE lines are the ones the aggregator has always exposed, under
`meterledger_aggregator_` (meterledger.infra.metrics keeps prometheus_client from renaming
counters); values are written as prometheus_client writes them (`3.0`). `parse_metrics`
(meterledger.infra.metrics) reads the text back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry

from aggregator.chain.ledger import AggregatorError, Ledger
from meterledger.infra import metrics as M
from meterledger.wire.chain import ROLES

__all__ = ["PREFIX", "families", "registry", "render"]

PREFIX = "meterledger_aggregator_"


def families(ledger: Ledger, refused: Mapping[str, int],
             dispatch: Mapping[str, int] | None = None) -> M.Families:
    """All aggregator metrics; `refused` counts POSTs the API refused before the ledger,
    `dispatch` the dispatcher's events (rule sets skipped, ...) when one runs."""
    s = ledger.stats()
    head = ledger.head()
    rejected = Counter(s.rejected)
    rejected.update(refused)
    try:
        roles: Counter[str] | None = Counter(p.role for p in ledger.participants())
    except AggregatorError:  # the store cannot be read (closing): the rest still renders
        roles = None
    w = M.Families(PREFIX)
    w.family("accepted_total", "counter",
             "Transactions sealed into blocks since the service started, by kind.",
             [({"kind": k}, s.accepted[k]) for k in sorted(s.accepted)])
    w.family("rejected_total", "counter",
             "Transactions refused since the service started, by reason code "
             "(duplicate included).",
             [({"reason": r}, rejected[r]) for r in sorted(rejected)])
    w.one("blocks_sealed_total", "counter", "Blocks sealed since the service started.",
          s.blocks_sealed)
    w.one("height", "gauge", "Height of the newest block (genesis is 0).", head.height)
    w.one("anchors_total", "counter", "Fog anchors accepted since the service started.",
          s.anchors)
    w.one("pending", "gauge", "Transactions validated and waiting for their block.", s.pending)
    w.family("participants", "gauge", "Registered participants by role.",
             [({"role": r}, roles[r]) for r in ROLES] if roles is not None else [])
    if dispatch is not None:
        w.family("dispatch_events_total", "counter",
                 "Dispatcher events since the service started (rules_skipped: a registered "
                 "rule set that does not parse, skipped and logged).",
                 [({"event": k}, dispatch[k]) for k in sorted(dispatch)])
    return w


def registry(ledger: Ledger, refused: Callable[[], Mapping[str, int]],
             dispatch: Callable[[], Mapping[str, int] | None] = lambda: None,
             ) -> CollectorRegistry:
    """A registry of the ledger's metrics, read afresh on every scrape (`refused()`: the
    API's own refusals, by reason; `dispatch()`: the dispatcher's counters, if any)."""
    return M.registry(lambda: families(ledger, refused(), dispatch()))


def render(ledger: Ledger, refused: Mapping[str, int]) -> str:
    """All aggregator metrics as one exposition-format document."""
    return M.render(families(ledger, refused))
