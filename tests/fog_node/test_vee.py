"""Validation, estimation and editing on the fog (fog_node.cooking.vee, docs/VEE.md): every rule fires
on a crafted reading and stays quiet on a simulated household's normal day; estimates split
the exact register difference (property), the documented cases give the documented values
and a complete audit trail; type-10 messages round-trip and malformed ones are rejected."""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.sources import Synthetic
from fog_node.cooking import vee as V
from meterledger import wire as P

T0 = 1_800_000_000  # a multiple of 900
METER = P.SigningKey.from_int(0x5EED5)
FOG = P.SigningKey.from_int(0xF06F06)
DEV, FID = METER.id, FOG.id
NO_EXPORT = V.MeterRating(export_allowed=False)
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rd(seq: int, t: int, imp: int, exp: int = 0, flags: int = 0, dur: int = 900,
       prev: bytes = P.ZERO32) -> dict[int, Any]:
    return P.reading(DEV, seq, t, dur, imp, exp, flags, prev if seq > 1 else P.ZERO32)


def rules(findings: list[V.Finding]) -> dict[str, V.Severity]:
    return {f.rule: f.severity for f in findings}


# --- validation: quiet on normal data ---------------------------------------------------------
def household_days(seed: int, rating: V.MeterRating) -> list[dict[int, Any]]:
    """Two days of 15-minute readings of the firmware's simulated household (load + PV),
    sampled every 10 s as the meter does."""
    src = Synthetic(seed=seed, imp_wh=12_345, exp_wh=0 if not rating.export_allowed else 678)
    if not rating.export_allowed:
        src.pv_wp = 0
    out: list[dict[int, Any]] = []
    for t in range(T0 - 86_400, T0 + 2 * 86_400 + 1, 10):
        s = src.read(t)
        if t % 900 == 0 and t >= T0:
            out.append(rd(len(out) + 1, t, s.imp, s.exp))
    return out


@pytest.mark.parametrize("rating", [V.DEFAULT_RATING, NO_EXPORT], ids=["pv", "no_export"])
@pytest.mark.parametrize("seed", [1, 2, 3, 7])
def test_rules_are_quiet_on_normal_days(seed: int, rating: V.MeterRating):
    day = household_days(seed, rating)
    assert len(day) == 193
    exported = both = 0
    history: list[int] = []
    assert V.validate(day[0], None, history, rating) == []
    for prev, cur in pairwise(day):
        assert V.validate(cur, prev, history, rating) == [], (cur, prev)
        d_imp, d_exp = cur[5] - prev[5], cur[6] - prev[6]
        exported += d_exp > 0
        both += d_imp > 0 and d_exp > 0
        history.append(d_imp)
    if rating.export_allowed and seed % 3:  # one simulated home in three has no PV
        assert exported > 10 and both > 0  # the PV day did exercise the export rules


def test_skipped_intervals_are_judged_over_the_whole_elapsed_time():
    prev = rd(5, T0, 1000)
    cur = rd(6, T0 + 2700, 1000 + 3 * 3000, flags=P.SKIPPED)  # 12 kW for 45 minutes
    assert V.validate(cur, prev, [100] * 20) == []
    assert rules(V.validate(rd(6, T0 + 900, 1000 + 9000), prev)) == {
        V.RULE_ENERGY_WITHIN_RATING: V.Severity.ERROR}


