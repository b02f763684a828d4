"""Home demand response (docs/PROTOCOL.md section 30; SOURCES 003 s2.2.5): the `dr_*` kinds
of the type-12 transaction (body schemas, ranges and rules, merged into
`meterledger.wire.chain`'s tables) and the arithmetic the chain, the fog and an auditor
share: whom an event curtails (the if-then rule, `exclusion`), the power cap the fog sends
the meter (`cap_w`), the baseline and the curtailed energy (`curtailment`), and the
compensation (`compensation`). Pure.

Units: prices and thresholds in milli-cents per kWh (mc/kWh, as tariffs), power in W,
energy in Wh, the compensation rate in milli-points per kWh (mpt/kWh, as the market's
prices), so a rate times Wh is an amount in micro-points (upt) exactly: no payment rounds.

A contract is its offer (the utility's `dr_offer`, identified by its transaction's digest)
accepted by the customer (`dr_accept`: the second signature). Events start and end on a
quarter hour, so no metering interval of 15 minutes or less straddles their edges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from meterledger.errors import ProtocolError
from meterledger.wire import billing as BL
from meterledger.wire.meter import LIMIT_MAX_W
from meterledger.wire.schema import COUNT_MAX, SEQ_MAX, TIME_MAX, Range, is_int

DR_OFFER, DR_ACCEPT, DR_PREF, DR_EVENT = "dr_offer", "dr_accept", "dr_pref", "dr_event"
DR_REPORT, DR_SETTLE = "dr_report", "dr_settle"
KINDS = (DR_OFFER, DR_ACCEPT, DR_PREF, DR_EVENT, DR_REPORT, DR_SETTLE)

RATE_MAX = BL.RATE_MAX  # mc/kWh: a threshold or an event's price signal
COMP_MAX = 10**8  # mpt/kWh: a compensation rate (the market's highest price)
POWER_MAX = 10**7  # W: a home's max curtailment or floor (10 MW, beyond any home)
WH_MAX = 10**9  # Wh of one meter in one event
QUARTER = 900
EVENT_MIN_S, EVENT_MAX_S = QUARTER, 4 * 3600  # an event lasts 15 minutes to 4 hours
CONTRACT_MAX_S = 10 * 366 * 86_400  # a contract's validity, at most ten years
PREF_MAX_S = 366 * 86_400  # an opted-out window or a pause, at most a year
TARGETS_MAX, WINDOWS_MAX, COMMANDS_MAX = 64, 8, 2
DAY_S, DAY_MIN = 86_400, 1440
BASELINE_DAYS, LOOKBACK_DAYS = 7, 14  # the 7 newest complete, event-free days of the last 14
SKIP_EVENT, SKIP_WINDOW, PAUSE = "skip_event", "skip_window", "pause"
OPS = (SKIP_EVENT, SKIP_WINDOW, PAUSE)
# a command's outcome in a report: done (or accepted, its result lost), rejected by the
# meter, failed at the actuator, no answer by its not_after
DONE, REJECTED, FAILED, UNANSWERED = 0, 1, 2, 3
# why a reported meter is paid nothing (a report record's "why"; "" when it is paid)
NOT_IN_EVENT, NOT_IN_FORCE, BELOW_THRESHOLD = "not_in_event", "not_in_force", "below_threshold"
COMFORT_WINDOW, OPTED_OUT = "comfort_window", "opted_out"
NO_DEVICE_RESPONSE, INCOMPLETE_DATA, NO_BASELINE = ("no_device_response", "incomplete_data",
                                                    "no_baseline")
WHY = (NOT_IN_EVENT, NOT_IN_FORCE, BELOW_THRESHOLD, COMFORT_WINDOW, OPTED_OUT,
       NO_DEVICE_RESPONSE, INCOMPLETE_DATA, NO_BASELINE)

BODIES: dict[str, dict[int, str]] = {
    # customer, meter, fog, feeder, threshold, max_w, floor_w, comfort windows, tz_min,
    # rate, valid_from, valid_to
    DR_OFFER: {1: "b8", 2: "b8", 3: "b8", 4: "t", 5: "u", 6: "u", 7: "u", 8: "a", 9: "i",
               10: "u", 11: "u", 12: "u"},
    DR_ACCEPT: {1: "b32"},  # the offer's transaction digest
    # the contract (its offer's digest), op, and the event (skip_event), from and to
    # (skip_window) or to (pause)
    DR_PREF: {1: "b32", 2: "t", 3: "b8?", 4: "u?", 5: "u?"},
    # event id, price signal, start, end, targets [[fog, feeder]], note
    DR_EVENT: {1: "b8", 2: "u", 3: "u", 4: "u", 5: "a", 6: "t"},
    # event, meter, contract, limit_w, commands [[cid, outcome]], entries (result log
    # indices), baseline Wh, measured Wh, curtailed Wh, baseline days, missing_s
    DR_REPORT: {1: "b8", 2: "b8", 3: "b32", 4: "u", 5: "a", 6: "a", 7: "u", 8: "u", 9: "u",
                10: "u", 11: "u"},
    DR_SETTLE: {1: "b8", 2: "b8"},  # event, meter: the report whose owed points are paid
}
BODY_RANGES: dict[str, dict[int, Range]] = {
    DR_OFFER: {4: (1, 64), 5: (0, RATE_MAX), 6: (1, POWER_MAX), 7: (0, POWER_MAX),
               8: (0, WINDOWS_MAX), 9: (-720, 840), 10: (0, COMP_MAX), 11: (0, TIME_MAX),
               12: (0, TIME_MAX)},
    DR_PREF: {2: (5, 11), 4: (0, TIME_MAX), 5: (0, TIME_MAX)},
    DR_EVENT: {2: (0, RATE_MAX), 3: (0, TIME_MAX), 4: (0, TIME_MAX), 5: (1, TARGETS_MAX),
               6: (0, 255)},
    DR_REPORT: {4: (1, LIMIT_MAX_W), 5: (1, COMMANDS_MAX), 6: (0, COMMANDS_MAX),
                7: (0, WH_MAX), 8: (0, WH_MAX), 9: (0, WH_MAX), 10: (0, BASELINE_DAYS),
                11: (0, EVENT_MAX_S)},
}  # dr_accept and dr_settle carry fixed-length byte strings only: no ranges
BODY_NAMES: dict[str, dict[int, str]] = {
    DR_OFFER: {1: "customer", 2: "meter", 3: "fog", 4: "feeder", 5: "threshold", 6: "max_w",
               7: "floor_w", 8: "windows", 9: "tz_min", 10: "rate", 11: "valid_from",
               12: "valid_to"},
    DR_ACCEPT: {1: "offer"},
    DR_PREF: {1: "contract", 2: "op", 3: "event", 4: "from", 5: "to"},
    DR_EVENT: {1: "event", 2: "price", 3: "start", 4: "end", 5: "targets", 6: "note"},
    DR_REPORT: {1: "event", 2: "meter", 3: "contract", 4: "limit_w", 5: "commands",
                6: "entries", 7: "baseline", 8: "measured", 9: "curtailed", 10: "days",
                11: "missing_s"},
    DR_SETTLE: {1: "event", 2: "meter"},
}


def _bad(kind: str, msg: str) -> ProtocolError:
    return ProtocolError("bad_fields", f"{kind} body: {msg}")


def _pair(x: Any) -> bool:
    return isinstance(x, list) and len(x) == 2 and all(is_int(v) for v in x)


def parse_windows(items: Any) -> list[tuple[int, int]]:
    """Comfort windows as (from_minute, to_minute) of the local day, checked: 0 <= from <
    to <= 1440, ascending and apart; ValueError saying what is wrong."""
    out: list[tuple[int, int]] = []
    for i, w in enumerate(items):
        if not _pair(w) or not 0 <= w[0] < w[1] <= DAY_MIN:
            raise ValueError(f"window {i} must be [from_minute, to_minute] with 0 <= from < "
                             f"to <= {DAY_MIN}")
        if out and w[0] < out[-1][1]:
            raise ValueError(f"window {i} starts before window {i - 1} ends: windows ascend "
                             "without overlapping (one across midnight is two)")
        out.append((w[0], w[1]))
    return out


def _offer_rule(body: dict[int, Any]) -> None:
    if not body[4].isprintable() or body[4].strip() != body[4]:
        raise _bad(DR_OFFER, "feeder must be printable, without surrounding spaces")
    try:
        parse_windows(body[8])
    except ValueError as e:
        raise _bad(DR_OFFER, str(e)) from None
    if not 0 < body[12] - body[11] <= CONTRACT_MAX_S:
        raise _bad(DR_OFFER, f"valid_to ({body[12]}) must be after valid_from ({body[11]}), "
                             f"within {CONTRACT_MAX_S // 86_400} days")


def _pref_rule(body: dict[int, Any]) -> None:
    op, keys = body[2], sorted(k for k in (3, 4, 5) if k in body)
    want = {SKIP_EVENT: [3], SKIP_WINDOW: [4, 5], PAUSE: [5]}.get(op)
    if want is None:
        raise _bad(DR_PREF, f"op must be one of {', '.join(OPS)}, not {op!r}")
    if keys != want:
        raise _bad(DR_PREF, f"{op} takes fields {want} (event 3, from 4, to 5), not {keys}")
    if op == SKIP_WINDOW and not 0 < body[5] - body[4] <= PREF_MAX_S:
        raise _bad(DR_PREF, f"a window's to ({body[5]}) must be after its from ({body[4]}), "
                            f"within {PREF_MAX_S // 86_400} days")


def _event_rule(body: dict[int, Any]) -> None:
    start, end, targets = body[3], body[4], body[5]
    if start % QUARTER or end % QUARTER:
        raise _bad(DR_EVENT, f"start and end must be on a quarter hour (multiples of "
                             f"{QUARTER} s)")
    if not EVENT_MIN_S <= end - start <= EVENT_MAX_S:
        raise _bad(DR_EVENT, f"an event lasts {EVENT_MIN_S} to {EVENT_MAX_S} s, not "
                             f"{end - start}")
    for t in targets:
        if not (isinstance(t, list) and len(t) == 2 and isinstance(t[0], bytes)
                and len(t[0]) == 8 and isinstance(t[1], str) and len(t[1].encode()) <= 64):
            raise _bad(DR_EVENT, "targets must be [fog id (8 bytes), feeder (at most 64 "
                                 "bytes; \"\" for all its feeders)]")
    if any(targets[i] >= targets[i + 1] for i in range(len(targets) - 1)):
        raise _bad(DR_EVENT, "targets must be sorted ascending (by fog, then feeder), each "
                             "once")


def _report_rule(body: dict[int, Any]) -> None:
    for c in body[5]:
        if not _pair(c) or not 1 <= c[0] <= SEQ_MAX or not DONE <= c[1] <= UNANSWERED:
            raise _bad(DR_REPORT, f"commands must be [cid in [1, {SEQ_MAX}], outcome in "
                                  f"[{DONE}, {UNANSWERED}]]")
    if not all(is_int(x) and 0 <= x <= COUNT_MAX for x in body[6]):
        raise _bad(DR_REPORT, f"entries must be log indices (uint <= {COUNT_MAX})")
    want = curtailed(body[7], body[8], body[10], body[11])
    if body[9] != want:
        raise _bad(DR_REPORT, f"curtailed must be {want} Wh: baseline less measured, at "
                              "least 0, and 0 without a baseline day or with data missing")


def _no_rule(body: dict[int, Any]) -> None:
    """The schema and ranges say it all."""


BODY_RULES: dict[str, Callable[[dict[int, Any]], None]] = {
    DR_OFFER: _offer_rule, DR_ACCEPT: _no_rule, DR_PREF: _pref_rule, DR_EVENT: _event_rule,
    DR_REPORT: _report_rule, DR_SETTLE: _no_rule}


# --- builders ---------------------------------------------------------------------------------
def offer_body(customer: bytes, meter: bytes, fog: bytes, feeder: str, threshold: int,
               max_w: int, floor_w: int, windows: Sequence[tuple[int, int]], tz_min: int,
               rate: int, valid_from: int, valid_to: int) -> dict[int, Any]:
    return {1: customer, 2: meter, 3: fog, 4: feeder, 5: threshold, 6: max_w, 7: floor_w,
            8: [list(w) for w in windows], 9: tz_min, 10: rate, 11: valid_from, 12: valid_to}


def accept_body(offer: bytes) -> dict[int, Any]:
    return {1: offer}


def pref_body(contract: bytes, op: str, event: bytes | None = None, lo: int | None = None,
              hi: int | None = None) -> dict[int, Any]:
    """A preference: skip_event (event), skip_window (lo, hi) or pause (until hi). Keys are
    set as given, so the rules, not the builder, say what is wrong."""
    body: dict[int, Any] = {1: contract, 2: op}
    for k, v in ((3, event), (4, lo), (5, hi)):
        if v is not None:
            body[k] = v
    return body


def event_body(event: bytes, price: int, start: int, end: int,
               targets: Iterable[tuple[bytes, str]], note: str = "") -> dict[int, Any]:
    return {1: event, 2: price, 3: start, 4: end, 5: [list(t) for t in sorted(targets)],
            6: note}


def report_body(event: bytes, meter: bytes, contract: bytes, limit_w: int,
                commands: Sequence[tuple[int, int]], entries: Sequence[int],
                c: Curtailment) -> dict[int, Any]:
    return {1: event, 2: meter, 3: contract, 4: limit_w, 5: [list(x) for x in commands],
            6: sorted(entries), 7: c.baseline, 8: c.measured, 9: c.curtailed, 10: c.days,
            11: c.missing_s}


def settle_body(event: bytes, meter: bytes) -> dict[int, Any]:
    return {1: event, 2: meter}


# --- the parties' terms --------------------------------------------------------------------------
@dataclass(frozen=True)
class Contract:
    """An offer's terms; `accepted` the chain time of its acceptance (-1: not accepted)."""

    meter: bytes
    fog: bytes
    feeder: str
    threshold: int  # mc/kWh: the lowest event price the customer curtails at
    max_w: int  # the most the cap takes off the baseline power, W; caps what is paid
    floor_w: int  # the least power the home keeps during an event, W
    windows: tuple[tuple[int, int], ...]  # comfort windows, minutes of the local day
    tz_min: int
    rate: int  # mpt/kWh curtailed (upt per Wh)
    valid_from: int
    valid_to: int
    accepted: int = -1
    utility: bytes = b""  # who offered it (and pays)

    @classmethod
    def of(cls, body: dict[int, Any], accepted: int = -1, utility: bytes = b"") -> Contract:
        return cls(body[2], body[3], body[4], body[5], body[6], body[7],
                   tuple(parse_windows(body[8])), body[9], body[10], body[11], body[12],
                   accepted, utility)


