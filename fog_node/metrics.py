"""The fog node's Prometheus metrics, in the text exposition format (version 0.0.4).

`render` reads the node's counters and stores under `node.lock` (an RLock, so callers that
already hold it may call it too). `parse_metrics` reads the format back into a flat dict
for tests and the demo; it is no general Prometheus parser, but it does handle what
`render` can produce, escaped label values included.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

from fog_node.node import FogNode
from fog_node.registry import ACTIVE, REVOKED
from fog_node.rs485 import COUNTER_HELP as RS485_HELP
from meterledger.infra.metrics import escape_label

PREFIX = "meterledger_fog_"


class MetricsError(ValueError):
    """Text that is not in the exposition format `parse_metrics` reads."""


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))  # counters read better as 12 than as 12.0
    return repr(float(v))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
        """One metric family: its HELP and TYPE lines, then its samples (possibly none)."""
        full = PREFIX + name
        self.lines.append(f"# HELP {full} {_escape_help(help_)}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            series = f"{full}{{{label_text}}}" if labels else full
            self.lines.append(f"{series} {_number(value)}")

    def one(self, name: str, kind: str, help_: str, value: float) -> None:
        self.family(name, kind, help_, [({}, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(node: FogNode, now: float) -> str:
    """All fog metrics at time `now` (Unix seconds), as one exposition-format document."""
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

    w = _Writer()
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
    if rs485 is not None:  # the node is master of an RS485 bus
        for kind, help_ in RS485_HELP.items():
            w.one(f"rs485_{kind}_total", "counter", "RS485 bus: " + help_, rs485[kind])
    return w.text()


def _split_series(line: str, lineno: int) -> tuple[str, str]:
    """(series as written, rest of the line) of a sample line."""
    brace = line.find("{")
    space = line.find(" ")
    if brace == -1 or (space != -1 and space < brace):
        if space == -1:
            raise MetricsError(f"line {lineno}: sample {line!r} has no value")
        return line[:space], line[space + 1:]
    # labels: find the closing brace outside quoted values, honouring backslash escapes
    i, quoted = brace + 1, False
    while i < len(line):
        c = line[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == "\"":
            quoted = not quoted
        elif c == "}" and not quoted:
            return line[:i + 1], line[i + 1:]
        i += 1
    raise MetricsError(f"line {lineno}: label set of {line!r} is not closed with '}}'")


def parse_metrics(text: str) -> dict[str, float]:
    """Samples of an exposition-format document, keyed by series as written, e.g.
    'meterledger_fog_rejected_total{reason="bad_signature"}' -> 3.0.

    Comments and blank lines are skipped; a sample's optional timestamp is ignored. Raises
    MetricsError naming the line for a sample without a number or a series given twice.
    """
    out: dict[str, float] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        series, rest = _split_series(line, lineno)
        parts = rest.split()
        if not 1 <= len(parts) <= 2:
            raise MetricsError(f"line {lineno}: expected a value (and optional timestamp) "
                               f"after {series!r}, got {rest.strip()!r}")
        try:
            value = float(parts[0])
        except ValueError:
            raise MetricsError(
                f"line {lineno}: value {parts[0]!r} of {series!r} is not a number") from None
        if series in out:
            raise MetricsError(f"line {lineno}: series {series!r} appears twice")
        out[series] = value
    return out