# --- validation: each rule fires on a crafted reading -----------------------------------------
PREV = rd(9, T0, 50_000, 700)
HIST = [100] * 96  # a day, Wh per 15 minutes
FIRES: list[tuple[str, dict[int, Any], dict[int, Any] | None, list[int], V.MeterRating,
                  dict[str, V.Severity]]] = [
    ("power_fail", rd(10, T0 + 900, 50_100, 700, P.POWER_FAIL), PREV, HIST, V.DEFAULT_RATING,
     {V.RULE_FLAG_POWER_FAIL: V.Severity.WARNING}),
    ("tamper", rd(10, T0 + 900, 50_100, 700, P.TAMPER), PREV, HIST, V.DEFAULT_RATING,
     {V.RULE_FLAG_TAMPER: V.Severity.ERROR}),
    ("source_error", rd(10, T0 + 900, 50_000, 700, P.SOURCE_ERROR), PREV, HIST,
     V.DEFAULT_RATING, {V.RULE_FLAG_SOURCE_ERROR: V.Severity.ERROR}),
    ("clock_unsynced", rd(10, T0 + 905, 50_100, 700, P.CLOCK_UNSYNCED), PREV, HIST,
     V.DEFAULT_RATING, {V.RULE_FLAG_CLOCK_UNSYNCED: V.Severity.WARNING}),
    ("register_reset", rd(10, T0 + 900, 40, 0, P.REGISTER_RESET), PREV, HIST, V.DEFAULT_RATING,
     {V.RULE_REGISTER_RESET: V.Severity.ERROR}),
    ("register_reset_first_reading", rd(1, T0, 0, 0, P.REGISTER_RESET), None, [],
     V.DEFAULT_RATING, {V.RULE_REGISTER_RESET: V.Severity.ERROR}),
    ("off_grid", rd(10, T0 + 907, 50_100, 700), PREV, HIST, V.DEFAULT_RATING,
     {V.RULE_ON_GRID: V.Severity.ERROR}),
    ("off_grid_unsynced", rd(10, T0 + 900 + 200, 50_100, 700, P.CLOCK_UNSYNCED), PREV, HIST,
     V.DEFAULT_RATING, {V.RULE_FLAG_CLOCK_UNSYNCED: V.Severity.WARNING,
                        V.RULE_ON_GRID: V.Severity.WARNING}),
    ("dur_changed", rd(10, T0 + 300, 50_030, 700, dur=300), PREV, [30] * 20, V.DEFAULT_RATING,
     {V.RULE_DUR_CHANGED: V.Severity.INFO}),
    ("time_order", rd(10, T0, 50_100, 700), PREV, HIST, V.DEFAULT_RATING,
     {V.RULE_TIME_ORDER: V.Severity.ERROR}),
    ("register_backwards", rd(10, T0 + 900, 49_999, 700), PREV, HIST, V.DEFAULT_RATING,
     {V.RULE_REGISTER_MONOTONIC: V.Severity.ERROR}),
    ("export_backwards", rd(10, T0 + 900, 50_100, 699), PREV, HIST, V.DEFAULT_RATING,
     {V.RULE_REGISTER_MONOTONIC: V.Severity.ERROR}),
    ("over_rating_import", rd(10, T0 + 900, 54_000, 700), PREV, [], V.DEFAULT_RATING,
     {V.RULE_ENERGY_WITHIN_RATING: V.Severity.ERROR}),
    ("over_rating_export", rd(10, T0 + 900, 50_000, 4_700), PREV, HIST, V.DEFAULT_RATING,
     {V.RULE_ENERGY_WITHIN_RATING: V.Severity.ERROR}),
    ("both_over_shared_rating", rd(10, T0 + 900, 52_000, 2_700), PREV, [2000] * 20,
     V.DEFAULT_RATING, {V.RULE_IMPORT_EXPORT_BOTH: V.Severity.ERROR}),
    ("both_without_export", rd(10, T0 + 900, 50_100, 750), PREV, HIST, NO_EXPORT,
     {V.RULE_IMPORT_EXPORT_BOTH: V.Severity.WARNING,
      V.RULE_EXPORT_UNEXPECTED: V.Severity.WARNING}),
    ("export_without_export", rd(10, T0 + 900, 50_000, 730), PREV, HIST, NO_EXPORT,
     {V.RULE_EXPORT_UNEXPECTED: V.Severity.WARNING}),
    ("spike", rd(10, T0 + 900, 51_200, 700), PREV, HIST, V.DEFAULT_RATING,
     {V.RULE_SPIKE: V.Severity.WARNING}),
    ("spike_over_the_floor", rd(10, T0 + 900, 50_600, 700), PREV, [0] * 96, V.DEFAULT_RATING,
     {V.RULE_SPIKE: V.Severity.WARNING}),
]


@pytest.mark.parametrize(("name", "cur", "prev", "hist", "rating", "expected"), FIRES,
                         ids=[c[0] for c in FIRES])
def test_each_rule_fires_on_a_crafted_reading(name: str, cur: dict[int, Any],
                                              prev: dict[int, Any] | None, hist: list[int],
                                              rating: V.MeterRating,
                                              expected: dict[str, V.Severity]):
    findings = V.validate(cur, prev, hist, rating)
    assert rules(findings) == expected
    assert all(f.detail for f in findings)
    assert [f.rule for f in findings] == [r for r in V.RULES if r in expected]  # RULES order
    assert V.needs_estimate(findings) == (V.Severity.ERROR in expected.values())


def test_every_rule_is_documented_and_crafted():
    assert set(V.RULES) == set(V.RULE_DOCS)
    assert all(V.RULE_DOCS.values())
    assert {r for *_, exp in FIRES for r in exp} == set(V.RULES)


