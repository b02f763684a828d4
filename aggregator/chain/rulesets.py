"""The rule file's grammar (docs/PROTOCOL.md section 19): a dispatcher's TOML file of "when a
feeder does X for N intervals, propose Y", parsed and validated strictly.

One grammar for everyone who reads a rule set: the chain's `rules` kind refuses a text that
does not validate (`rules_invalid`, aggregator.chain.app.kinds.rules), the CLI and the API
parse before they sign, and the evaluator (aggregator.dispatch) reads what the chain took.
So it lives beside the Ledger seam, importable by the state machine and the applications
alike, and it is deterministic: a function of the text alone (no clock, no locale, no
recursion limit: nesting is bounded before the TOML parser runs), every field checked for
its type and its range (RANGES), every failure a RulesError naming source, rule and key.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from aggregator.chain.ledger import AggregatorError
from meterledger import wire as P
from meterledger.wire import chain as C

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
INT64_MAX = 2**63 - 1
# inclusive ranges: integers by value, texts by UTF-8 bytes, lists by entries (args: the wire
# contract's command ranges, meterledger.wire.command_args_error)
RANGES: dict[str, tuple[int, int]] = {
    "name": (1, 128), "version": (1, INT64_MAX), "rule": (1, 64),
    "id": (1, 128), "feeder": (1, 128), "for_intervals": (1, 10_000),
    "devs": (0, 128), "valid_s": (1, 366 * 86_400),
    "why": (0, 1024),
}
MAX_NESTING = 8  # brackets and braces open at once; a rule file needs 3
_HEX16 = re.compile(r"[0-9a-fA-F]{16}")


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


class _Where:
    """Error messages that say where: file, then rule, then key."""

    def __init__(self, source: str, rule: str | None = None) -> None:
        self.source, self.rule = source, rule

    def error(self, key: str, what: str) -> RulesError:
        where = self.source + (f": rule {self.rule!r}" if self.rule is not None else "")
        return RulesError(f"{where}: {key}: {what}")


def _int(w: _Where, key: str, v: Any) -> int:
    lo, hi = RANGES[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise w.error(key, f"must be an integer, not {type(v).__name__} {_short(v)}")
    if v < lo:
        raise w.error(key, f"must be >= {lo}, not {v}")
    if v > hi:
        raise w.error(key, f"must be <= {hi}, not {v}")
    return v


def _text(w: _Where, key: str, v: Any) -> str:
    lo, hi = RANGES[key]
    if not isinstance(v, str) or (lo and not v):
        raise w.error(key, f"must be a{' non-empty' if lo else ''} string, not {_short(v)}")
    n = len(v.encode("utf-8", "surrogatepass"))
    if not lo <= n <= hi:
        raise w.error(key, f"must be {lo}..{hi} bytes of UTF-8, not {n}")
    return v


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _id8(w: _Where, key: str, v: Any) -> bytes:
    if isinstance(v, str) and _HEX16.fullmatch(v):
        return bytes.fromhex(v)
    raise w.error(key, f"must be an 8-byte id as 16 hex characters, not {_short(v)}")


def _number(w: _Where, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise w.error(key, f"must be a finite number, not {_short(v)}")
    try:
        x = float(v)
    except OverflowError:  # an integer beyond any float
        x = math.inf
    if not math.isfinite(x):
        raise w.error(key, f"must be a finite number, not {_short(v)}")
    return x


def _choice(w: _Where, key: str, v: Any, among: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in among:
        raise w.error(key, f"{_short(v)} is not one of {', '.join(among)}")
    return v


def _args(w: _Where, op: str, v: Any) -> dict[int, Any]:
    name, kind = OPS[op]
    shape = f"{{ {name} = {kind.__name__} }}"
    if not isinstance(v, dict) or list(v) != [name]:
        raise w.error("args", f"op {op!r} takes args {shape}, not {_short(v)}")
    value = v[name]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise w.error("args", f"{name} must be a {kind.__name__}, not {_short(value)}")
    err = P.command_args_error(op, {1: value})
    if err is None and isinstance(value, int) and value > INT64_MAX:  # the wire's, if it has none
        err = f"must be <= {INT64_MAX}"
    if err is not None:
        raise w.error("args", f"{name} = {_short(value)}: {err}")
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
    metric = _choice(w, "metric", doc["metric"], METRICS)
    above = _number(w, "above", doc["above"]) if "above" in doc else None
    below = _number(w, "below", doc["below"]) if "below" in doc else None
    if (above is None) == (below is None):
        raise w.error("above", "a rule needs exactly one threshold: above = X or below = X")
    op = _choice(w, "op", doc["op"], tuple(OPS))
    devs = doc.get("devs", [])
    if not isinstance(devs, list):
        raise w.error("devs", f"must be a list of meter ids, not {_short(devs)}")
    if len(devs) > RANGES["devs"][1]:
        raise w.error("devs", f"at most {RANGES['devs'][1]} meter ids, not {len(devs)}")
    return Rule(id=_text(w, "id", doc["id"]), feeder=_text(w, "feeder", doc["feeder"]),
                fog=_id8(w, "fog", doc["fog"]) if "fog" in doc else None, metric=metric,
                above=above, below=below,
                for_intervals=_int(w, "for_intervals", doc.get("for_intervals", 1)),
                op=op, args=_args(w, op, doc["args"]),
                devs=tuple(_id8(w, "devs", d) for d in devs),
                valid_s=_int(w, "valid_s", doc.get("valid_s", DEFAULT_VALID_S)),
                why=_text(w, "why", doc.get("why", "")))


def nesting(text: str) -> int:
    """The deepest nesting of arrays and inline tables (brackets and braces outside strings
    and comments): bounded before tomllib, whose recursion would otherwise decide."""
    depth = deepest = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in "\"'":
            i = _string_end(text, i, c)
            continue
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(depth - 1, 0)
        i += 1
    return deepest


def _string_end(text: str, i: int, q: str) -> int:
    """The index just past the TOML string that starts at text[i] with quote q (basic
    strings take backslash escapes, literal ones do not; an unclosed one ends the text, or
    its line when it is not multi-line)."""
    multi = text.startswith(q * 3, i)
    i += 3 if multi else 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and q == '"':
            i += 2
            continue
        if c == "\n" and not multi:
            return i
        if c == q and (not multi or text.startswith(q * 3, i)):
            if not multi:
                return i + 1
            i += 3
            while i < n and text[i] == q:  # up to two quotes may close the content
                i += 1
            return i
        i += 1
    return n


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """The rule set in `text` (TOML); raises RulesError naming source, rule id and key."""
    if not isinstance(text, str):
        raise RulesError(f"{source}: not a text but {type(text).__name__}")
    if nesting(text) > MAX_NESTING:
        raise RulesError(f"{source}: not a rule file: arrays or tables nested deeper than "
                         f"{MAX_NESTING}")
    try:
        doc = tomllib.loads(text)
    except ValueError as e:  # TOMLDecodeError, or an integer of too many digits
        raise RulesError(f"{source}: not TOML: {e}") from None
    w = _Where(source)
    for key in doc:
        if key not in TOP_KEYS:
            raise w.error(key, f"unknown key (a rule file has {', '.join(TOP_KEYS)})")
    for key in ("name", "version"):
        if key not in doc:
            raise w.error(key, "missing")
    name, version = _text(w, "name", doc["name"]), _int(w, "version", doc["version"])
    items = doc.get("rule", [])
    if not isinstance(items, list) or not items:
        raise w.error("rule", "a rule file needs at least one [[rule]] table")
    if len(items) > RANGES["rule"][1]:
        raise w.error("rule", f"at most {RANGES['rule'][1]} rules, not {len(items)}")
    rules = tuple(_rule(source, i, r) for i, r in enumerate(items))
    seen: set[str] = set()
    for r in rules:
        if r.id in seen:
            raise _Where(source, r.id).error("id", "used by two rules")
        seen.add(r.id)
    return RuleSet(name, version, C.rules_digest(text), text, rules)
