"""Validation, estimation and editing (VEE) of meter readings on the fog node (issue 6).

Pure logic: no I/O and no clock reads; the caller passes the readings (type-1 payload dicts,
SPEC section 4), the meter's recent history and the fog's time. docs/VEE.md documents every
rule with its threshold, the estimation method and its rounding, and the type-10 format.

- validate(reading, previous, history_wh, rating, config) -> [Finding]: one named rule per
  check (RULES, RULE_DOCS). A finding of severity "error" means the interval's measured
  energy is not usable and the interval is to be estimated (needs_estimate()).
- estimate_gap(before, after, ends, profile) -> [EstimatedInterval]: the exact register
  difference between two readings split over the intervals between them, import and export
  separately, summing exactly to the difference (largest-remainder rounding).
- estimate_payload / unknown_gap_payload / supersession_payload: the type-10 payloads the fog
  signs (schema and rules in meterledger.wire); audit_trail() checks a log's type-10 entries
  against the readings they name.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from itertools import pairwise
from typing import TypeVar

from meterledger import errors
from meterledger import wire as P

__all__ = [
    "DEFAULT_CONFIG", "DEFAULT_RATING", "KIND_ESTIMATE", "KIND_SUPERSEDE", "MAX_ESTIMATE_INTERVALS",
    "METHOD_LINEAR", "METHOD_NONE", "METHOD_PROFILE", "RULES", "RULE_DOCS", "RULE_DUR_CHANGED",
    "RULE_ENERGY_WITHIN_RATING", "RULE_EXPORT_UNEXPECTED", "RULE_FLAG_CLOCK_UNSYNCED",
    "RULE_FLAG_POWER_FAIL", "RULE_FLAG_SOURCE_ERROR", "RULE_FLAG_TAMPER",
    "RULE_IMPORT_EXPORT_BOTH", "RULE_ON_GRID", "RULE_REGISTER_MONOTONIC", "RULE_REGISTER_RESET",
    "RULE_SPIKE", "RULE_TIME_ORDER", "EstimatedInterval", "Finding", "MeterRating",
    "RegisterResetInGap", "Severity", "VeeConfig", "audit_trail", "chunked", "estimate_gap",
    "estimate_intervals", "estimate_payload", "gap_ends", "interval_energy", "needs_estimate",
    "reset_in_gap", "split_exact", "supersession_payload", "unknown_gap_payload", "validate",
]

Fields = P.Fields
_T = TypeVar("_T")


# --- ratings, thresholds, findings -----------------------------------------------------------
@dataclass(frozen=True)
class MeterRating:
    """What the meter's connection allows. Default: a household meter, 60 A at 230 V on one
    phase, allowed to export (rooftop PV is common; the simulator's homes export)."""

    rated_current_a: float = 60.0
    nominal_voltage_v: float = 230.0
    phases: int = 1
    export_allowed: bool = True

    def __post_init__(self) -> None:
        if not (self.rated_current_a > 0 and self.nominal_voltage_v > 0):
            raise ValueError("rated current and nominal voltage must be > 0")
        if self.phases not in (1, 2, 3):
            raise ValueError("phases must be 1, 2 or 3")

    @property
    def max_power_w(self) -> float:
        """phases x nominal voltage x rated current (13,800 W for the default)."""
        return self.phases * self.nominal_voltage_v * self.rated_current_a


@dataclass(frozen=True)
class VeeConfig:
    """Thresholds of the validation rules (docs/VEE.md section 1)."""

    # energy_within_rating: interval energy <= max_power_w * margin/100 * elapsed / 3600 Wh;
    # 110 % is the +10 % supply-voltage tolerance of EN 50160 on top of the nominal voltage
    rating_margin_pct: int = 110
    # on_grid: a CLOCK_UNSYNCED reading may be this far from its interval grid (seconds)
    grid_tolerance_s: int = 30
    # spike: interval import energy > max(spike_factor x median, spike_peak_factor x max of
    # the meter's last spike_history interval energies, spike_floor_w as average power),
    # normalised to one interval of the reading's dur; judged only once spike_min_history
    # values exist (a day: load shapes repeat daily, and a PV home imports nothing by day)
    spike_factor: float = 10.0
    spike_peak_factor: float = 2.0
    spike_history: int = 672  # a week of 15-minute intervals
    spike_min_history: int = 96  # a day of 15-minute intervals
    spike_floor_w: int = 2000

    def __post_init__(self) -> None:
        if self.rating_margin_pct < 100:
            raise ValueError("rating_margin_pct must be >= 100")
        if self.grid_tolerance_s < 0:
            raise ValueError("grid_tolerance_s must be >= 0")
        for k in (self.spike_factor, self.spike_peak_factor):
            if not (math.isfinite(k) and k >= 1):
                raise ValueError("spike factors must be finite numbers >= 1")
        if not 1 <= self.spike_min_history <= self.spike_history:
            raise ValueError("need 1 <= spike_min_history <= spike_history")
        if self.spike_floor_w < 0:
            raise ValueError("spike_floor_w must be >= 0")


DEFAULT_RATING = MeterRating()
DEFAULT_CONFIG = VeeConfig()


class Severity(StrEnum):
    INFO = "info"  # a condition worth recording; the measured energy stands
    WARNING = "warning"  # suspicious; the measured energy stands, the finding is for review
    ERROR = "error"  # the interval's measured energy is not usable: estimate it


@dataclass(frozen=True)
class Finding:
    rule: str
    detail: str
    severity: Severity


# the rules, in the order validate() reports them
RULE_FLAG_POWER_FAIL = "flag_power_fail"
RULE_FLAG_TAMPER = "flag_tamper"
RULE_FLAG_SOURCE_ERROR = "flag_source_error"
RULE_FLAG_CLOCK_UNSYNCED = "flag_clock_unsynced"
RULE_REGISTER_RESET = "register_reset"
RULE_ON_GRID = "on_grid"
RULE_DUR_CHANGED = "dur_changed"
RULE_TIME_ORDER = "time_order"
RULE_REGISTER_MONOTONIC = "register_monotonic"
RULE_ENERGY_WITHIN_RATING = "energy_within_rating"
RULE_IMPORT_EXPORT_BOTH = "import_export_both"
RULE_EXPORT_UNEXPECTED = "export_unexpected"
RULE_SPIKE = "spike"

RULE_DOCS: dict[str, str] = {
    RULE_FLAG_POWER_FAIL: "warning: the meter set POWER_FAIL (supply lost during the interval; "
                          "a pulse source may have lost the pulses since its last close)",
    RULE_FLAG_TAMPER: "error: the meter set TAMPER; its registers are not trusted",
    RULE_FLAG_SOURCE_ERROR: "error: the meter set SOURCE_ERROR; the registers are the last good "
                            "values, so the interval's energy shows up later",
    RULE_FLAG_CLOCK_UNSYNCED: "warning: the meter set CLOCK_UNSYNCED; t is the meter's own clock",
    RULE_REGISTER_RESET: "error: the meter set REGISTER_RESET; the register difference to the "
                         "previous reading is meaningless",
    RULE_ON_GRID: "error if t % dur != 0 without CLOCK_UNSYNCED; warning if a CLOCK_UNSYNCED "
                  "t is more than grid_tolerance_s (30 s) from the nearest multiple of dur",
    RULE_DUR_CHANGED: "info: dur differs from the previous reading's dur",
    RULE_TIME_ORDER: "error: t is not after the previous reading's t",
    RULE_REGISTER_MONOTONIC: "error: import or export register below the previous reading's "
                             "without REGISTER_RESET",
    RULE_ENERGY_WITHIN_RATING: "error: import or export energy since the previous reading > "
                               "phases x V x I x rating_margin_pct (110 %) x elapsed, elapsed = "
                               "t - previous t (so SKIPPED intervals are covered)",
    RULE_IMPORT_EXPORT_BOTH: "import and export both rose: error if imp + exp exceeds the "
                             "energy_within_rating bound (a single flow direction at a time "
                             "shares the rating), warning if the meter may not export",
    RULE_EXPORT_UNEXPECTED: "warning: export rose on a meter whose rating has "
                            "export_allowed = False",
    RULE_SPIKE: "warning: interval import > max(spike_factor (10) x median, spike_peak_factor "
                "(2) x max of the last spike_history (672) interval energies, the energy of "
                "spike_floor_w (2000 W) over dur), per interval of dur; silent with fewer than "
                "spike_min_history (96) values",
}
RULES: tuple[str, ...] = tuple(RULE_DOCS)


def needs_estimate(findings: Iterable[Finding]) -> bool:
    """True if any finding is an error: the interval's measured energy is not usable."""
    return any(f.severity is Severity.ERROR for f in findings)


def interval_energy(previous: Fields, reading: Fields) -> tuple[int, int] | None:
    """(import Wh, export Wh) between two readings of one meter, or None when the register
    difference means nothing (REGISTER_RESET on the later reading, or a register went back)."""
    if reading[7] & P.REGISTER_RESET:
        return None
    d_imp, d_exp = reading[5] - previous[5], reading[6] - previous[6]
    if d_imp < 0 or d_exp < 0:
        return None
    return d_imp, d_exp


def _check_pair(before: Fields, after: Fields) -> None:
    if before.get(0) != P.READING or after.get(0) != P.READING:
        raise ValueError("both readings must be type-1 payloads")
    if before[1] != after[1]:
        raise ValueError("the readings are of different meters")
    if after[2] <= before[2]:
        raise ValueError("the later reading must have the greater seq")


# long: the VEE rules of docs/VEE.md in their documented order, one block each
def validate(reading: Fields, previous: Fields | None, history_wh: Sequence[int] = (),
             rating: MeterRating = DEFAULT_RATING,
             config: VeeConfig = DEFAULT_CONFIG) -> list[Finding]:
    """Every rule of RULES on one reading, in that order.

    previous: the meter's latest reading before this one that the fog holds (normally seq - 1;
    any earlier one works, the energy rules use the time between them), or None for the
    first. history_wh: the meter's recent interval import energies in Wh, oldest first, each
    for one interval of this reading's dur (the spike rule's baseline). Raises ValueError
    when previous is not an earlier reading of the same meter."""
    if reading.get(0) != P.READING:
        raise ValueError("not a type-1 reading payload")
    out: list[Finding] = []

    def add(rule: str, severity: Severity, detail: str) -> None:
        out.append(Finding(rule, detail, severity))

    t, dur, imp, exp, flags = reading[3], reading[4], reading[5], reading[6], reading[7]
    if flags & P.POWER_FAIL:
        add(RULE_FLAG_POWER_FAIL, Severity.WARNING, "POWER_FAIL: supply lost in the interval")
    if flags & P.TAMPER:
        add(RULE_FLAG_TAMPER, Severity.ERROR, "TAMPER: the meter reports tampering")
    if flags & P.SOURCE_ERROR:
        add(RULE_FLAG_SOURCE_ERROR, Severity.ERROR,
            "SOURCE_ERROR: meter unreadable at t, registers are the last good values")
    unsynced = bool(flags & P.CLOCK_UNSYNCED)
    if unsynced:
        add(RULE_FLAG_CLOCK_UNSYNCED, Severity.WARNING, "CLOCK_UNSYNCED: t is the meter's clock")
    if flags & P.REGISTER_RESET:
        add(RULE_REGISTER_RESET, Severity.ERROR,
            "REGISTER_RESET: the register difference to the previous reading is unknown")
    off = t % dur if dur > 0 else 0
    off = min(off, dur - off)
    if off and not unsynced:
        add(RULE_ON_GRID, Severity.ERROR, f"t={t} is {off} s off the {dur} s grid")
    elif off > config.grid_tolerance_s:
        add(RULE_ON_GRID, Severity.WARNING, f"unsynced t={t} is {off} s off the {dur} s grid "
                                            f"(tolerance {config.grid_tolerance_s} s)")
    if previous is None:
        return out
    _check_pair(previous, reading)

    if previous[4] != dur:
        add(RULE_DUR_CHANGED, Severity.INFO, f"dur {previous[4]} s -> {dur} s")
    elapsed = t - previous[3]
    if elapsed <= 0:
        add(RULE_TIME_ORDER, Severity.ERROR, f"t={t} is not after the previous t={previous[3]}")
    if flags & P.REGISTER_RESET:
        return out
    d_imp, d_exp = imp - previous[5], exp - previous[6]
    if d_imp < 0 or d_exp < 0:
        add(RULE_REGISTER_MONOTONIC, Severity.ERROR,
            f"registers went back without REGISTER_RESET: import {d_imp:+d} Wh, "
            f"export {d_exp:+d} Wh")
        return out
    if elapsed <= 0:
        return out

    # rated energy over elapsed, scaled by 3600 * 100 to stay in exact arithmetic where the
    # rating is integral: e Wh > P W * pct/100 * elapsed s / 3600
    cap = rating.max_power_w * config.rating_margin_pct * elapsed
    limit_wh = cap / 360_000
    for name, d in (("import", d_imp), ("export", d_exp)):
        if d * 360_000 > cap:
            add(RULE_ENERGY_WITHIN_RATING, Severity.ERROR,
                f"{name} {d} Wh in {elapsed} s exceeds the rated {limit_wh:.0f} Wh")
    if d_imp > 0 and d_exp > 0:
        if (d_imp + d_exp) * 360_000 > cap:
            add(RULE_IMPORT_EXPORT_BOTH, Severity.ERROR,
                f"import {d_imp} Wh + export {d_exp} Wh in {elapsed} s exceed the rated "
                f"{limit_wh:.0f} Wh")
        elif not rating.export_allowed:
            add(RULE_IMPORT_EXPORT_BOTH, Severity.WARNING,
                f"import {d_imp} Wh and export {d_exp} Wh on a meter that may not export")
    if d_exp > 0 and not rating.export_allowed:
        add(RULE_EXPORT_UNEXPECTED, Severity.WARNING,
            f"export rose {d_exp} Wh on a meter that may not export")

    hist = list(history_wh)[-config.spike_history:]
    if len(hist) >= config.spike_min_history:
        median, peak = statistics.median(hist), max(hist)
        per_interval = max(config.spike_factor * median, config.spike_peak_factor * peak,
                           config.spike_floor_w * dur / 3600)
        if d_imp * dur > per_interval * elapsed:
            add(RULE_SPIKE, Severity.WARNING,
                f"import {d_imp} Wh in {elapsed} s is more than {per_interval:.0f} Wh per "
                f"{dur} s (last {len(hist)} intervals: median {median:g} Wh, max {peak} Wh)")
    return out


# --- estimation --------------------------------------------------------------------------------
METHOD_LINEAR, METHOD_PROFILE, METHOD_NONE = P.ESTIMATE_METHODS
KIND_ESTIMATE, KIND_SUPERSEDE = P.ESTIMATE_KINDS
# most intervals in one type-10 estimate (longer gaps are chunked): the signed message stays
# within MAX_MESSAGE whatever the values; with every uint at its widest (9 bytes) it is
# 241 bytes plus 28 per [end, imp, exp]: 241 + 128 x 28 = 3825 <= 4096 (32 hours of 15 min)
MAX_ESTIMATE_INTERVALS = P.MAX_ESTIMATE_IVLS
# the longest gap the fog estimates: a meter's spool holds 32 days of 15-minute readings, so
# a longer silence is beyond store and forward (a meter replaced, a clock far off); its
# energy stays in the register difference, unestimated
MAX_GAP_S = 35 * 86_400


class RegisterResetInGap(errors.MeterLedgerError, ValueError):
    """The register difference across the gap is meaningless: no energy can be estimated."""


@dataclass(frozen=True)
class EstimatedInterval:
    """The estimated energy of the interval (start, end] (Unix s), in Wh."""

    start: int
    end: int
    imp_wh: int
    exp_wh: int


def gap_ends(before: Fields, after: Fields) -> list[int]:
    """The ends of the intervals in (before.t, after.t]: the multiples of after's dur, and
    after.t itself when it is off that grid (CLOCK_UNSYNCED, or a dur change)."""
    t0, t1, dur = before[3], after[3], after[4]
    if t1 <= t0:
        raise ValueError("after.t must be later than before.t")
    ends = list(range((t0 // dur + 1) * dur, t1 + 1, dur))
    if not ends or ends[-1] != t1:
        ends.append(t1)
    return ends


def reset_in_gap(before: Fields, after: Fields) -> bool:
    """True if a register reset lies between the readings: the later one carries
    REGISTER_RESET (set on the first reading after a reset, which covers the gap when the
    readings in between are missing or were SKIPPED) or a register is lower than before."""
    return interval_energy(before, after) is None


def split_exact(total: int, weights: Sequence[Fraction | float]) -> list[int]:
    """total split in proportion to weights, in whole units summing exactly to total:
    every part gets the floor of its quota, then the remaining units go one each to the
    largest fractional remainders, ties to the earliest. A zero weight gets zero. Floats
    are taken at their exact binary value, so the result does not depend on float rounding."""
    if total < 0:
        raise ValueError("total must be >= 0")
    if not all(isinstance(x, Fraction) or math.isfinite(x) for x in weights):
        raise ValueError("weights must be finite")
    w = [Fraction(x) for x in weights]
    if not w or any(x < 0 for x in w) or sum(w) == 0:
        raise ValueError("weights must be non-negative with a positive sum")
    whole = sum(w)
    quotas = [total * x / whole for x in w]
    parts = [math.floor(q) for q in quotas]
    rest = total - sum(parts)
    order = sorted(range(len(w)), key=lambda i: (parts[i] - quotas[i], i))
    for i in order[:rest]:
        parts[i] += 1
    return parts


def _weights(profile: Sequence[float] | None, lengths: list[int]) -> list[Fraction]:
    if profile is None:
        return [Fraction(n) for n in lengths]
    if len(profile) != len(lengths):
        raise ValueError(f"profile has {len(profile)} weights for {len(lengths)} intervals")
    if not all(math.isfinite(x) and x >= 0 for x in profile):
        raise ValueError("profile weights must be finite and >= 0")
    w = [Fraction(x) for x in profile]
    return w if sum(w) else [Fraction(n) for n in lengths]  # all zero: time-proportional


def estimate_gap(before: Fields, after: Fields, missing_ts: Sequence[int],
                 profile: Sequence[float] | None = None,
                 export_profile: Sequence[float] | None = None) -> list[EstimatedInterval]:
    """Split the exact register difference after - before over the intervals between them.

    missing_ts: the ends of the intervals the difference covers, ascending, the last one
    after.t (the later reading's own interval is part of the gap: its start is missing);
    gap_ends(before, after) gives them on the grid. Import is split by profile, export by
    export_profile (weights, one per interval); a register without one is split linearly,
    in proportion to interval length (equal parts on a regular grid). Rounding: split_exact.
    An all-zero profile falls back to linear. Raises RegisterResetInGap when a reset lies in
    the gap (no estimate: see unknown_gap_payload) and ValueError on inconsistent input."""
    _check_pair(before, after)
    ends = list(missing_ts)
    if not ends:
        raise ValueError("no intervals to estimate")
    if ends[-1] != after[3]:
        raise ValueError("the last interval must end at the later reading's t")
    starts = [before[3], *ends[:-1]]
    lengths = [e - s for s, e in zip(starts, ends, strict=True)]
    if min(lengths) <= 0:
        raise ValueError("interval ends must increase, starting after the earlier reading's t")
    energy = interval_energy(before, after)
    if energy is None:
        raise RegisterResetInGap("a register reset lies in the gap; its energy is unknown")
    imp = split_exact(energy[0], _weights(profile, lengths))
    exp = split_exact(energy[1], _weights(export_profile, lengths))
    return [EstimatedInterval(s, e, i, x)
            for s, e, i, x in zip(starts, ends, imp, exp, strict=True)]


def chunked(items: Sequence[_T], size: int = MAX_ESTIMATE_INTERVALS) -> list[list[_T]]:
    """items in consecutive runs of at most size (one type-10 entry each)."""
    if size < 1:
        raise ValueError("size must be >= 1")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


# --- type 10 payloads --------------------------------------------------------------------------
def _bounds(before: Fields, before_digest: bytes, after: Fields, after_digest: bytes,
            method: str, start: int, ivls: list[list[int]], t: int, fog: bytes) -> Fields:
    _check_pair(before, after)
    if not ivls or len(ivls) > MAX_ESTIMATE_INTERVALS:
        raise ValueError(f"an estimate covers 1 to {MAX_ESTIMATE_INTERVALS} intervals")
    if not before[3] <= start < ivls[0][0] or ivls[-1][0] > after[3]:
        raise ValueError("the intervals must lie between the two readings' t")
    return {0: P.ESTIMATE, 1: before[1], 2: KIND_ESTIMATE, 3: t, 4: method, 5: before_digest,
            6: before[2], 7: after_digest, 8: after[2], 9: start, 10: ivls, 17: fog}


def estimate_payload(before: Fields, before_digest: bytes, after: Fields, after_digest: bytes,
                     intervals: Sequence[EstimatedInterval], method: str, t: int,
                     fog: bytes) -> Fields:
    """The type-10 estimate of consecutive intervals of one gap (all of it, or one chunk),
    naming both bounding readings by digest and seq; t is the fog's time."""
    if method not in (METHOD_LINEAR, METHOD_PROFILE):
        raise ValueError("method must be 'linear' or 'profile'")
    if not intervals:
        raise ValueError("no intervals")
    for a, b in pairwise(intervals):
        if b.start != a.end:
            raise ValueError("the intervals must be consecutive")
    return _bounds(before, before_digest, after, after_digest, method, intervals[0].start,
                   [[iv.end, iv.imp_wh, iv.exp_wh] for iv in intervals], t, fog)


def unknown_gap_payload(before: Fields, before_digest: bytes, after: Fields,
                        after_digest: bytes, ends: Sequence[int], t: int, fog: bytes,
                        start: int | None = None) -> Fields:
    """The type-10 record (method "none") of intervals whose energy is unknown because a
    register reset lies in the gap; start defaults to before.t (later chunks: the previous
    chunk's last end)."""
    if not reset_in_gap(before, after):
        raise ValueError("no register reset in the gap: estimate it instead")
    return _bounds(before, before_digest, after, after_digest, METHOD_NONE,
                   before[3] if start is None else start, [[e] for e in ends], t, fog)


def supersession_payload(estimate: Fields, estimate_digest: bytes, reading: Fields,
                         reading_digest: bytes, t: int, fog: bytes) -> Fields:
    """The type-10 record that a true reading, logged after the estimate, makes the estimate
    obsolete: it names the estimate's digest and the reading's digest (and seq). The reading
    must be of the same meter and strictly inside the estimate's bounds."""
    if estimate.get(0) != P.ESTIMATE or estimate.get(2) != KIND_ESTIMATE:
        raise ValueError("not a type-10 estimate")
    if reading.get(0) != P.READING or reading[1] != estimate[1]:
        raise ValueError("not a reading of the estimate's meter")
    if not estimate[6] < reading[2] < estimate[8]:
        raise ValueError("the reading's seq is not inside the estimate's bounds")
    return {0: P.ESTIMATE, 1: estimate[1], 2: KIND_SUPERSEDE, 3: t, 11: estimate_digest,
            12: reading_digest, 13: reading[2], 17: fog}


def estimate_intervals(estimate: Fields) -> list[EstimatedInterval]:
    """The intervals of a type-10 estimate (energies 0 for method "none": see its method)."""
    out: list[EstimatedInterval] = []
    start = estimate[9]
    for item in estimate[10]:
        imp, exp = (item[1], item[2]) if len(item) == 3 else (0, 0)
        out.append(EstimatedInterval(start, item[0], imp, exp))
        start = item[0]
    return out


# --- audit -------------------------------------------------------------------------------------
# long: one pass over a log's type-10 entries with the checks of docs/VEE.md section 5
def audit_trail(entries: Iterable[tuple[bytes, Fields]]) -> list[str]:
    """What is wrong with a log's type-10 entries, [] if nothing. entries: (digest, payload)
    of each log entry in log order (other types are skipped). Checks: an estimate names two
    readings logged before it, with its dev and seqs; the estimates naming one pair of
    readings tile (before.t, after.t] exactly and, unless method "none", sum exactly to the
    register differences (method "none" only where a reset lies in the gap); a supersession
    names an estimate and a reading logged before it, the reading inside the estimate's
    bounds, and each estimate is superseded at most once and with all of its chunks; the
    live (not superseded) estimates of a meter do not overlap in time."""
    problems: list[str] = []
    readings: dict[bytes, Fields] = {}
    estimates: dict[bytes, Fields] = {}
    superseded: dict[bytes, bytes] = {}
    groups: dict[tuple[bytes, bytes], list[bytes]] = {}
    for n, (dig, f) in enumerate(entries):
        if f.get(0) == P.READING:
            readings[dig] = f
            continue
        if f.get(0) != P.ESTIMATE:
            continue
        where = f"entry {n}"
        if f[2] == KIND_ESTIMATE:
            before, after = readings.get(f[5]), readings.get(f[7])
            if before is None or after is None:
                problems.append(f"{where}: estimate names a reading not logged before it")
                continue
            if (before[1], before[2], after[1], after[2]) != (f[1], f[6], f[1], f[8]):
                problems.append(f"{where}: estimate's dev or seqs differ from its readings")
                continue
            estimates[dig] = f
            groups.setdefault((f[5], f[7]), []).append(dig)
        else:
            est, reading = estimates.get(f[11]), readings.get(f[12])
            if est is None or reading is None:
                problems.append(f"{where}: supersession names an entry not logged before it")
            elif not (reading[1] == est[1] == f[1] and est[6] < reading[2] < est[8]
                      and reading[2] == f[13]):
                problems.append(f"{where}: the reading does not match or is not inside the "
                                "estimate's bounds")
            elif f[11] in superseded:
                problems.append(f"{where}: the estimate was superseded already")
            else:
                superseded[f[11]] = dig
    live: dict[bytes, list[tuple[int, int]]] = {}
    for (b_dig, a_dig), digs in groups.items():
        before, after = readings[b_dig], readings[a_dig]
        name = f"estimate of {before[1].hex()} seq {before[2]}..{after[2]}"
        methods = {estimates[d][4] for d in digs}
        ivls = sorted((iv for d in digs for iv in estimate_intervals(estimates[d])),
                      key=lambda iv: iv.start)
        bounds = [before[3]] + [x for iv in ivls for x in (iv.start, iv.end)] + [after[3]]
        if any(bounds[i] != bounds[i + 1] for i in range(0, len(bounds), 2)):
            problems.append(f"{name}: intervals do not tile ({before[3]}, {after[3]}]")
        if METHOD_NONE in methods:
            if len(methods) > 1 or not reset_in_gap(before, after):
                problems.append(f"{name}: method none without a register reset in the gap")
        elif (sum(iv.imp_wh for iv in ivls), sum(iv.exp_wh for iv in ivls)) != (
                after[5] - before[5], after[6] - before[6]):
            problems.append(f"{name}: does not sum to the register differences")
        gone = [d in superseded for d in digs]
        if any(gone) and not all(gone):
            problems.append(f"{name}: only some of its chunks were superseded")
        if not any(gone):
            live.setdefault(before[1], []).append((before[3], after[3]))
    for dev, spans in live.items():
        spans.sort()
        for (_, end), (start, _) in pairwise(spans):
            if start < end:
                problems.append(f"meter {dev.hex()}: live estimates overlap at {start}")
    return problems