def test_thresholds_at_their_edges():
    # energy_within_rating: 60 A x 230 V x 110 % = 15,180 W; 3,795 Wh in 900 s is the limit
    assert V.validate(rd(10, T0 + 900, 50_000 + 3795, 700), PREV) == []
    assert rules(V.validate(rd(10, T0 + 900, 50_000 + 3796, 700), PREV)) == {
        V.RULE_ENERGY_WITHIN_RATING: V.Severity.ERROR}
    three = V.MeterRating(rated_current_a=80, phases=3)  # 3 x 230 V x 80 A x 110 % = 60,720 W
    assert V.validate(rd(10, T0 + 900, 50_000 + 15_180, 700), PREV, [], three) == []
    # import_export_both: the shared bound is inclusive as well
    assert V.validate(rd(10, T0 + 900, 50_000 + 3000, 700 + 795), PREV) == []
    # spike: 10 x median 100 Wh = 1,000 Wh per 15 minutes is still fine
    assert V.validate(rd(10, T0 + 900, 51_000, 700), PREV, HIST) == []
    assert V.validate(rd(10, T0 + 900, 51_001, 700), PREV, HIST)[0].rule == V.RULE_SPIKE
    # ... and is judged per interval when the reading covers several (SKIPPED)
    assert V.validate(rd(10, T0 + 1800, 52_000, 700, P.SKIPPED), PREV, HIST) == []
    # the floor 2000 W x 15 min = 500 Wh, and too little history says nothing
    assert V.validate(rd(10, T0 + 900, 50_500, 700), PREV, [0] * 96) == []
    assert V.validate(rd(10, T0 + 900, 53_000, 700), PREV, HIST[:95]) == []
    # twice the meter's peak of the window is not a spike either
    assert V.validate(rd(10, T0 + 900, 51_200, 700), PREV, [*HIST[:-1], 900]) == []
    assert V.validate(rd(10, T0 + 900, 51_801, 700), PREV, [*HIST[:-1], 900]) != []
    # only the last spike_history (672) values count
    assert V.validate(rd(10, T0 + 900, 51_200, 700), PREV, [1000] * 96 + [100] * 672) != []
    assert V.validate(rd(10, T0 + 900, 51_200, 700), PREV, [100] * 672 + [1000] * 96) == []
    cfg = V.VeeConfig(spike_factor=20)
    assert V.validate(rd(10, T0 + 900, 51_200, 700), PREV, HIST, config=cfg) == []
    # on_grid: an unsynced t within 30 s of the grid is only the flag
    assert rules(V.validate(rd(10, T0 + 930, 50_100, 700, P.CLOCK_UNSYNCED), PREV)) == {
        V.RULE_FLAG_CLOCK_UNSYNCED: V.Severity.WARNING}
    assert V.RULE_ON_GRID in rules(
        V.validate(rd(10, T0 + 931, 50_100, 700, P.CLOCK_UNSYNCED), PREV))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        V.validate(rd(9, T0 + 900, 50_100), PREV)  # previous is not earlier
    with pytest.raises(ValueError):
        V.validate({**rd(10, T0 + 900, 50_100), 1: b"\x01" * 8}, PREV)  # another meter
    with pytest.raises(ValueError):
        V.validate(P.ack(DEV, 1, bytes(32), T0, FID), None)
    for bad in (dict(rating_margin_pct=99), dict(spike_min_history=0),
                dict(spike_min_history=673), dict(spike_factor=float("nan")),
                dict(spike_peak_factor=0.5)):
        with pytest.raises(ValueError):
            V.VeeConfig(**bad)
    with pytest.raises(ValueError):
        V.MeterRating(phases=4)
    assert V.MeterRating().max_power_w == 13_800


# --- estimation: properties -------------------------------------------------------------------
@st.composite
def gaps(draw: st.DrawFn) -> tuple[dict[int, Any], dict[int, Any], list[int]]:
    n = draw(st.integers(1, 200))
    steps = draw(st.lists(st.integers(1, 3600), min_size=n, max_size=n))
    t0 = T0 + draw(st.integers(0, 10**6))
    ends, t = [], t0
    for s in steps:
        t += s
        ends.append(t)
    imp0, exp0 = draw(st.integers(0, 10**9)), draw(st.integers(0, 10**9))
    before = rd(7, t0, imp0, exp0, P.CLOCK_UNSYNCED)
    after = rd(7 + draw(st.integers(1, n)), t, imp0 + draw(st.integers(0, 10**7)),
               exp0 + draw(st.integers(0, 10**7)), P.CLOCK_UNSYNCED)
    return before, after, ends