@dataclass(frozen=True)
class Event:
    event: bytes
    price: int  # mc/kWh
    start: int
    end: int
    targets: tuple[tuple[bytes, str], ...]  # (fog, feeder; "" every feeder of the fog)
    utility: bytes = b""  # who called it

    @classmethod
    def of(cls, body: dict[int, Any], utility: bytes = b"") -> Event:
        return cls(body[1], body[2], body[3], body[4], tuple((t[0], t[1]) for t in body[5]),
                   utility)

    def names(self, fog: bytes, feeder: str) -> bool:
        return any(f == fog and g in ("", feeder) for f, g in self.targets)


@dataclass(frozen=True)
class Pref:
    """A preference as the chain recorded it: at chain time t; a pause is the window from
    t to its `to`."""

    t: int
    op: str
    event: bytes = b""
    lo: int = 0
    hi: int = 0

    def excludes(self, e: Event) -> bool:
        if self.op == SKIP_EVENT:
            return self.event == e.event
        return self.lo < e.end and e.start < self.hi


def in_comfort(c: Contract, start: int, end: int) -> bool:
    """Whether [start, end) (whole minutes, at most a day) touches a comfort window of the
    customer's local day (UTC + tz_min)."""
    s = (start + c.tz_min * 60) % DAY_S // 60
    n = (end - start) // 60
    return any(s < b + shift and a + shift < s + n
               for a, b in c.windows for shift in (0, DAY_MIN))


