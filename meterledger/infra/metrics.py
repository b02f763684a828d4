"""Prometheus metrics of the fog and the chain node, through prometheus_client.

A service describes its metrics on each scrape: a function that reads its counters and
stores (under its own locks) and fills a `Families` with them. `registry(build)` wraps that
in a collector on a CollectorRegistry of its own (never prometheus_client's global one:
several nodes run in one test process), and `exposition(registry)` renders it with
prometheus_client's `generate_latest` in the text format 0.0.4 (`CONTENT_TYPE`).

The exposed names are exactly the ones given. prometheus_client's text writer appends
`_total` to a counter family's name in its HELP and TYPE lines, so a counter is handed to it
under its name without `_total` (and its samples with it): the lines come out as
`# TYPE meterledger_fog_accepted_total counter` and `meterledger_fog_accepted_total 3.0`,
as the hand-written format had them. Counter names must therefore end in `_total`. The
families are built fresh on each scrape from the service's own counters, so there are no
`_created` series (prometheus_client adds those only to its own Counter objects). Values
are written the way prometheus_client writes them (`3.0`, `1.5e+06`, `NaN`, `+Inf`).

`parse_metrics` reads the text format back into a flat dict for tests, tools and the demo;
it is no general Prometheus parser, but it does read what `exposition` writes, escaped
label values included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from meterledger.errors import MeterLedgerError

__all__ = [
    "CONTENT_TYPE", "Families", "MetricsError", "escape_label", "exposition", "parse_metrics",
    "registry",
]

# the text exposition format the services have always served (prometheus_client's own
# CONTENT_TYPE_LATEST is a newer version of the format)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = ("counter", "gauge")


class MetricsError(MeterLedgerError, ValueError):
    """Text that is not in the exposition format `parse_metrics` reads, or a metric that
    cannot be exposed under its name."""


def escape_label(value: str) -> str:
    """A label value as the exposition format writes it inside double quotes."""
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


class Families:
    """The metric families of one scrape, in order, each under `prefix` + its name."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.metrics: list[Metric] = []

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
        """One family: its HELP and TYPE lines, then its samples (possibly none)."""
        full = self.prefix + name
        if kind not in KINDS:
            raise MetricsError(f"{full}: kind {kind!r} is not one of {', '.join(KINDS)}")
        family = full
        if kind == "counter":
            if not full.endswith("_total"):
                raise MetricsError(f"counter {full} must end in _total (prometheus_client "
                                   "exposes a counter as NAME_total)")
            family = full[:-len("_total")]  # generate_latest appends it back
        m = Metric(family, help_, kind)
        for labels, value in samples:
            m.add_sample(full, dict(labels), float(value))
        self.metrics.append(m)

    def one(self, name: str, kind: str, help_: str, value: float) -> None:
        self.family(name, kind, help_, [({}, value)])


class _Collector:
    """A prometheus_client collector that builds its families on each scrape."""

    def __init__(self, build: Callable[[], Families]) -> None:
        self.build = build

    def collect(self) -> Iterator[Metric]:
        yield from self.build().metrics


def registry(build: Callable[[], Families]) -> CollectorRegistry:
    """A registry of its own whose one collector calls `build` on every scrape."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(build))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The registry's metrics in the text format 0.0.4."""
    return generate_latest(reg)


def render(families: Families) -> str:
    """One set of families as exposition text (what a scrape of them would answer)."""
    return exposition(registry(lambda: families)).decode()


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