weights = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@PROPS
@given(gaps(), st.data())
def test_estimates_sum_exactly_to_the_register_difference(gap: Any, data: st.DataObject):
    before, after, ends = gap
    n = len(ends)
    profile = data.draw(st.none() | st.lists(weights, min_size=n, max_size=n))
    export_profile = data.draw(st.none() | st.lists(weights, min_size=n, max_size=n))
    est = V.estimate_gap(before, after, ends, profile, export_profile)
    assert [iv.end for iv in est] == ends
    assert [iv.start for iv in est] == [before[3], *ends[:-1]]
    assert sum(iv.imp_wh for iv in est) == after[5] - before[5]
    assert sum(iv.exp_wh for iv in est) == after[6] - before[6]
    assert all(iv.imp_wh >= 0 and iv.exp_wh >= 0 for iv in est)
    if profile is not None and sum(profile) > 0:
        assert all(iv.imp_wh == 0 for iv, w in zip(est, profile, strict=True) if w == 0)


@PROPS
@given(st.integers(1, 300), st.integers(0, 10**8))
def test_linear_on_the_grid_is_equal_parts_with_the_remainder_first(n: int, energy: int):
    before, after = rd(3, T0, 5), rd(4, T0 + 900 * n, 5 + energy, 0, P.SKIPPED)
    est = V.estimate_gap(before, after, V.gap_ends(before, after))
    q, r = divmod(energy, n)
    assert [iv.imp_wh for iv in est] == [q + 1] * r + [q] * (n - r)
    assert all(iv.exp_wh == 0 for iv in est)


def test_split_exact_is_largest_remainder():
    assert V.split_exact(10, [1, 1, 1]) == [4, 3, 3]
    assert V.split_exact(10, [1, 2, 2]) == [2, 4, 4]
    assert V.split_exact(7, [0, 1, 0, 1]) == [0, 4, 0, 3]
    assert V.split_exact(0, [3, 1]) == [0, 0]
    assert V.split_exact(100, [0.1, 0.2, 0.7]) == [10, 20, 70]
    for bad in ([], [0, 0], [-1, 2], [1, float("nan")]):
        with pytest.raises(ValueError):
            V.split_exact(5, bad)


def test_gap_ends_follow_the_later_readings_grid():
    assert V.gap_ends(rd(1, T0, 0), rd(3, T0 + 1800, 0)) == [T0 + 900, T0 + 1800]
    # an unsynced later reading: the grid, then its own t
    assert V.gap_ends(rd(1, T0, 0), rd(3, T0 + 1000, 0, flags=P.CLOCK_UNSYNCED)) == [
        T0 + 900, T0 + 1000]
    # dur changed to 300: the later reading's grid
    assert V.gap_ends(rd(1, T0 - 900, 0), rd(2, T0 + 600, 0, dur=300)) == [
        T0 - 600, T0 - 300, T0, T0 + 300, T0 + 600]
    with pytest.raises(ValueError):
        V.gap_ends(rd(1, T0, 0), rd(2, T0, 0))


def test_estimate_gap_refuses_inconsistent_input():
    before, after = rd(1, T0, 0), rd(3, T0 + 1800, 10)
    for ends in ([], [T0 + 900], [T0 + 900, T0 + 900, T0 + 1800], [T0, T0 + 1800]):
        with pytest.raises(ValueError):
            V.estimate_gap(before, after, ends)
    with pytest.raises(ValueError):
        V.estimate_gap(before, after, [T0 + 900, T0 + 1800], [1.0])
    with pytest.raises(ValueError):
        V.estimate_gap(before, after, [T0 + 900, T0 + 1800], [1.0, float("inf")])
    with pytest.raises(ValueError):
        V.estimate_gap(after, before, [T0 + 900, T0 + 1800])  # seq order
    # an all-zero profile is linear
    assert V.estimate_gap(before, after, [T0 + 900, T0 + 1800], [0.0, 0.0]) == \
        V.estimate_gap(before, after, [T0 + 900, T0 + 1800])


