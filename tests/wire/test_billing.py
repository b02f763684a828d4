"""The bill arithmetic (meterledger.wire.billing, docs/PROTOCOL.md section 28): time-of-use
periods on the local day, one half-up rounding per line, the demand and fixed charges,
estimated intervals held or billed as the tariff says, credits; and a tariff's body rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterledger import wire as P
from meterledger.wire import billing as BL
from meterledger.wire import chain as C

DAY = 1_800_000_000 - 1_800_000_000 % 86_400  # a UTC midnight
# night 10.0 c/kWh until 08:00, day 25.0 c/kWh until 22:00, night again
PERIODS = [(0, 10_000), (480, 25_000), (1320, 10_000)]


def tariff(**kw: int) -> BL.Tariff:
    return BL.Tariff.of(BL.tariff_body("residential", 1, DAY, PERIODS, **kw))


def test_each_interval_is_billed_in_the_period_of_its_local_start() -> None:
    t = tariff()
    usage = [BL.Usage(DAY + 8 * 3600, 900, 1_000),  # 07:45-08:00: night
             BL.Usage(DAY + 8 * 3600 + 900, 900, 2_000),  # 08:00-08:15: day
             BL.Usage(DAY + 22 * 3600 + 900, 900, 4_000)]  # 22:00-22:15: the late night
    bill = BL.compute_bill(t, usage)
    assert [(x.what, x.quantity, x.cents) for x in bill.lines] == [
        ("energy P0", 1_000, 10), ("energy P1", 2_000, 50), ("energy P2", 4_000, 40)]
    assert bill.total == 100
    # local time: UTC+8 puts 00:00 UTC at 08:00, the day period
    east = tariff(tz_min=480)
    assert east.period_of(DAY) == 1 and east.period_of(DAY - 3600) == 0


def test_one_rounding_per_line_half_up() -> None:
    t = BL.Tariff.of(BL.tariff_body("r", 1, DAY, [(0, 12_345)], fixed=1_500))
    # 12,345 mc/kWh x 1,001 Wh = 12,357,345 mc x Wh / 1000 = 12.357 cents -> 12
    bill = BL.compute_bill(t, [BL.Usage(DAY + 900, 900, 1_001)])
    assert [x.cents for x in bill.lines] == [12, 2]  # fixed 1,500 mc = 1.5 c -> 2
    assert BL.cents(500_000) == 1 and BL.cents(499_999) == 0


def test_demand_is_the_highest_interval_average_power() -> None:
    t = tariff(demand_rate=2_000_000)  # 20 currency units per kW
    usage = [BL.Usage(DAY + 900, 900, 500), BL.Usage(DAY + 1800, 900, 1_250),
             BL.Usage(DAY + 1860, 60, 100)]  # 6 kW over a minute is the peak
    bill = BL.compute_bill(t, usage)
    demand = next(x for x in bill.lines if x.what == "demand")
    assert (demand.quantity, demand.cents) == (6_000, 12_000)


def test_estimated_intervals_are_held_or_billed_as_the_tariff_says() -> None:
    usage = [BL.Usage(DAY + 900, 900, 1_000), BL.Usage(DAY + 1800, 900, 3_000, est=1)]
    held = BL.compute_bill(tariff(estimated=BL.HOLD), usage)
    billed = BL.compute_bill(tariff(estimated=BL.BILL), usage)
    assert (held.total, held.held_wh, held.estimated) == (10, 3_000, 0)
    assert (billed.total, billed.held_wh, billed.estimated) == (40, 0, 1)


def test_credits_are_subtracted_lines() -> None:
    bill = BL.compute_bill(tariff(), [BL.Usage(DAY + 900, 900, 10_000)],
                           [BL.Line("compensation", 300, 10_000, 30), BL.Line("points", 5, 0, 5)])
    assert [x.cents for x in bill.lines] == [100, -30, -5] and bill.total == 65
    assert bill.lines[1] == BL.Line("compensation", 300, 10_000, -30)


@given(st.lists(st.tuples(st.integers(0, 95), st.integers(0, 50_000), st.integers(0, 1)),
                max_size=96, unique_by=lambda x: x[0]),
       st.integers(-720, 840))
def test_the_total_is_its_lines_and_every_billed_wh_is_in_one_period(
        rows: list[tuple[int, int, int]], tz: int) -> None:
    t = tariff(tz_min=tz, demand_rate=1_234, fixed=999)
    usage = [BL.Usage(DAY + 900 * (q + 1), 900, wh, est) for q, wh, est in rows]
    bill = BL.compute_bill(t, usage)
    assert bill.total == sum(x.cents for x in bill.lines)
    energy = sum(x.quantity for x in bill.lines if x.what.startswith("energy"))
    assert energy == sum(u.imp for u in usage)  # BILL: estimated ones are billed too


@pytest.mark.parametrize("periods,message", [
    ([(15, 100)], "periods must start at minute 0"),
    ([(0, 100), (7, 200)], "a quarter hour"),
    ([(0, 100), (60, 200), (60, 300)], "ascend"),
    ([(0, 100), (1440, 1)], "a quarter hour"),
])
def test_a_tariff_with_bad_periods_is_refused_by_the_wire(
        periods: list[tuple[int, int]], message: str) -> None:
    key = P.SigningKey.from_int(7)
    body = BL.tariff_body("r", 1, DAY, periods)
    with pytest.raises(P.ProtocolError, match=message):
        P.sign1(key, C.tx(key.id, 1, BL.BL_TARIFF, body, DAY, key.id))
    P.sign1(key, C.tx(key.id, 1, BL.BL_TARIFF, BL.tariff_body("r", 1, DAY, PERIODS), DAY,
                      key.id))  # a good one passes


@given(st.integers(0, 2**32 - 1), st.integers(-720, 840))
def test_the_quarter_table_is_the_periods_search(start: int, tz: int) -> None:
    t = tariff(tz_min=tz)
    assert t.quarters()[(start + tz * 60) % 86_400 // 900] == t.period_of(start)


def test_a_baseline_day_counts_only_with_its_whole_window_covered() -> None:
    """An outage 18:00-20:00, an hour's grace: the window is 19:00-20:00. Day -1 used 400 Wh
    then, day -2 800 Wh but only half its window is known (its 400 Wh must not lower the
    mean), day -3 600 Wh; the outage day served 50 Wh of it."""
    t = tariff(grace_s=3_600, compensation_rate=100_000, compensation_cap=10**9)
    start, end = DAY + 18 * 3600, DAY + 20 * 3600

    def hour(day: int, wh: list[int]) -> list[BL.Usage]:
        first = start + 3600 - day * 86_400
        return [BL.Usage(first + 900 * (q + 1), 900, w) for q, w in enumerate(wh)]

    usage = [*hour(1, [100] * 4), *hour(2, [200, 200]), *hour(3, [150] * 4),
             *hour(0, [50, 0, 0, 0])]
    s = BL.shortfall(t, start, end, usage)
    assert s is not None
    assert (s.window, s.days, s.baseline, s.served, s.wh) == ((start + 3600, end), 2, 500, 50,
                                                              450)
    assert s.cents == 45  # 0.45 kWh at 1.00
    assert BL.shortfall(t, start, start + 3600, usage) is None  # within the grace
    key = P.SigningKey.from_int(7)
    with pytest.raises(P.ProtocolError, match="grace_s must be whole quarter hours"):
        P.sign1(key, C.tx(key.id, 1, BL.BL_TARIFF, BL.tariff_body(
            "r", 1, DAY, PERIODS, grace_s=1_000), DAY, key.id))
