"""Rule sets: a dispatcher's TOML file of "when a feeder does X for N intervals, propose Y",
parsed strictly, and `suggest`, the pure function that applies rule sets to anchored
aggregates (docs/PROTOCOL.md section 19 has the grammar and the semantics).

The chain registers a rule set's text as it is (a `rules` transaction); its id is the
SHA-256 of that text. The chain does not parse it: a chain rule must not depend on a grammar
that may grow, or an old chain would stop verifying. The CLI and the API parse before they
sign, and the evaluator skips (and logs) a registered text it cannot parse.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.chain.ledger import AggregatorError
from meterledger import wire as P
from meterledger.wire import chain as C
from meterledger.wire.cbor import encode

METRICS = ("import_kw", "export_kw", "net_kw", "loss_pct", "coverage_pct", "v_min_v",
           "v_max_v")
# op -> (the one key of its args table, its TOML type); args map to {1: value} (SPEC type 4)
OPS: dict[str, tuple[str, type]] = {"relay": ("on", bool), "limit": ("max_w", int),
                                    "interval": ("seconds", int)}
TOP_KEYS = ("name", "version", "rule")
RULE_KEYS = ("id", "feeder", "fog", "metric", "above", "below", "for_intervals", "op", "args",
             "devs", "valid_s", "why")
DEFAULT_VALID_S = 900
ANY = "*"


class RulesError(AggregatorError):
    """A rule file that cannot be used; the message names the file, the rule and the key."""


@dataclass(frozen=True)
class Rule:
    id: str
    feeder: str  # a feeder name, or "*" for every feeder
    fog: bytes | None  # only this fog's feeders; None: any fog
    metric: str
    above: float | None
    below: float | None
    for_intervals: int
    op: str
    args: dict[int, Any]
    devs: tuple[bytes, ...]
    valid_s: int
    why: str

    def holds(self, value: float | None) -> bool:
        """The condition on one interval's metric; an undefined metric never holds."""
        if value is None:
            return False
        return (self.above is None or value > self.above) and \
            (self.below is None or value < self.below)

    def condition(self) -> str:
        side = f"above {self.above:g}" if self.above is not None else f"below {self.below:g}"
        n = self.for_intervals
        return f"{self.metric} {side} for {n} interval{'s' if n > 1 else ''}"


@dataclass(frozen=True)
class RuleSet:
    name: str
    version: int
    digest: bytes  # the rule set's id: SHA-256 of text's UTF-8 bytes
    text: str
    rules: tuple[Rule, ...] = field(default=())


# --- parsing -----------------------------------------------------------------------------------
class _Where:
    """Error messages that say where: file, then rule, then key."""

    def __init__(self, source: str, rule: str | None = None) -> None:
        self.source, self.rule = source, rule

    def error(self, key: str, what: str) -> RulesError:
        where = self.source + (f": rule {self.rule!r}" if self.rule is not None else "")
        return RulesError(f"{where}: {key}: {what}")