# --- estimation: the documented cases, as log entries -----------------------------------------
class Log:
    """A fog log as the estimation sees it: signed entries in order."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.readings: dict[int, tuple[dict[int, Any], bytes]] = {}

    def reading(self, seq: int, t: int, imp: int, exp: int = 0, flags: int = 0) -> bytes:
        prev = self.readings[seq - 1][1] if seq - 1 in self.readings else b"\x11" * 32
        raw = P.sign1(METER, rd(seq, t, imp, exp, flags, prev=prev))
        self.raw.append(raw)
        self.readings[seq] = (P.parse(raw).fields, P.digest(raw))
        return raw

    def fog(self, fields: dict[int, Any]) -> P.Message:
        raw = P.sign1(FOG, fields)
        self.raw.append(raw)
        return P.verify(raw, FOG.public_key)

    def estimate(self, a: int, b: int, method: str = V.METHOD_LINEAR,
                 profile: list[float] | None = None, t: int = T0 + 10**5) -> list[P.Message]:
        (fa, da), (fb, db) = self.readings[a], self.readings[b]
        est = V.estimate_gap(fa, fb, V.gap_ends(fa, fb), profile)
        return [self.fog(V.estimate_payload(fa, da, fb, db, part, method, t, FID))
                for part in V.chunked(est)]

    def supersede(self, est: P.Message, seq: int, t: int = T0 + 10**5) -> P.Message:
        f, d = self.readings[seq]
        return self.fog(V.supersession_payload(est.fields, est.digest, f, d, t, FID))

    def audit(self) -> list[str]:
        ms = [P.parse(r) for r in self.raw]
        return V.audit_trail((m.digest, m.fields) for m in ms)


def values(m: P.Message) -> list[tuple[int, int, int]]:
    return [(iv.end, iv.imp_wh, iv.exp_wh) for iv in V.estimate_intervals(m.fields)]


def test_one_gap():
    log = Log()
    log.reading(10, T0, 1000, 50)
    log.reading(12, T0 + 1800, 1301, 53)  # 11 is missing: two intervals, 301 and 3 Wh
    [est] = log.estimate(10, 12)
    assert values(est) == [(T0 + 900, 151, 2), (T0 + 1800, 150, 1)]
    f = est.fields
    assert (f[1], f[2], f[4], f[6], f[8], f[9], f[17]) == (
        DEV, "estimate", "linear", 10, 12, T0, FID)
    assert (f[5], f[7]) == (log.readings[10][1], log.readings[12][1])
    assert log.audit() == []


def test_a_failed_interval_is_estimated_between_its_good_neighbours():
    log = Log()
    log.reading(20, T0, 500)
    log.reading(21, T0 + 900, 500, flags=P.SOURCE_ERROR)  # registers are the last good ones
    log.reading(22, T0 + 1800, 700)
    assert V.needs_estimate(V.validate(log.readings[21][0], log.readings[20][0]))
    [est] = log.estimate(20, 22)
    assert values(est) == [(T0 + 900, 100, 0), (T0 + 1800, 100, 0)]
    assert log.audit() == []


def test_a_long_gap_linear_and_shaped_by_a_profile():
    log = Log()
    log.reading(1, T0, 2_000, 0)
    log.reading(97, T0 + 96 * 900, 12_000, 40)  # 95 readings missing: 96 intervals
    [lin] = log.estimate(1, 97)
    v = values(lin)
    assert len(v) == 96 and v[-1][0] == T0 + 96 * 900
    # 10,000 Wh / 96 = 104 r 16: the first 16 intervals get 105; 40 Wh: the first 40 get 1
    assert [x[1] for x in v] == [105] * 16 + [104] * 80
    assert [x[2] for x in v] == [1] * 40 + [0] * 56
    assert len(lin.raw) < P.MAX_MESSAGE
    # the same gap shaped by a profile three times as high in the second half: quotas
    # 52.08 and 156.25 Wh; the 16 remaining Wh go to the largest remainders (.25), earliest first
    log = Log()
    log.reading(1, T0, 2_000, 0)
    log.reading(97, T0 + 96 * 900, 12_000, 0)
    [shaped] = log.estimate(1, 97, V.METHOD_PROFILE, [1.0] * 48 + [3.0] * 48)
    assert [x[1] for x in values(shaped)] == [52] * 48 + [157] * 16 + [156] * 32
    assert shaped.fields[4] == "profile"
    assert log.audit() == []


def test_a_gap_longer_than_one_entry_is_chunked():
    log = Log()
    log.reading(1, T0, 0)
    log.reading(2, T0 + 400 * 900, 400_000, 0, P.SKIPPED)  # the meter skipped 399 intervals
    parts = log.estimate(1, 2)
    assert [len(p.fields[10]) for p in parts] == [128, 128, 128, 16]
    assert [p.fields[9] for p in parts] == [T0, T0 + 128 * 900, T0 + 256 * 900, T0 + 384 * 900]
    assert all(x[1] == 1000 for p in parts for x in values(p))
    assert log.audit() == []


def test_the_largest_entry_fits_in_a_message():
    # every uint at the widest its range allows (docs/PROTOCOL.md section 4a), the longest
    # profile method name: seqs and times 5 bytes, Wh 9 bytes
    n, e = V.MAX_ESTIMATE_INTERVALS, 2**33
    t1 = (P.TIME_MAX - 60 * (n + 1)) // 60 * 60
    before = P.reading(DEV, P.SEQ_MAX - n - 1, t1, 60, e, e, 0, b"\x05" * 32)
    after = P.reading(DEV, P.SEQ_MAX, t1 + 60 * (n + 1), 60, e + (n + 1) * e, e + (n + 1) * e,
                      0, b"\x05" * 32)
    est = V.estimate_gap(before, after, V.gap_ends(before, after))
    assert len(est) == n + 1
    raw = P.sign1(FOG, V.estimate_payload(before, b"\x01" * 32, after, b"\x02" * 32, est[:n],
                                          V.METHOD_PROFILE, P.TIME_MAX, FID))
    assert len(raw) <= P.MAX_MESSAGE
    with pytest.raises(ValueError):
        V.estimate_payload(before, b"\x01" * 32, after, b"\x02" * 32, est,
                           V.METHOD_PROFILE, P.TIME_MAX, FID)


def test_a_reset_across_the_gap_is_recorded_as_unknown():
    log = Log()
    log.reading(30, T0, 90_000, 10)
    log.reading(33, T0 + 2700, 120, 0, P.REGISTER_RESET)  # meter replaced while 31, 32 missing
    (fa, da), (fb, db) = log.readings[30], log.readings[33]
    assert V.reset_in_gap(fa, fb)
    with pytest.raises(V.RegisterResetInGap):
        V.estimate_gap(fa, fb, V.gap_ends(fa, fb))
    m = log.fog(V.unknown_gap_payload(fa, da, fb, db, V.gap_ends(fa, fb), T0 + 10**5, FID))
    assert m.fields[4] == "none"
    assert m.fields[10] == [[T0 + 900], [T0 + 1800], [T0 + 2700]]
    assert log.audit() == []
    # a register that went back without the flag is a reset as well
    assert V.reset_in_gap(fa, rd(33, T0 + 2700, 89_999, 10))
    assert not V.reset_in_gap(fa, rd(33, T0 + 2700, 90_000, 10))
    with pytest.raises(ValueError):
        V.unknown_gap_payload(fa, da, rd(33, T0 + 2700, 90_000, 10), db, [T0 + 2700], T0, FID)


def test_a_late_true_reading_supersedes_the_estimate():
    log = Log()
    log.reading(10, T0, 1_000)
    log.reading(14, T0 + 3600, 1_403)  # 11, 12, 13 are still in the meter's spool
    [est] = log.estimate(10, 14)
    assert values(est) == [(T0 + 900, 101, 0), (T0 + 1800, 101, 0), (T0 + 2700, 101, 0),
                           (T0 + 3600, 100, 0)]
    log.reading(12, T0 + 1800, 1_100)  # a late true reading
    sup = log.supersede(est, 12)
    assert sup.fields == {0: 10, 1: DEV, 2: "supersede", 3: T0 + 10**5, 11: est.digest,
                          12: log.readings[12][1], 13: 12, 17: FID}
    assert P.verify(sup.raw, FOG.public_key).fields == sup.fields
    # what is still missing is estimated again from the nearer readings
    [a] = log.estimate(10, 12)
    [b] = log.estimate(12, 14)
    assert values(a) == [(T0 + 900, 50, 0), (T0 + 1800, 50, 0)]
    assert values(b) == [(T0 + 2700, 152, 0), (T0 + 3600, 151, 0)]
    assert log.audit() == []
    # the estimate itself is still in the log, byte for byte: nothing is overwritten
    assert est.raw in log.raw
    # the rest arrives: both re-estimates are superseded, no estimate is live any more
    log.reading(11, T0 + 900, 1_060)
    log.supersede(a, 11)
    log.reading(13, T0 + 2700, 1_250)
    log.supersede(b, 13)
    assert log.audit() == []


def test_the_audit_finds_a_broken_trail():
    log = Log()
    log.reading(10, T0, 1_000)
    log.reading(14, T0 + 3600, 1_403)
    [est] = log.estimate(10, 14)
    log.reading(12, T0 + 1800, 1_100)
    log.estimate(10, 12)  # re-estimated without superseding first
    assert any("overlap" in p for p in log.audit())
    log.supersede(est, 12)
    assert log.audit() == []
    log.supersede(est, 12)
    assert any("superseded already" in p for p in log.audit())

    log = Log()
    log.reading(10, T0, 1_000)
    log.reading(12, T0 + 1800, 1_100)
    (fa, da), (fb, db) = log.readings[10], log.readings[12]
    wrong = [V.EstimatedInterval(T0, T0 + 900, 60, 0), V.EstimatedInterval(T0 + 900, T0 + 1800,
                                                                           60, 0)]
    log.fog(V.estimate_payload(fa, da, fb, db, wrong, V.METHOD_LINEAR, T0, FID))
    assert any("does not sum" in p for p in log.audit())

    log = Log()
    log.reading(10, T0, 1_000)
    log.reading(12, T0 + 1800, 1_100)
    (fa, da), (fb, db) = log.readings[10], log.readings[12]
    short = [V.EstimatedInterval(T0, T0 + 900, 100, 0)]
    log.fog(V.estimate_payload(fa, da, fb, db, short, V.METHOD_LINEAR, T0, FID))
    assert any("tile" in p for p in log.audit())

    log = Log()
    log.reading(12, T0 + 1800, 1_100)
    fa = rd(10, T0, 1_000)
    est_f = V.estimate_payload(fa, b"\x0a" * 32, *log.readings[12],
                               V.estimate_gap(fa, log.readings[12][0], [T0 + 900, T0 + 1800]),
                               V.METHOD_LINEAR, T0, FID)
    log.fog(est_f)
    assert any("not logged before" in p for p in log.audit())

    log = Log()
    log.reading(10, T0, 1_000)
    log.reading(12, T0 + 1800, 1_100)
    (fa, da), (fb, db) = log.readings[10], log.readings[12]
    none = V.estimate_payload(fa, da, fb, db, V.estimate_gap(fa, fb, [T0 + 900, T0 + 1800]),
                              V.METHOD_LINEAR, T0, FID)
    none[4], none[10] = "none", [[T0 + 900], [T0 + 1800]]
    log.fog(none)
    assert any("without a register reset" in p for p in log.audit())


def test_builders_refuse_what_would_break_the_trail():
    fa, fb = rd(10, T0, 1_000), rd(14, T0 + 3600, 1_400)
    est = V.estimate_gap(fa, fb, V.gap_ends(fa, fb))
    d1, d2 = b"\x01" * 32, b"\x02" * 32
    with pytest.raises(ValueError):
        V.estimate_payload(fa, d1, fb, d2, [est[0], est[2]], V.METHOD_LINEAR, T0, FID)
    with pytest.raises(ValueError):
        V.estimate_payload(fa, d1, fb, d2, est, V.METHOD_NONE, T0, FID)
    with pytest.raises(ValueError):
        V.estimate_payload(fa, d1, fb, d2, [], V.METHOD_LINEAR, T0, FID)
    with pytest.raises(ValueError):
        V.estimate_payload(fa, d1, rd(12, T0 + 1800, 1_200), d2, est, V.METHOD_LINEAR, T0, FID)
    f = V.estimate_payload(fa, d1, fb, d2, est, V.METHOD_LINEAR, T0, FID)
    with pytest.raises(ValueError):  # 14 is a bound, not inside
        V.supersession_payload(f, d1, fb, d2, T0, FID)
    with pytest.raises(ValueError):  # another meter
        V.supersession_payload(f, d1, {**rd(12, T0 + 1800, 1_200), 1: b"\x09" * 8}, d2, T0, FID)
    with pytest.raises(ValueError):  # not an estimate
        V.supersession_payload(rd(12, T0, 0), d1, rd(12, T0 + 1800, 1_200), d2, T0, FID)


# --- type 10 on the wire ----------------------------------------------------------------------
D1, D2, D3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
GOOD_ESTIMATE = {0: 10, 1: DEV, 2: "estimate", 3: T0 + 5, 4: "linear", 5: D1, 6: 10, 7: D2,
                 8: 12, 9: T0, 10: [[T0 + 900, 151, 2], [T0 + 1800, 150, 1]], 17: FID}
GOOD_NONE = {**GOOD_ESTIMATE, 4: "none", 10: [[T0 + 900], [T0 + 1800]]}
GOOD_SUPERSEDE = {0: 10, 1: DEV, 2: "supersede", 3: T0 + 5, 11: D3, 12: D1, 13: 11, 17: FID}


def _drop(f: dict[int, Any], key: int) -> dict[int, Any]:
    return {k: v for k, v in f.items() if k != key}


@pytest.mark.parametrize("fields", [GOOD_ESTIMATE, GOOD_NONE, GOOD_SUPERSEDE,
                                    {**GOOD_ESTIMATE, 4: "profile"}],
                         ids=["estimate", "none", "supersede", "profile"])
def test_type_10_round_trips(fields: dict[int, Any]):
    raw = P.sign1(FOG, fields)
    m = P.verify(raw, FOG.public_key)
    assert m.fields == fields and m.type == P.ESTIMATE == 10 and m.kid == FID
    assert P.parse(raw) == m
    assert P.sign1(FOG, fields) == raw  # deterministic


BAD_10: list[tuple[str, dict[int, Any], str]] = [
    ("missing_from", _drop(GOOD_ESTIMATE, 5), "missing field 5"),
    ("missing_ivls", _drop(GOOD_ESTIMATE, 10), "missing field 10"),
    ("missing_fog", _drop(GOOD_ESTIMATE, 17), "missing field 17"),
    ("missing_kind", _drop(GOOD_ESTIMATE, 2), "missing field 2"),
    ("supersede_missing_by", _drop(GOOD_SUPERSEDE, 12), "missing field 12"),
    ("supersede_with_ivls", {**GOOD_SUPERSEDE, 10: GOOD_ESTIMATE[10]}, "has no field 10"),
    ("estimate_with_est", {**GOOD_ESTIMATE, 11: D3}, "has no field 11"),
    ("unknown_key", {**GOOD_ESTIMATE, 20: 1}, "has no field 20"),
    ("kind_unknown", {**GOOD_ESTIMATE, 2: "guess"}, "kind must be"),
    ("kind_not_text", {**GOOD_ESTIMATE, 2: 1}, "field 2 (kind) must be t"),
    ("method_unknown", {**GOOD_ESTIMATE, 4: "spline"}, "method must be"),
    ("digest_short", {**GOOD_ESTIMATE, 5: b"\x01" * 31}, "field 5 (from) must be b32"),
    ("seq_text", {**GOOD_ESTIMATE, 6: "10"}, "field 6 (from_seq) must be u"),
    ("t_negative", {**GOOD_ESTIMATE, 3: -1}, "field 3 (t) must be u"),
    ("ivls_not_array", {**GOOD_ESTIMATE, 10: {1: 2}}, "field 10 (ivls) must be a"),
    ("from_seq_zero", {**GOOD_ESTIMATE, 6: 0}, "field 6 (from_seq) is 0, outside [1, 4294967295]"),
    ("to_not_after_from", {**GOOD_ESTIMATE, 8: 10}, "to_seq must be greater"),
    ("ivls_empty", {**GOOD_ESTIMATE, 10: []}, "field 10 (ivls) has 0 entries, outside [1, 128]"),
    ("ivl_short", {**GOOD_ESTIMATE, 10: [[T0 + 900, 151]]}, "item 0 must be [end, imp, exp]"),
    ("ivl_negative", {**GOOD_ESTIMATE, 10: [[T0 + 900, -1, 0]]}, "item 0 must be"),
    ("ivl_bool", {**GOOD_ESTIMATE, 10: [[T0 + 900, True, 0]]}, "item 0 must be"),
    ("ivl_not_array", {**GOOD_ESTIMATE, 10: [T0 + 900]}, "item 0 must be"),
    ("none_with_energy", {**GOOD_NONE, 10: [[T0 + 900, 1, 1]]}, "item 0 must be [end]"),
    ("ivls_not_increasing", {**GOOD_ESTIMATE, 10: [[T0 + 1800, 1, 0], [T0 + 900, 1, 0]]},
     "item 1 must end after"),
    ("ivl_ends_at_start", {**GOOD_ESTIMATE, 10: [[T0, 1, 0]]}, "item 0 must end after"),
    ("supersede_seq_zero", {**GOOD_SUPERSEDE, 13: 0}, "field 13 (seq) is 0, outside"),
]


@pytest.mark.parametrize(("name", "fields", "why"), BAD_10, ids=[c[0] for c in BAD_10])
def test_malformed_type_10_is_rejected_with_its_reason(name: str, fields: dict[int, Any],
                                                        why: str):
    with pytest.raises(P.ProtocolError, match=re.escape(why)) as err:
        P.check_fields(fields)
    assert err.value.reason == "bad_fields"
    if 17 in fields:
        raw = P.sign1(FOG, fields, check=False)
        with pytest.raises(P.ProtocolError) as err:
            P.verify(raw, FOG.public_key)
        assert err.value.reason == "bad_fields"  # after the signature, as for every type
        with pytest.raises(P.ProtocolError):
            P.sign1(FOG, fields)  # the fog refuses to sign it


def test_type_10_must_be_signed_by_the_fog_it_names():
    # a meter cannot sign an estimate: its kid is not the fog field (key 17)
    raw = P.sign1(METER, GOOD_ESTIMATE, check=False)
    with pytest.raises(P.ProtocolError) as err:
        P.parse(raw)
    assert err.value.reason == "kid_mismatch"
    # nor one naming itself as the fog, checked against the fog's key
    raw = P.sign1(METER, {**GOOD_ESTIMATE, 17: METER.id})
    with pytest.raises(P.ProtocolError) as err:
        P.verify(raw, FOG.public_key)
    assert err.value.reason == "kid_mismatch"
    # a tampered estimate does not verify
    flipped = bytearray(P.sign1(FOG, GOOD_ESTIMATE))
    flipped[-1] ^= 1
    with pytest.raises(P.ProtocolError) as err:
        P.verify(bytes(flipped), FOG.public_key)
    assert err.value.reason == "bad_signature"
    assert P.SIGNER_FIELD[P.ESTIMATE] == 17
