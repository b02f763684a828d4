"""Rule sets: a dispatcher's TOML file of "when a feeder does X for N intervals, propose Y",
and `suggest`, the pure function that applies rule sets to anchored aggregates
(docs/PROTOCOL.md section 19 has the grammar and the semantics).

The chain registers a rule set's text as it is (a `rules` transaction); its id is the
SHA-256 of that text. The grammar is `aggregator.chain.rulesets` (re-exported here), one
for the chain and its applications: the chain refuses a text that does not validate
(`rules_invalid`), the CLI and the API parse before they sign, and the evaluator skips (logs
and counts) a registered text it cannot parse, which only a chain from before that rule
can hold.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.chain.rulesets import (
    ANY,
    DEFAULT_VALID_S,
    METRICS,
    OPS,
    RANGES,
    RULE_KEYS,
    TOP_KEYS,
    Rule,
    RulesError,
    RuleSet,
    parse_rules,
)
from meterledger import wire as P
from meterledger.wire import chain as C
from meterledger.wire.cbor import encode

__all__ = ["ANY", "DEFAULT_VALID_S", "METRICS", "OPS", "RANGES", "RULE_KEYS", "TOP_KEYS",
           "Rule", "RuleSet", "RulesError", "Suggestion", "load_rules", "metric",
           "newest_revisions", "parse_rules", "suggest", "suggestion_id"]


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
