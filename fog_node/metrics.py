"""The fog node's Prometheus metrics, exposed through prometheus_client.

`families` reads the node's counters and stores under `node.lock` (an RLock, so callers that
already hold it may call it too) and describes them as metric families; `registry` makes a
CollectorRegistry of the API's own that does so on every scrape, and `render` is one scrape
as exposition text (format 0.0.4). Names, labels, HELP and TYPE lines are the ones the node
has always exposed (meterledger.infra.metrics keeps prometheus_client from renaming
counters). `parse_metrics` (meterledger.infra.metrics) reads the text back for tests and
the demo.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from fog_node.node import FogNode
from fog_node.ota import COUNTERS as OTA_COUNTERS
from fog_node.registry import ACTIVE, REVOKED
from fog_node.republish import COUNTER_HELP as REPUBLISH_HELP
from fog_node.transport.rs485.master import COUNTER_HELP as RS485_HELP
from meterledger.infra import metrics as M
from meterledger.infra.metrics import MetricsError, parse_metrics

__all__ = ["PREFIX", "MetricsError", "families", "parse_metrics", "registry", "render"]

PREFIX = "meterledger_fog_"


# long: every metric family of the fog in one list, in exposition order
def families(node: FogNode, now: float) -> M.Families:
    """All fog metrics at time `now` (Unix seconds)."""
    with node.lock:
        counters = node.ingest.counters
        rejected = dict(node.ingest.rejected)
        log_size = node.log.size()
        latest = node.checkpoints.latest()
        quarantine_size = node.registry.quarantine_size()
        statuses = Counter(d.status for d in node.registry.devices())
        alerts = Counter(kind for _, kind, _, _ in node.registry.alerts())
    bus = node.rs485
    rs485 = {k: bus.counters[k] for k in RS485_HELP} if bus is not None else None
    storage = node.storage
    storage_failures = storage.failures_now()

    w = M.Families(PREFIX)
    w.one("accepted_total", "counter",
          "Meter messages verified and appended to the log since the node started.",
          counters["logged"])
    w.family("rejected_total", "counter",
             "Meter messages rejected since the node started, by reason code "
             "(docs/PROTOCOL.md section 3 and the ingest reasons).",
             [({"reason": r}, rejected[r]) for r in sorted(rejected)])
    w.one("quarantined", "gauge",
          "Readings from unknown meters held in quarantine now.", quarantine_size)
    w.one("quarantined_total", "counter",
          "Readings from unknown meters put into quarantine since the node started.",
          counters["quarantined"])
    w.one("duplicates_total", "counter",
          "Messages received again after they were logged (re-acked, not logged twice).",
          counters["duplicates"])
    w.one("acks_total", "counter", "Signed acks produced since the node started.",
          counters["acks"])
    w.one("quarantine_dropped_total", "counter",
          "Quarantined messages dropped (oldest first) to keep the quarantine's bounds.",
          counters["quarantine_dropped"])
    w.one("inbox_dropped_total", "counter",
          "Arrived messages dropped unacked (oldest first) from a topic over its backlog.",
          counters["inbox_dropped"])
    w.one("storage_ok", "gauge",
          "0 while the node is in a storage fault (a full disk: nothing is acked), else 1.",
          0 if storage.fault is not None else 1)
    w.family("step_failures_total", "counter",
             "Ingest steps that failed since the node started, by kind: a storage fault "
             "(disk_full, io_error, read_only, corrupt, busy, database) or internal (a bug, "
             "logged with its traceback).",
             [({"kind": k}, storage_failures[k]) for k in sorted(storage_failures)])
    w.one("log_size", "gauge", "Entries in the Merkle log.", log_size)
    w.one("checkpoint_height", "gauge",
          "Height of the latest signed checkpoint (0: none sealed yet).",
          latest.height if latest else 0)
    w.one("checkpoint_lag_entries", "gauge",
          "Log entries not yet covered by a signed checkpoint.",
          log_size - (latest.size if latest else 0))
    # no sample before the first checkpoint: a lag since "never" has no value, and
    # checkpoint_height 0 already says so
    w.family("checkpoint_lag_seconds", "gauge",
             "Seconds since the latest signed checkpoint's t.",
             [({}, now - latest.t)] if latest else [])
    w.family("devices", "gauge", "Enrolled meters by status.",
             [({"status": s}, statuses[s]) for s in (ACTIVE, REVOKED)])
    w.family("alerts_total", "counter", "Alerts raised (kept in the registry), by kind.",
             [({"kind": k}, alerts[k]) for k in sorted(alerts)])
    chain = node.chain
    if chain is not None:  # anchoring to the dispatch chain is configured
        w.one("anchored_checkpoint_height", "gauge",
              "Height of the newest checkpoint the dispatch chain confirmed.",
              chain.anchored_height())
        w.one("chain_outbox", "gauge",
              "Signed dispatch-chain transactions waiting to be confirmed.", chain.depth())
        w.one("chain_halted", "gauge",
              "1 if the chain refused a transaction and anchoring stopped.",
              1 if chain.halted else 0)
        w.family("chain_events_total", "counter",
                 "Dispatch-chain link events (anchors queued and landed, chain unavailable, "
                 "instructions received or rejected).",
                 [({"event": k}, chain.counters[k]) for k in sorted(chain.counters)])
    republish = node.republish_counters
    if republish is not None:  # the node republishes for Home Assistant (docs/DATA.md)
        for kind, help_ in REPUBLISH_HELP.items():
            w.one(f"republish_{kind}_total", "counter", "Home Assistant republisher: " + help_,
                  republish[kind])
    w.one("ota_refused_not_enrolled_total", "counter",
          "Firmware pushes refused because the meter is not enrolled.",
          OTA_COUNTERS["refused_not_enrolled"])
    if rs485 is not None:  # the node is master of an RS485 bus
        for kind, help_ in RS485_HELP.items():
            w.one(f"rs485_{kind}_total", "counter", "RS485 bus: " + help_, rs485[kind])
    return w


def registry(node: FogNode, clock: Callable[[], float]) -> CollectorRegistry:
    """A registry of the node's metrics, read afresh (at `clock()`) on every scrape."""
    return M.registry(lambda: families(node, clock()))


def render(node: FogNode, now: float) -> str:
    """All fog metrics at time `now` (Unix seconds), as one exposition-format document."""
    return M.render(families(node, now))