def exclusion(c: Contract, e: Event, prefs: Iterable[Pref]) -> str:
    """The if-then rule: "" when the event curtails the contract's meter, else why not.
    Curtailed: the contract's utility called the event, which names its fog (and feeder);
    the contract was accepted before the event's start and is valid over all of it; the
    price signal reaches the threshold; the event touches no comfort window; and no
    preference recorded before the event's end opts the meter out of it (that event, or a
    window or pause overlapping it)."""
    if e.utility != c.utility or not e.names(c.fog, c.feeder):
        return NOT_IN_EVENT
    if not (0 <= c.accepted < e.start and c.valid_from <= e.start and e.end <= c.valid_to):
        return NOT_IN_FORCE
    if e.price < c.threshold:
        return BELOW_THRESHOLD
    if in_comfort(c, e.start, e.end):
        return COMFORT_WINDOW
    if any(p.t < e.end and p.excludes(e) for p in prefs):
        return OPTED_OUT
    return ""


# --- the cap, the baseline, the compensation ------------------------------------------------------
def cap_w(c: Contract, baseline_wh: int, start: int, end: int) -> int:
    """The `limit` the fog sends the meter for the event: the baseline's mean power less the
    contract's max curtailment, never below its floor, and at least 1 W (0 is no limit)."""
    mean_w = baseline_wh * 3600 // (end - start)
    return min(LIMIT_MAX_W, max(mean_w - c.max_w, c.floor_w, 1))


