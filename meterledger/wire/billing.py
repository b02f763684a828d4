"""Tariffs and bills (docs/PROTOCOL.md section 28): the `bl_*` kinds of the type-12
transaction (body schemas, ranges and rules, merged into `meterledger.wire.chain`'s tables)
and the bill arithmetic a utility runs and a customer reruns offline. Pure.

Units: energy in Wh, demand in W, rates in milli-cents (mc: 1/1000 of a cent) per kWh or
per kW, a fixed charge in mc; a bill's lines are exact products (rate x quantity) rounded
once, half up, to cents, and its total is the sum of its lines' cents (SOURCES 4.2 gives no
rounding rule: one rounding per line keeps every line checkable by hand).

A tariff's time-of-use periods are [from_minute, rate] pairs over the local day (local =
UTC + tz_min minutes), the first from minute 0, each starting on a quarter hour, so a
metering interval of 15 minutes or less never spans two periods.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from meterledger.errors import ProtocolError
from meterledger.wire.cbor import encode
from meterledger.wire.schema import TIME_MAX, Range

BL_TARIFF, BL_APPROVE, BL_RECEIPT, BL_CREDIT = "bl_tariff", "bl_approve", "bl_receipt", \
    "bl_credit"
BL_REDEEM = "bl_redeem"
KINDS = (BL_TARIFF, BL_APPROVE, BL_RECEIPT, BL_CREDIT, BL_REDEEM)
RATE_MAX = 10**9  # mc per kWh or kW: 10,000 currency units, beyond any tariff
PERIODS_MAX = 48  # a period per half hour at most
HOLD, BILL = 0, 1  # a tariff's treatment of estimated intervals
NAME_MAX = 32
PERIOD_MAX_S = 92 * 86_400  # a bill covers at most a quarter
CENTS_MAX = 10**12
UPT_MAX = 2**62  # micro-points, as the market's accounts (meterledger.wire.market)
POINT = 1_000_000  # upt in a point
WH_MAX = 10**12  # Wh not served by one outage to one meter: far beyond any household's
BASELINE_DAYS = 7  # an outage's baseline: the same window of the previous days
DAY_S = 86_400
_BILL_TAG = b"meterledger/bill/v1"

BODIES: dict[str, dict[int, str]] = {
    # name, version, start, periods [[from_minute, rate]], demand rate, fixed charge,
    # estimated (0 hold, 1 bill), grace_s, compensation rate, compensation cap, tz_min,
    # and the points it accepts against bills (mc per point; absent: none)
    BL_TARIFF: {1: "t", 2: "u", 3: "u", 4: "a", 5: "u", 6: "u", 7: "u", 8: "u", 9: "u",
                10: "u", 11: "i", 12: "u?"},
    BL_APPROVE: {1: "t", 2: "u", 3: "b32"},  # name, version, the tariff transaction's digest
    # account, start, end, tariff name, version, the bill's digest, total cents, replaces
    BL_RECEIPT: {1: "b8", 2: "u", 3: "u", 4: "t", 5: "u", 6: "b32", 7: "i", 8: "b32?"},
    # the outage record's fault transaction, meter, outage start, tariff name, version,
    # Wh not served, the credit in cents
    BL_CREDIT: {1: "b32", 2: "b8", 3: "u", 4: "t", 5: "u", 6: "u", 7: "u"},
    BL_REDEEM: {1: "t", 2: "b8", 3: "u"},  # tariff name, account, upt (micro-points)
}
BODY_RANGES: dict[str, dict[int, Range]] = {
    BL_TARIFF: {1: (1, NAME_MAX), 2: (1, 10**6), 3: (0, TIME_MAX), 4: (1, PERIODS_MAX),
                5: (0, RATE_MAX), 6: (0, RATE_MAX), 7: (HOLD, BILL), 8: (0, 7 * 86_400),
                9: (0, RATE_MAX), 10: (0, RATE_MAX), 11: (-720, 840), 12: (1, RATE_MAX)},
    BL_APPROVE: {1: (1, NAME_MAX), 2: (1, 10**6)},
    BL_RECEIPT: {2: (0, TIME_MAX), 3: (0, TIME_MAX), 4: (1, NAME_MAX), 5: (1, 10**6),
                 7: (-CENTS_MAX, CENTS_MAX)},
    BL_CREDIT: {3: (0, TIME_MAX), 4: (1, NAME_MAX), 5: (1, 10**6), 6: (0, WH_MAX),
                7: (0, CENTS_MAX)},
    BL_REDEEM: {1: (1, NAME_MAX), 3: (1, UPT_MAX)},
}
BODY_NAMES: dict[str, dict[int, str]] = {
    BL_TARIFF: {1: "name", 2: "version", 3: "start", 4: "periods", 5: "demand_rate",
                6: "fixed", 7: "estimated", 8: "grace_s", 9: "compensation_rate",
                10: "compensation_cap", 11: "tz_min", 12: "points_rate"},
    BL_APPROVE: {1: "name", 2: "version", 3: "tariff"},
    BL_RECEIPT: {1: "account", 2: "start", 3: "end", 4: "tariff", 5: "version", 6: "bill",
                 7: "total", 8: "replaces"},
    BL_CREDIT: {1: "fault", 2: "meter", 3: "start", 4: "tariff", 5: "version", 6: "wh",
                7: "cents"},
    BL_REDEEM: {1: "tariff", 2: "account", 3: "upt"},
}


def _bad(kind: str, msg: str) -> ProtocolError:
    return ProtocolError("bad_fields", f"{kind} body: {msg}")


def parse_periods(items: Any) -> list[tuple[int, int]]:
    """A tariff's periods as (from_minute, rate mc/kWh), checked: ascending from minute 0,
    each on a quarter hour within the day; ValueError saying what is wrong."""
    out: list[tuple[int, int]] = []
    for i, item in enumerate(items):
        if not (isinstance(item, list) and len(item) == 2
                and all(x.__class__ is int for x in item)):
            raise ValueError(f"period {i} must be [from_minute, rate]")
        start, rate = item
        if not 0 <= start < 1440 or start % 15:
            raise ValueError(f"period {i} starts at minute {start}: a quarter hour of the "
                             "day (0, 15, ..., 1425)")
        if not 0 <= rate <= RATE_MAX:
            raise ValueError(f"period {i}: rate must be in [0, {RATE_MAX}] mc/kWh")
        if (i == 0) != (start == 0) or (out and start <= out[-1][0]):
            raise ValueError("periods must start at minute 0 and ascend")
        out.append((start, rate))
    return out


def _tariff_rule(body: dict[int, Any]) -> None:
    if not body[1].isprintable() or body[1].strip() != body[1]:
        raise _bad(BL_TARIFF, "name must be printable, without surrounding spaces")
    if body[8] % 900:
        # an outage starts on its interval's grid, so its compensated window does too
        raise _bad(BL_TARIFF, f"grace_s must be whole quarter hours, not {body[8]}")
    try:
        parse_periods(body[4])
    except ValueError as e:
        raise _bad(BL_TARIFF, str(e)) from None


def _no_rule(body: dict[int, Any]) -> None:
    """The schema and ranges say it all."""


def _receipt_rule(body: dict[int, Any]) -> None:
    if not 0 < body[3] - body[2] <= PERIOD_MAX_S:
        raise _bad(BL_RECEIPT, f"a billing period ends after it starts, within "
                               f"{PERIOD_MAX_S // 86_400} days")


BODY_RULES: dict[str, Callable[[dict[int, Any]], None]] = {
    BL_TARIFF: _tariff_rule, BL_APPROVE: _no_rule, BL_RECEIPT: _receipt_rule,
    BL_CREDIT: _no_rule, BL_REDEEM: _no_rule}


# --- builders -------------------------------------------------------------------------------------
def tariff_body(name: str, version: int, start: int, periods: Sequence[tuple[int, int]],
                demand_rate: int = 0, fixed: int = 0, estimated: int = BILL,
                grace_s: int = 3_600, compensation_rate: int = 0, compensation_cap: int = 0,
                tz_min: int = 0, points_rate: int = 0) -> dict[int, Any]:
    body = {1: name, 2: version, 3: start, 4: [list(p) for p in periods], 5: demand_rate,
            6: fixed, 7: estimated, 8: grace_s, 9: compensation_rate, 10: compensation_cap,
            11: tz_min}
    if points_rate:
        body[12] = points_rate
    return body


def approve_body(name: str, version: int, tariff: bytes) -> dict[int, Any]:
    return {1: name, 2: version, 3: tariff}


def receipt_body(account: bytes, start: int, end: int, name: str, version: int, bill: bytes,
                 total: int, replaces: bytes | None = None) -> dict[int, Any]:
    body = {1: account, 2: start, 3: end, 4: name, 5: version, 6: bill, 7: total}
    if replaces is not None:
        body[8] = replaces
    return body


def redeem_body(name: str, account: bytes, upt: int) -> dict[int, Any]:
    return {1: name, 2: account, 3: upt}


def credit_body(fault: bytes, meter: bytes, start: int, name: str, version: int, wh: int,
                cents: int) -> dict[int, Any]:
    return {1: fault, 2: meter, 3: start, 4: name, 5: version, 6: wh, 7: cents}


# --- the arithmetic ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tariff:
    name: str
    version: int
    start: int
    periods: tuple[tuple[int, int], ...]
    demand_rate: int  # mc per kW of the period's highest interval demand
    fixed: int  # mc per bill
    estimated: int  # HOLD or BILL
    grace_s: int
    compensation_rate: int  # mc per kWh not served
    compensation_cap: int  # mc per outage
    tz_min: int
    points_rate: int = 0  # mc per point redeemed against a bill; 0: points not accepted

    @classmethod
    def of(cls, body: dict[int, Any]) -> Tariff:
        return cls(body[1], body[2], body[3], tuple(parse_periods(body[4])), body[5], body[6],
                   body[7], body[8], body[9], body[10], body[11], body.get(12, 0))

    def period_of(self, start: int) -> int:
        """The index of the period an interval starting at `start` (unix s) is billed in."""
        minute = (start + self.tz_min * 60) % 86_400 // 60
        return max(i for i, (m, _) in enumerate(self.periods) if m <= minute)

    def quarters(self) -> list[int]:
        """The period of each quarter hour of the local day (periods start on one), so a
        bill looks an interval's period up rather than searching for it."""
        return [self.period_of(q * 900 - self.tz_min * 60) for q in range(96)]