def _int(w: _Where, key: str, v: Any, low: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise w.error(key, f"must be an integer, not {type(v).__name__} {v!r}")
    if v < low:
        raise w.error(key, f"must be >= {low}, not {v}")
    return v


def _text(w: _Where, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise w.error(key, f"must be a non-empty string, not {v!r}")
    return v


def _id8(w: _Where, key: str, v: Any) -> bytes:
    try:
        if isinstance(v, str) and len(v) == 16:
            return bytes.fromhex(v)
    except ValueError:
        pass
    raise w.error(key, f"must be an 8-byte id as 16 hex characters, not {v!r}")


def _number(w: _Where, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise w.error(key, f"must be a finite number, not {v!r}")
    return float(v)


def _args(w: _Where, op: str, v: Any) -> dict[int, Any]:
    name, kind = OPS[op]
    shape = f"{{ {name} = {kind.__name__} }}"
    if not isinstance(v, dict) or list(v) != [name]:
        raise w.error("args", f"op {op!r} takes args {shape}, not {v!r}")
    value = v[name]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise w.error("args", f"{name} must be a {kind.__name__}, not {value!r}")
    err = P.command_args_error(op, {1: value})
    if err is not None:
        raise w.error("args", f"{name} = {value!r}: {err}")
    return {1: value}


def _rule(source: str, n: int, doc: Any) -> Rule:
    w = _Where(source, f"#{n + 1}")
    if not isinstance(doc, dict):
        raise w.error("rule", "each [[rule]] must be a table")
    if "id" in doc:
        w = _Where(source, _text(w, "id", doc["id"]))
    for key in doc:
        if key not in RULE_KEYS:
            raise w.error(key, f"unknown key (a rule has {', '.join(RULE_KEYS)})")
    for key in ("id", "feeder", "metric", "op", "args"):
        if key not in doc:
            raise w.error(key, "missing")
    metric = doc["metric"]
    if metric not in METRICS:
        raise w.error("metric", f"{metric!r} is not one of {', '.join(METRICS)}")
    above = _number(w, "above", doc["above"]) if "above" in doc else None
    below = _number(w, "below", doc["below"]) if "below" in doc else None
    if (above is None) == (below is None):
        raise w.error("above", "a rule needs exactly one threshold: above = X or below = X")
    op = doc["op"]
    if op not in OPS:
        raise w.error("op", f"{op!r} is not one of {', '.join(OPS)}")
    devs = doc.get("devs", [])
    if not isinstance(devs, list):
        raise w.error("devs", f"must be a list of meter ids, not {devs!r}")
    why = doc.get("why", "")
    if not isinstance(why, str):
        raise w.error("why", f"must be a string, not {why!r}")
    return Rule(id=_text(w, "id", doc["id"]), feeder=_text(w, "feeder", doc["feeder"]),
                fog=_id8(w, "fog", doc["fog"]) if "fog" in doc else None, metric=metric,
                above=above, below=below,
                for_intervals=_int(w, "for_intervals", doc.get("for_intervals", 1), 1),
                op=op, args=_args(w, op, doc["args"]),
                devs=tuple(_id8(w, "devs", d) for d in devs),
                valid_s=_int(w, "valid_s", doc.get("valid_s", DEFAULT_VALID_S), 1), why=why)


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """The rule set in `text` (TOML); raises RulesError naming source, rule id and key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{source}: not TOML: {e}") from None
    w = _Where(source)
    for key in doc:
        if key not in TOP_KEYS:
            raise w.error(key, f"unknown key (a rule file has {', '.join(TOP_KEYS)})")
    for key in ("name", "version"):
        if key not in doc:
            raise w.error(key, "missing")
    name, version = _text(w, "name", doc["name"]), _int(w, "version", doc["version"], 1)
    items = doc.get("rule", [])
    if not isinstance(items, list) or not items:
        raise w.error("rule", "a rule file needs at least one [[rule]] table")
    rules = tuple(_rule(source, i, r) for i, r in enumerate(items))
    seen: set[str] = set()
    for r in rules:
        if r.id in seen:
            raise _Where(source, r.id).error("id", "used by two rules")
        seen.add(r.id)
    return RuleSet(name, version, C.rules_digest(text), text, rules)


def load_rules(path: Path) -> RuleSet:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(f"{path}: cannot read: {e}") from None
    return parse_rules(text, str(path))


# --- metrics of one aggregate (type 11 fields) --------------------------------------------------
def metric(name: str, f: P.Fields) -> float | None:
    """`name` of one interval's aggregate; None where it is undefined (docs/PROTOCOL.md section 19)."""
    dur = f[3]
    if name == "import_kw":
        return float(f[4] * 3.6 / dur)  # Wh * 3600 / dur / 1000
    if name == "export_kw":
        return float(f[5] * 3.6 / dur)
    if name == "net_kw":
        return float((f[4] - f[5]) * 3.6 / dur)
    if name == "loss_pct":
        if 10 not in f:
            return None
        head = f[4] - f[5] + f[10]  # the head meter's net import
        return 100.0 * f[10] / head if head > 0 else None
    if name == "coverage_pct":
        return 100.0 * f[7] / f[6] if f[6] > 0 else None
    if name == "v_min_v":
        return f[11] / 10.0 if 11 in f else None
    if name == "v_max_v":
        return f[12] / 10.0 if 12 in f else None
    raise RulesError(f"unknown metric {name!r}")


def newest_revisions(aggregates: Iterable[P.Fields]) -> list[P.Fields]:
    """One aggregate per interval, the highest rev (the later one on a tie), by ivl."""
    best: dict[int, P.Fields] = {}
    for f in aggregates:
        have = best.get(f[2])
        if have is None or f[16] >= have[16]:
            best[f[2]] = f
    return [best[ivl] for ivl in sorted(best)]


# --- suggestions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Suggestion:
    """An instruction a rule proposes for one fog's feeder, from the intervals `ivls`."""

    id: str
    fog: bytes
    feeder: str
    rule: str
    rules_name: str
    rules_digest: bytes
    metric: str
    ivls: tuple[int, ...]
    values: tuple[float, ...]
    op: str
    args: dict[int, Any]
    devs: tuple[bytes, ...]
    valid_s: int
    why: str
    created: int

    def instruction_body(self, now: int) -> dict[int, Any]:
        """The instruction to sign when it is approved at `now` (valid from then)."""
        return C.instruction_body(self.fog, self.op, self.args, now + self.valid_s, self.devs,
                                  self.why, self.rules_digest)


def suggestion_id(rules_digest: bytes, rule: str, fog: bytes, feeder: str, ivl: int) -> str:
    """SHA-256 over the CBOR array [rules digest, rule id, fog, feeder, last ivl], hex."""
    return hashlib.sha256(encode([rules_digest, rule, fog, feeder, ivl])).hexdigest()


def _run(rule: Rule, series: Sequence[P.Fields]) -> list[P.Fields] | None:
    """The last for_intervals intervals if they are consecutive and each holds, else None."""
    n = rule.for_intervals
    if len(series) < n:
        return None
    run = list(series[-n:])
    for before, f in itertools.pairwise(run):
        if f[2] - f[3] != before[2]:  # a gap: an interval was not anchored
            return None
    return run if all(rule.holds(metric(rule.metric, f)) for f in run) else None


def suggest(rules: Sequence[RuleSet],
            aggregates: Mapping[tuple[bytes, str], Sequence[P.Fields]],
            now: int) -> list[Suggestion]:
    """What `rules` propose now, given each (fog, feeder)'s anchored aggregates (type-11
    fields, in chain order). A rule fires for a feeder when the feeder's newest
    for_intervals intervals (newest revision of each) are consecutive and all meet its
    condition; so it is evaluated at the newest interval only, and a run that ended does not
    fire afterwards. Sorted by rule set, rule, fog, feeder."""
    out: list[Suggestion] = []
    series = {k: newest_revisions(v) for k, v in aggregates.items()}
    for rs in rules:
        for rule in rs.rules:
            for (fog, feeder) in sorted(series):
                if rule.feeder not in (ANY, feeder) or rule.fog not in (None, fog):
                    continue
                run = _run(rule, series[(fog, feeder)])
                if run is None:
                    continue
                values = tuple(metric(rule.metric, f) or 0.0 for f in run)
                ivls = tuple(f[2] for f in run)
                why = rule.why or f"{rs.name} v{rs.version} rule {rule.id}: {feeder} " \
                                  f"{rule.condition()}"
                out.append(Suggestion(
                    suggestion_id(rs.digest, rule.id, fog, feeder, ivls[-1]), fog, feeder,
                    rule.id, rs.name, rs.digest, rule.metric, ivls, values, rule.op,
                    dict(rule.args), rule.devs, rule.valid_s, why, now))
    return out