def _covered(usage: Sequence[BL.Usage], lo: int, hi: int,
             measured_only: bool) -> tuple[int, int]:
    """(seconds covered, Wh) by the intervals lying entirely in [lo, hi)."""
    s = wh = 0
    for u in usage:
        if BL.in_window(u, lo, hi) and not (measured_only and u.est):
            s += u.dur
            wh += u.imp
    return s, wh


def _overlaps(lo: int, hi: int, windows: Iterable[tuple[int, int]]) -> bool:
    return any(a < hi and lo < b for a, b in windows)


def baseline(start: int, end: int, usage: Iterable[BL.Usage],
             exclude: Iterable[tuple[int, int]] = ()) -> tuple[int, int]:
    """(days, Wh): the mean, rounded half up, of what the meter used in the event's window
    [start, end) on the BASELINE_DAYS newest of the LOOKBACK_DAYS days before it whose
    window its intervals (measured or estimated) cover entirely and which overlaps none of
    `exclude` (earlier events that curtailed the meter); (0, 0) without such a day."""
    items, skip = list(usage), list(exclude)
    sums: list[int] = []
    for d in range(1, LOOKBACK_DAYS + 1):
        lo, hi = start - d * DAY_S, end - d * DAY_S
        if _overlaps(lo, hi, skip):
            continue
        s, wh = _covered(items, lo, hi, False)
        if s == hi - lo:
            sums.append(wh)
            if len(sums) == BASELINE_DAYS:
                break
    if not sums:
        return 0, 0
    return len(sums), (2 * sum(sums) + len(sums)) // (2 * len(sums))


