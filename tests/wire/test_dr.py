"""Home demand response's shared arithmetic (meterledger.wire.dr; docs/PROTOCOL.md section
30): the if-then rule with each reason a meter is left out, comfort windows across
midnight, the cap, the baseline of the newest complete event-free days, the curtailed
energy, the compensation's cap, and the body rules."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from meterledger.errors import ProtocolError
from meterledger.wire import billing as BL
from meterledger.wire import chain as C
from meterledger.wire import dr as DR

DAY = 86_400
MIDNIGHT = 1_800_000_000 - 1_800_000_000 % DAY
START, END = MIDNIGHT + 18 * 3600, MIDNIGHT + 19 * 3600
FOG, UTILITY = b"\xf0" * 8, b"\x07" * 8
CONTRACT = DR.Contract(b"\x11" * 8, FOG, "f1", 30_000, 500, 100, ((0, 360),), 0, 1_000,
                       MIDNIGHT - 30 * DAY, MIDNIGHT + 30 * DAY, MIDNIGHT - DAY, UTILITY)
EVENT = DR.Event(b"\xe1" * 8, 50_000, START, END, ((FOG, ""),), UTILITY)


def test_the_if_then_rule_names_the_first_reason_a_meter_is_left_out() -> None:
    assert DR.exclusion(CONTRACT, EVENT, []) == ""
    r = dataclasses.replace
    cases: list[tuple[DR.Contract, DR.Event, list[DR.Pref], str]] = [
        (CONTRACT, r(EVENT, utility=b"\x08" * 8), [], DR.NOT_IN_EVENT),
        (CONTRACT, r(EVENT, targets=((FOG, "f2"),)), [], DR.NOT_IN_EVENT),
        (CONTRACT, r(EVENT, targets=((b"\xf1" * 8, ""),)), [], DR.NOT_IN_EVENT),
        (r(CONTRACT, accepted=-1), EVENT, [], DR.NOT_IN_FORCE),
        (r(CONTRACT, accepted=START), EVENT, [], DR.NOT_IN_FORCE),  # accepted too late
        (r(CONTRACT, valid_to=END - 1), EVENT, [], DR.NOT_IN_FORCE),
        (r(CONTRACT, valid_from=START + 1), EVENT, [], DR.NOT_IN_FORCE),
        (r(CONTRACT, threshold=50_001), EVENT, [], DR.BELOW_THRESHOLD),
        (r(CONTRACT, windows=((1080, 1090),)), EVENT, [], DR.COMFORT_WINDOW),
        (r(CONTRACT, tz_min=-60), r(EVENT, start=MIDNIGHT + 6 * 3600,
                                    end=MIDNIGHT + 7 * 3600), [], DR.COMFORT_WINDOW),
        (CONTRACT, EVENT, [DR.Pref(START, DR.SKIP_EVENT, EVENT.event)], DR.OPTED_OUT),
        (CONTRACT, EVENT, [DR.Pref(START, DR.SKIP_WINDOW, lo=END - 60, hi=END + DAY)],
         DR.OPTED_OUT),
        (CONTRACT, EVENT, [DR.Pref(START, DR.PAUSE, lo=START, hi=START + 900)], DR.OPTED_OUT),
    ]
    for c, e, ps, why in cases:
        assert DR.exclusion(c, e, ps) == why, (c, e, ps)
    # preferences that miss the event, or came after its end, change nothing
    for p in (DR.Pref(START, DR.SKIP_EVENT, b"\xe2" * 8),
              DR.Pref(START, DR.SKIP_WINDOW, lo=END, hi=END + DAY),
              DR.Pref(START, DR.PAUSE, lo=START - DAY, hi=START),
              DR.Pref(END, DR.SKIP_EVENT, EVENT.event)):
        assert DR.exclusion(CONTRACT, EVENT, [p]) == "", p


def test_comfort_windows_wrap_around_midnight_in_local_time() -> None:
    late = dataclasses.replace(CONTRACT, windows=((0, 30),))
    night = (MIDNIGHT + 23 * 3600, MIDNIGHT + DAY + 1800)  # 23:00-00:30 UTC
    assert DR.in_comfort(late, *night)
    assert not DR.in_comfort(late, MIDNIGHT + 22 * 3600, MIDNIGHT + 23 * 3600)
    # UTC+8: 16:00 UTC is midnight, local
    asia = dataclasses.replace(late, tz_min=480)
    assert DR.in_comfort(asia, MIDNIGHT + 16 * 3600, MIDNIGHT + 17 * 3600)
    assert not DR.in_comfort(asia, *night)
    assert not DR.in_comfort(dataclasses.replace(late, windows=()), *night)


def test_the_cap_is_the_baseline_power_less_the_max_curtailment_above_the_floor() -> None:
    assert DR.cap_w(CONTRACT, 800, START, END) == 300  # 800 W - 500 W
    assert DR.cap_w(CONTRACT, 500, START, END) == 100  # the floor
    assert DR.cap_w(dataclasses.replace(CONTRACT, floor_w=0), 200, START, END) == 1  # not 0
    assert DR.cap_w(CONTRACT, 1_000, START, START + 1800) == 1_500  # 2,000 W mean


def _day(d: int, wh: int = 200, est: int = 0, skip: int | None = None) -> list[BL.Usage]:
    """The event's window d days back in four quarter hours of `wh` each."""
    base = START - d * DAY
    return [BL.Usage(base + 900 * (i + 1), 900, wh, est) for i in range(4) if i != skip]