@dataclass(frozen=True)
class Usage:
    """One metering interval of a customer: its end, length, import (Wh), estimated, and
    where its energy comes from (`ref`): measured, the seq of the reading that closes it
    (the one before is seq - 1); estimated, the log index of the fog's type-10 estimate."""

    ivl: int
    dur: int
    imp: int
    est: int = 0
    ref: int = 0


@dataclass(frozen=True)
class Line:
    what: str  # "energy P<i>", "demand", "fixed", "compensation", "points"
    quantity: int  # Wh, W, 1, Wh not served, upt
    rate: int  # mc per kWh or kW, mc per bill, or 0 for a credit given in cents
    cents: int


@dataclass(frozen=True)
class Bill:
    lines: tuple[Line, ...]
    total: int  # cents: the sum of the lines'
    held_wh: int  # estimated Wh the tariff holds back until measured
    estimated: int  # estimated intervals billed


def cents(exact: int) -> int:
    """A rate in mc per kWh (or kW) times Wh (or W), in cents, rounded half up: 1 cent is
    1,000 mc and 1 kWh 1,000 Wh. A credit is computed positive and then negated."""
    return (exact + 500_000) // 1_000_000


def compute_bill(t: Tariff, usage: Iterable[Usage], credits: Sequence[Line] = ()) -> Bill:
    """A bill of `usage` (the period's intervals, each once) under tariff `t`: per time-of-
    use period its Wh x rate, the highest interval demand (W = Wh x 3600 / dur) x
    demand_rate, the fixed charge, then `credits` (each line's cents positive, subtracted:
    its line on the bill is negative)."""
    wh = [0] * len(t.periods)
    peak, held, est = 0, 0, 0
    quarter, shift = t.quarters(), t.tz_min * 60
    for u in usage:
        if u.est and t.estimated == HOLD:
            held += u.imp
            continue
        est += u.est
        wh[quarter[(u.ivl - u.dur + shift) % 86_400 // 900]] += u.imp
        power = u.imp * 3600 // u.dur
        if power > peak:
            peak = power
    lines = [Line(f"energy P{i}", wh[i], rate, cents(rate * wh[i]))
             for i, (_, rate) in enumerate(t.periods) if wh[i]]
    if t.demand_rate:
        lines.append(Line("demand", peak, t.demand_rate, cents(t.demand_rate * peak)))
    if t.fixed:
        lines.append(Line("fixed", 1, t.fixed, cents(t.fixed * 1000)))
    lines += [Line(c.what, c.quantity, c.rate, -c.cents) for c in credits]
    return Bill(tuple(lines), sum(x.cents for x in lines), held, est)


# --- outage compensation ------------------------------------------------------------------------
@dataclass(frozen=True)
class Shortfall:
    """The energy an outage did not serve to one meter, under a tariff's compensation rule:
    over the window from the outage's start plus grace to its end, the mean of what the
    meter used in the same window on the BASELINE_DAYS days before the outage began (those
    with data), less what it still used in the window."""

    window: tuple[int, int]  # [from, to) unix s
    days: int  # baseline days whose window the meter's intervals cover whole
    baseline: int  # Wh: their mean, rounded half up
    served: int  # Wh measured (or estimated) in the window itself
    wh: int  # not served: baseline - served, at least 0
    cents: int  # wh x compensation_rate, at most compensation_cap


def compensation_cents(t: Tariff, wh: int) -> int:
    """Wh not served x the tariff's rate, capped per outage, in cents (half up)."""
    return cents(min(t.compensation_rate * wh, t.compensation_cap * 1000))


def baseline_shifts(start: int, end: int) -> range:
    """The whole days an outage window is shifted back by for its baseline: the first that
    ends the shifted window by the outage's start, and the BASELINE_DAYS - 1 before it (a
    baseline never counts the outage itself)."""
    first = max(1, -(-(end - start) // DAY_S))
    return range(first, first + BASELINE_DAYS)


def in_window(u: Usage, lo: int, hi: int) -> bool:
    return lo <= u.ivl - u.dur and u.ivl <= hi


def shortfall(t: Tariff, start: int, end: int, usage: Iterable[Usage]) -> Shortfall | None:
    """The meter's shortfall in the outage [start, end) from its intervals `usage` (the
    window's and the baseline days', each once, none overlapping; others are ignored), or
    None when the outage did not outlast the tariff's grace. An interval counts in a
    window if it lies entirely within it, and a baseline day only if its intervals cover
    its whole window."""
    lo = start + t.grace_s
    if lo >= end:
        return None
    shifts = baseline_shifts(start, end)
    served, sums, covered = 0, dict.fromkeys(shifts, 0), dict.fromkeys(shifts, 0)
    for u in usage:
        if in_window(u, lo, end):
            served += u.imp
        for d in shifts:
            if in_window(u, lo - d * DAY_S, end - d * DAY_S):
                sums[d] += u.imp
                covered[d] += u.dur
    # a day counts only with its whole window covered (intervals never overlap: the
    # verifier holds them to it), so leaving rows out cannot lower a day's use
    days = [sums[d] for d in shifts if covered[d] == end - lo]
    baseline = (2 * sum(days) + len(days)) // (2 * len(days)) if days else 0
    wh = max(0, baseline - served)
    return Shortfall((lo, end), len(days), baseline, served, wh, compensation_cents(t, wh))


def points_cents(t: Tariff, upt: int) -> int:
    """What `upt` micro-points redeemed under the tariff are worth, in cents (half up):
    points_rate is mc per point, and a cent is 1,000 mc."""
    return (upt * t.points_rate + 500 * POINT) // (1_000 * POINT)


def points_line(t: Tariff, upt: int) -> Line:
    """A redemption on the bill (its cents positive: compute_bill subtracts them)."""
    return Line("points", upt, t.points_rate, points_cents(t, upt))


def compensation_line(t: Tariff, s: Shortfall) -> Line:
    """A credit on the bill (its cents positive: compute_bill subtracts them)."""
    return Line("compensation", s.wh, t.compensation_rate, s.cents)


# --- the bill document --------------------------------------------------------------------------
@dataclass(frozen=True)
class Compensation:
    """One outage credit on a bill: the utility's bl_credit transaction, the fog's outage
    record (its fault transaction) it names, the shortfall and the intervals it is from."""

    credit: bytes
    fault: bytes
    start: int
    end: int
    shortfall: Shortfall
    usage: tuple[Usage, ...]


def compensation_document(c: Compensation) -> dict[str, Any]:
    s = c.shortfall
    return {"credit": c.credit.hex(), "fault": c.fault.hex(), "start": c.start, "end": c.end,
            "days": s.days, "baseline": s.baseline, "served": s.served, "wh": s.wh,
            "cents": s.cents, "usage": [[u.ivl, u.dur, u.imp, u.est, u.ref] for u in c.usage]}


@dataclass(frozen=True)
class Redemption:
    """Points redeemed against a bill: the customer's bl_redeem transaction, the micro-points
    and what the tariff made of them, in cents."""

    tx: bytes
    upt: int
    cents: int


def bill_document(account: bytes, meter: bytes, start: int, end: int, t: Tariff,
                  bill: Bill, usage: Sequence[Usage],
                  compensation: Sequence[Compensation] = (),
                  points: Sequence[Redemption] = ()) -> dict[str, Any]:
    """The bill the customer gets (JSON), whose `bill_digest` the utility's receipt on the
    chain names: its signature over the bill. It lists the intervals billed, each with
    where its energy comes from, so that a bundle can prove every one (the household's own
    data, on its own bill; the chain sees the digest only)."""
    return {"version": 1, "account": account.hex(), "meter": meter.hex(), "start": start,
            "end": end, "tariff": t.name, "tariff_version": t.version,
            "lines": [[x.what, x.quantity, x.rate, x.cents] for x in bill.lines],
            "total": bill.total, "held_wh": bill.held_wh, "estimated": bill.estimated,
            "intervals": len(usage),
            "usage": [[u.ivl, u.dur, u.imp, u.est, u.ref] for u in usage],
            "compensation": [compensation_document(c) for c in compensation],
            "points": [{"redeem": r.tx.hex(), "upt": r.upt, "cents": r.cents} for r in points]}


def bill_digest(doc: dict[str, Any]) -> bytes:
    """SHA-256 over a tag and the deterministic CBOR of the bill's fields in a fixed order
    (its JSON's key order and spacing change nothing)."""
    return hashlib.sha256(_BILL_TAG + encode([
        doc["version"], bytes.fromhex(doc["account"]), bytes.fromhex(doc["meter"]),
        doc["start"], doc["end"], doc["tariff"], doc["tariff_version"],
        [list(x) for x in doc["lines"]], doc["total"], doc["held_wh"], doc["estimated"],
        doc["intervals"], [list(u) for u in doc["usage"]],
        [[bytes.fromhex(c["credit"]), bytes.fromhex(c["fault"]), c["start"], c["end"],
          c["days"], c["baseline"], c["served"], c["wh"], c["cents"],
          [list(u) for u in c["usage"]]] for c in doc["compensation"]],
        [[bytes.fromhex(r["redeem"]), r["upt"], r["cents"]] for r in doc["points"]]])).digest()
