"""The aggregator's Prometheus metrics, in the text exposition format (version 0.0.4).

Same format and helpers as the fog's (fog_node.metrics, whose `parse_metrics` reads both
back); the names start with `meterledger_aggregator_`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from aggregator.chain.ledger import AggregatorError, Ledger
from meterledger.infra.metrics import escape_label
from meterledger.wire.chain import ROLES

PREFIX = "meterledger_aggregator_"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[Mapping[str, str], int]]) -> None:
        full = PREFIX + name
        self.lines += [f"# HELP {full} {help_}", f"# TYPE {full} {kind}"]
        for labels, value in samples:
            text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{full}{{{text}}} {value}" if labels else f"{full} {value}")

    def one(self, name: str, kind: str, help_: str, value: int) -> None:
        self.family(name, kind, help_, [({}, value)])


def render(ledger: Ledger, refused: Mapping[str, int]) -> str:
    """All aggregator metrics; `refused` counts POSTs the API refused before the ledger."""
    s = ledger.stats()
    head = ledger.head()
    rejected = Counter(s.rejected)
    rejected.update(refused)
    try:
        roles: Counter[str] | None = Counter(p.role for p in ledger.participants())
    except AggregatorError:  # the store cannot be read (closing): the rest still renders
        roles = None
    w = _Writer()
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
    return "\n".join(w.lines) + "\n"