def test_the_baseline_is_the_newest_complete_event_free_days() -> None:
    usage = [u for d in range(1, 15) for u in _day(d, 100 * d)]
    # days 1-7: 400, 800, ..., 2800 Wh: mean 1600
    assert DR.baseline(START, END, usage) == (7, 1600)
    # day 2 has an interval missing, day 3 an earlier event: days 1 and 4-9 count
    gappy = [u for d in range(1, 15) for u in _day(d, 100 * d, skip=1 if d == 2 else None)]
    days, wh = DR.baseline(START, END, gappy, [(START - 3 * DAY, END - 3 * DAY)])
    assert (days, wh) == (7, (2 * (400 + sum(400 * d for d in range(4, 10))) + 7) // 14)
    # estimated intervals count in baseline days; nothing in 14 days: no baseline
    assert DR.baseline(START, END, _day(1, est=1)) == (1, 800)
    assert DR.baseline(START, END, _day(15)) == (0, 0)
    # a half-up mean: 801 and 802 Wh
    odd = [*_day(1), BL.Usage(START - DAY - 900, 900, 0), *_day(2)]
    odd[0] = BL.Usage(odd[0].ivl, 900, 201)
    odd[-1] = BL.Usage(odd[-1].ivl, 900, 202)
    assert DR.baseline(START, END, odd) == (2, 802)


def test_curtailment_counts_measured_intervals_only_and_zero_on_missing_data() -> None:
    history = [u for d in range(1, 8) for u in _day(d)]
    event = _day(0, 50)
    c = DR.curtailment(START, END, history + event)
    assert (c.days, c.baseline, c.measured, c.missing_s, c.curtailed) == (7, 800, 200, 0, 600)
    estimated = [*_day(0, 50, skip=2), BL.Usage(START + 2700, 900, 0, 1)]
    c = DR.curtailment(START, END, history + estimated)
    assert (c.measured, c.missing_s, c.curtailed) == (150, 900, 0)
    assert DR.curtailment(START, END, event).curtailed == 0  # no baseline day
    assert DR.curtailment(START, END, history + _day(0, 300)).curtailed == 0  # used more
    assert DR.compensation(CONTRACT, START, END, 600) == (500, 500_000)  # 500 W x 1 h
    assert DR.compensation(CONTRACT, START, END, 499) == (499, 499_000)


def _refused(kind: str, body: dict[int, Any]) -> str:
    with pytest.raises(ProtocolError) as e:
        C._check_body(kind, body)
        C.BODY_RULES[kind](body)
    return str(e.value)


def test_the_body_rules_say_what_is_wrong() -> None:
    contract = b"\xc0" * 32
    assert "skip_event takes fields [3]" in _refused(DR.DR_PREF, DR.pref_body(
        contract, DR.SKIP_EVENT, lo=1))
    assert "op must be one of" in _refused(DR.DR_PREF, DR.pref_body(contract, "resume"))
    assert "a window's to" in _refused(DR.DR_PREF, DR.pref_body(
        contract, DR.SKIP_WINDOW, lo=10, hi=10))
    assert "windows ascend" in _refused(DR.DR_OFFER, DR.offer_body(
        b"\x01" * 8, b"\x02" * 8, FOG, "f1", 0, 1, 0, [(0, 60), (30, 90)], 0, 0, 0, 1))
    c = DR.Curtailment(7, 800, 200, 900, 600)
    assert "curtailed must be 0 Wh" in _refused(DR.DR_REPORT, DR.report_body(
        b"\xe1" * 8, b"\x11" * 8, contract, 300, [(1, DR.DONE)], [], c))
    assert "commands must be" in _refused(DR.DR_REPORT, DR.report_body(
        b"\xe1" * 8, b"\x11" * 8, contract, 300, [(0, DR.DONE)], [],
        DR.Curtailment(0, 0, 0, 0, 0)))