def curtailed(base: int, measured: int, days: int, missing_s: int) -> int:
    """Baseline less measured, at least 0; 0 without a baseline day or when measured data
    is missing in the event (an estimate of the event itself would pay on a guess)."""
    return max(0, base - measured) if days and not missing_s else 0


@dataclass(frozen=True)
class Curtailment:
    days: int  # baseline days counted
    baseline: int  # Wh
    measured: int  # Wh measured in the event's window
    missing_s: int  # seconds of the window without a measured interval
    curtailed: int  # Wh


def curtailment(start: int, end: int, usage: Iterable[BL.Usage],
                exclude: Iterable[tuple[int, int]] = ()) -> Curtailment:
    """What the meter did not use in the event [start, end): the baseline (above) less what
    its measured intervals of the window show (estimated ones do not count there)."""
    items = list(usage)
    days, base = baseline(start, end, items, exclude)
    covered, measured = _covered(items, start, end, True)
    missing = end - start - covered
    return Curtailment(days, base, measured, missing, curtailed(base, measured, days, missing))


def cap_wh(c: Contract, start: int, end: int) -> int:
    """The most Wh an event pays for: max curtailment x the event's length."""
    return c.max_w * (end - start) // 3600


def compensation(c: Contract, start: int, end: int, wh: int) -> tuple[int, int]:
    """(Wh paid for, upt): the curtailed Wh capped by cap_wh, times the contract's rate."""
    paid = min(wh, cap_wh(c, start, end))
    return paid, paid * c.rate
