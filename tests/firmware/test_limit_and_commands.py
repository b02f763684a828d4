"""Issue 6: the meter enforces its power limit through its relay, and rejects bad commands.

The limit guard (firmware core/limit.py) is pure logic: it is tested on its own under CPython,
in the real MicroPython VM (same decisions, sample for sample), and inside the app on the host
board, where a household behind the relay draws more than the limit. Every kind of bad fog
command is then thrown at the app: each is rejected with a signed result naming the reason,
counted by reason, and moves no relay and changes no limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hardware.firmware import module
from hardware.mpvm import run_micropython
from meterledger import wire as P
from meterledger.wire.cbor import encode, head
from tests.kit.appkit import drive, host_board
from tests.kit.meterkit import Clock, RecordingTransport

limit = module("core.limit")
LimitGuard = limit.LimitGuard
App = module("app").App
Board = module("hal.host").Board
Sample = module("core.sources").Sample

FOG = P.SigningKey.from_int(int("F0" * 32, 16))  # the fog key of tests/kit/meterkit.py
ROGUE = P.SigningKey.from_int(31337)  # some other party's key
T0 = 1_800_000_000  # a multiple of 900
FAR = T0 + 10**6  # a not_after far in the future


# --- the guard on its own -------------------------------------------------------------------
def feed(g: Any, watts: int | None, start: int, end: int, step: int = 1,
         commanded: bool = True) -> list[tuple[int, bool]]:
    """Samples at uptimes start, start+step, ... < end; returns (uptime, allows) per sample."""
    return [(up, g.update(watts, up, commanded)) for up in range(start, end, step)]


def first_open(trace: list[tuple[int, bool]]) -> int | None:
    return next((up for up, ok in trace if not ok), None)


def test_thresholds_are_documented_constants():
    assert (limit.TRIP_SAMPLES, limit.TRIP_S) == (3, 10)
    assert (limit.HOLD_S, limit.BACKOFF, limit.HOLD_MAX_S, limit.STABLE_S) == (60, 2, 3600, 900)


def test_trips_after_the_threshold_and_not_before():
    # 1 s samples: the run must span TRIP_S seconds (11 samples: 0..10)
    g = LimitGuard(1000)
    assert first_open(feed(g, 1500, 0, 10)) is None and g.trips == 0
    assert g.update(1500, 10) is False and g.trips == 1 and g.tripped
    # 5 s samples: TRIP_S is reached at the third sample
    g = LimitGuard(1000)
    assert first_open(feed(g, 1500, 0, 30, 5)) == 10
    # a slow loop: two samples far apart are not enough, the third is
    g = LimitGuard(1000)
    assert g.update(1500, 0) and g.update(1500, 100) and not g.update(1500, 200)
    # exactly the limit is not over it; one sample under it restarts the run (inrush)
    g = LimitGuard(1000)
    assert first_open(feed(g, 1000, 0, 100)) is None
    feed(g, 5000, 100, 109)
    g.update(999, 109)
    assert first_open(feed(g, 5000, 110, 120)) is None
    assert g.update(5000, 120) is False
    # a pass without a sample (source error) is no evidence either way
    g = LimitGuard(1000)
    feed(g, 1500, 0, 5)
    feed(g, None, 5, 8)
    assert first_open(feed(g, 1500, 8, 10)) is None and g.update(1500, 10) is False


def test_holds_off_then_retries_and_backs_off_up_to_the_cap():
    g = LimitGuard(1000)
    trace = feed(g, 1500, 0, 80)
    assert first_open(trace) == 10 and g.hold_s == 60 and g.reopen_at == 70
    assert all(not ok for up, ok in trace if 10 <= up < 70)
    assert dict(trace)[70] is True and g.retries == 1  # the retry
    assert g.remaining(75) == 0
    # still over the limit: trips again 10 s after the retry, with a doubled hold-off
    holds = []
    up = 80
    while g.trips < 10:
        before = g.trips
        g.update(1500, up)
        if g.trips != before:
            holds.append(g.hold_s)
            assert g.remaining(up) == g.hold_s and not g.allows()
        up += 1
    assert holds == [120, 240, 480, 960, 1920, 3600, 3600, 3600, 3600]
    assert g.trips == 10 and g.retries == 9


def test_a_retry_that_holds_resets_the_hold_off():
    g = LimitGuard(1000)
    feed(g, 1500, 0, 90)  # trip at 10 (60 s), retry at 70, trip at 81 (120 s)
    assert g.hold_s == 120 and g.trips == 2 and g.reopen_at == 201
    feed(g, 500, 90, 1100)  # retry at 201, then under the limit for 899 s
    assert g.allows() and g.retries == 2 and g.hold_s == 120
    feed(g, 1500, 1100, 1111)  # the trip at 1110 comes more than STABLE_S after the retry
    assert g.trips == 3 and g.hold_s == limit.HOLD_S  # a fresh start, not 240
    # whereas a trip soon after a retry keeps growing
    feed(g, 500, 2000, 2100)
    feed(g, 1500, 2100, 2111)
    assert g.trips == 4 and g.hold_s == 2 * limit.HOLD_S


def test_limit_zero_and_a_new_limit():
    g = LimitGuard(0)
    assert first_open(feed(g, 10**6, 0, 1000)) is None and g.trips == 0
    g.set_limit(1000, 1000)
    assert first_open(feed(g, 1500, 1000, 1020)) == 1010
    g.set_limit(1000, 1020)  # the same limit again changes nothing: still held open
    assert not g.update(1500, 1021)
    g.set_limit(0, 1022)  # no limit: released at once
    assert g.allows() and g.update(10**6, 1023)
    g.set_limit(1000, 1100)
    feed(g, 1500, 1100, 1111)
    assert g.tripped and g.hold_s == limit.HOLD_S  # a new limit starts the hold-off afresh
    g.set_limit(2000, 1111)  # a different limit: released, and 1500 W is now allowed
    assert first_open(feed(g, 1500, 1111, 2000)) is None and g.trips == 2


def test_the_guard_ignores_power_while_the_relay_is_commanded_off():
    g = LimitGuard(1000)
    assert first_open(feed(g, 5000, 0, 100, commanded=False)) is None and g.trips == 0
    feed(g, 5000, 100, 109)  # commanded on: the run starts only now
    assert g.allows() and not g.update(5000, 110)
    # a hold-off keeps running while commanded off; the guard only ever allows, the app ANDs
    assert first_open(feed(g, 0, 111, 170, commanded=False)) == 111
    assert g.update(0, 170, False) is True and g.retries == 1


GUARD_TRACE = """
from core.limit import LimitGuard
g = LimitGuard(2000)
x = [12345]
def rnd(n):
    x[0] = (x[0] * 1103515245 + 12345) % 2147483648
    return (x[0] >> 8) % n
out = []
up = 0
for i in range(3000):
    up += 1 + rnd(6)
    r = rnd(100)
    p = None if r < 4 else (2600 if r < 70 else 1200 + rnd(900))
    if i == 1200:
        g.set_limit(0, up)
    elif i == 1400:
        g.set_limit(2500, up)
    elif i == 2000:
        g.set_limit(1500, up)
    on = not (1600 <= i < 1700)
    a = g.update(p, up, on)
    out.append("1" if a else "0")
    if i % 250 == 0:
        out.append("|%d,%d,%d,%d,%d|" % (up, g.trips, g.retries, g.hold_s, g.remaining(up)))
print("".join(out))
print(g.trips, g.retries, g.hold_s, g.reopen_at, g.tripped)
"""


def cpython_trace() -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(GUARD_TRACE, {})
    return buf.getvalue()


def test_guard_trace_exercises_trips_retries_and_backoff():
    lines = cpython_trace().split("\n")
    trips, retries, hold = (int(v) for v in lines[1].split()[:3])
    assert trips >= 10 and retries >= 9 and "0" in lines[0] and "1" in lines[0]
    assert hold > limit.HOLD_S or trips > retries


@pytest.mark.vm
def test_limit_guard_decides_the_same_in_the_micropython_vm():
    assert run_micropython(GUARD_TRACE) == cpython_trace()


# --- the guard in the app, on the host board ------------------------------------------------
class LoadBehindRelay:
    """A household drawing `watts` whenever the board's relay is closed: the meter measures
    behind its own relay, so an open relay means no power and no energy."""

    name = "sim"

    def __init__(self, board: Any, watts: int) -> None:
        self.board = board
        self.watts = watts
        self.joules = 0
        self.last: int | None = None

    def read(self, now: int) -> Any:
        p = self.watts if self.board.relay() else 0
        if self.last is not None and now > self.last:
            self.joules += p * (now - self.last)
        self.last = now
        return Sample(self.joules // 3600, 0, 2300, p, 0, 210)

    def state(self) -> dict[str, int]:
        return {"j": self.joules}

    def restore(self, st: dict[str, int]) -> None:
        self.joules = st.get("j", self.joules)


def make_app(tmp_path: Any, clock: Clock, tr: RecordingTransport | None = None,
             watts: int | None = 3000, **cfg: Any) -> Any:
    config = {"fog_pub": FOG.public_key.raw.hex(), "source": "sim", "seed": 4, **cfg}
    board = host_board(tmp_path, clock, config)
    board.moves = []  # every relay(on) the app makes
    real = board.relay

    def relay(on: bool | None = None) -> bool:
        if on is not None:
            board.moves.append(on)
        return bool(real(on))

    board.relay = relay
    src = LoadBehindRelay(board, watts) if watts is not None else None
    app = App(board, config, tr, source=src)
    app.start()
    return app


def fog_cmd(app: Any, cid: int, op: str, args: dict[int, Any], not_after: int = FAR) -> bytes:
    return P.sign1(FOG, P.command(app.meter.id, cid, op, args, not_after, b"", FOG.id))


def send(app: Any, tr: RecordingTransport, clock: Clock, msg: bytes) -> P.Fields:
    """Deliver a command through the transport; the meter's signed result, verified."""
    n = len(tr.results)
    tr.inbox.append(("cmd", msg))
    drive(app, clock, 5)
    assert len(tr.results) == n + 1
    return P.verify(tr.results[-1], P.PublicKey(app.meter.key.pub)).fields


def interval_energy(app: Any, seq: int) -> int:
    prev, cur = (P.parse(app.meter.spool.get(s)).fields for s in (seq - 1, seq))
    assert cur[3] - prev[3] == 900
    return int(cur[5] - prev[5])


def test_power_over_the_limit_opens_the_relay_and_cuts_the_next_interval(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = make_app(tmp_path, clock, tr, watts=3000)
    board = app.board
    drive(app, clock, 30 + 900)  # readings 1 (partial) and 2 (a full interval, no limit)
    assert interval_energy(app, 2) == 750  # 3 kW for 15 minutes
    res = send(app, tr, clock, fog_cmd(app, 1, "limit", {1: 2000}))
    assert (res[3], res[4]) == (P.RESULT_DONE, "limit 2000 W")
    assert app.guard.limit_w == 2000 and app.meter.st["limit"] == 2000
    assert board.relay() is True and app.meter.stats["limit_trips"] == 0
    # the command arrived after this pass's sample; the next 3 samples over 2000 W, spanning
    # 10 s, trip the relay
    drive(app, clock, 10)
    assert board.relay() is True
    drive(app, clock, 5)
    assert board.relay() is False and board.moves[-1] is False
    assert app.meter.stats["limit_trips"] == 1 and not app.relay_closed
    assert app.relay_cmd is True and app.meter.st["relay"] is True  # the command stands
    drive(app, clock, 55)
    assert board.relay() is False  # still in the 60 s hold-off
    drive(app, clock, 5)
    assert board.relay() is True and app.meter.stats["limit_retries"] == 1  # retry
    drive(app, clock, 15)
    assert board.relay() is False and app.meter.stats["limit_trips"] == 2
    assert app.guard.hold_s == 2 * 60  # backing off
    drive(app, clock, 900 - 5 - 15 - 55 - 5 - 15)
    reading = P.parse(app.meter.spool.get(3)).fields
    assert reading[3] == T0 + 1800 and not reading[7]  # no flag is invented for a trip
    # closed for 20 + 15 + 15 + 15 s of 900 (hold-offs 60, 120, 240, 480 s) at 3 kW
    assert abs(interval_energy(app, 3) - 65 * 3000 / 3600) < 1  # Wh registers round down
    trips = app.meter.stats["limit_trips"]
    assert trips >= 4 and app.meter.stats["limit_retries"] == trips - 1
    # a reboot restores the commanded state (on) and the limit; the guard starts fresh
    again = make_app(tmp_path, clock, RecordingTransport(), watts=3000)
    assert again.board.relay() is True and again.guard.limit_w == 2000
    assert again.guard.trips == 0 and again.meter.stats["limit_trips"] == 0
    # raising the limit releases the relay at once
    drive(again, clock, 15)
    assert again.board.relay() is False
    tr2 = again.transport
    res = send(again, tr2, clock, fog_cmd(again, 2, "limit", {1: 5000}))
    assert res[4] == "limit 5000 W" and again.board.relay() is True
    drive(again, clock, 300)
    assert again.board.relay() is True and again.meter.stats["limit_trips"] == 1


def test_the_guard_never_closes_a_relay_the_fog_opened(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = make_app(tmp_path, clock, tr, watts=3000)
    board = app.board
    send(app, tr, clock, fog_cmd(app, 1, "limit", {1: 2000}))
    drive(app, clock, 15)
    assert board.relay() is False and app.guard.tripped
    res = send(app, tr, clock, fog_cmd(app, 2, "relay", {1: False}))  # during the hold-off
    assert res[4] == "relay off"
    n = len(board.moves)
    drive(app, clock, 4000)  # many hold-offs' worth: the guard's retry must not close it
    assert board.relay() is False and board.moves[n:] == []
    assert app.meter.stats["limit_trips"] == 1
    res = send(app, tr, clock, fog_cmd(app, 3, "relay", {1: True}))
    assert res[4] == "relay on" and board.relay() is True
    drive(app, clock, 15)
    assert board.relay() is False and app.meter.stats["limit_trips"] == 2
    # "relay on" during a trip: done, and the result says the limit holds it open
    res = send(app, tr, clock, fog_cmd(app, 4, "relay", {1: True}))
    assert res[3] == P.RESULT_DONE and res[4].startswith("relay on (held open by the limit for ")
    assert board.relay() is False


def test_a_simulated_household_still_keeps_itself_under_the_limit(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = make_app(tmp_path, clock, tr, watts=None)  # the synthetic household (seed 4)
    send(app, tr, clock, fog_cmd(app, 1, "limit", {1: 300}))
    assert app.meter.source.limit_w == 300 and app.guard.limit_w == 300
    drive(app, clock, 3600)
    assert app.board.relay() is True and app.meter.stats["limit_trips"] == 0
    send(app, tr, clock, fog_cmd(app, 2, "relay", {1: False}))
    assert app.meter.source.relay_on is False and app.board.relay() is False


# --- bad commands: rejected with the reason, and nothing moves ------------------------------
class Ctx:
    def __init__(self, app: Any, accepted: bytes, now: int) -> None:
        self.app = app
        self.dev: bytes = app.meter.id
        self.accepted = accepted  # cid 5, "limit" 4000, accepted before the bad command
        self.now = now


def _off(c: Ctx, cid: int = 6, **kw: Any) -> P.Fields:
    base: dict[str, Any] = {"dev": c.dev, "op": "relay", "args": {1: False}, "na": FAR,
                            "fog": FOG.id}
    base.update(kw)
    return P.command(base["dev"], cid, base["op"], base["args"], base["na"], b"", base["fog"])


def _forged_same_kid(c: Ctx) -> bytes:
    raw = P.sign1(ROGUE, _off(c), check=False)  # signed by another key ...
    return raw[:9] + FOG.id + raw[17:]  # ... claiming the fog's kid


def _non_shortest(c: Ctx) -> bytes:
    f = _off(c)
    body = b"".join(encode(k) + (b"\x18\x06" if k == 2 else encode(v)) for k, v in sorted(f.items()))
    return P.sign1_encoded(FOG, head(5, len(f)) + body)  # cid 6 as 0x18 0x06


def _unsorted(c: Ctx) -> bytes:
    f = _off(c)
    keys = sorted(f)
    keys[3], keys[4] = keys[4], keys[3]
    return P.sign1_encoded(FOG, head(5, len(f)) + b"".join(encode(k) + encode(f[k]) for k in keys))


Case = tuple[Callable[[Ctx], bytes], str, int, str]
BAD: dict[str, Case] = {
    # name: (build, reason, cid echoed in the result, more text the detail must hold)
    "signed_by_another_key": (_forged_same_kid, "bad_signature", 6, ""),
    "kid_of_another_key": (lambda c: P.sign1(ROGUE, _off(c), check=False), "kid_mismatch", 6, ""),
    "replay_of_accepted": (lambda c: c.accepted, "stale_cid", 5, "(a replay of the accepted command)"),
    "stale_cid": (lambda c: P.sign1(FOG, _off(c, 3)), "stale_cid", 3, "not greater than last accepted 5"),
    "same_cid_other_command": (lambda c: P.sign1(FOG, _off(c, 5)), "stale_cid", 5, ""),
    "expired": (lambda c: P.sign1(FOG, _off(c, na=c.now - 1)), "expired", 6, ""),
    "unknown_op": (lambda c: P.sign1(FOG, _off(c, op="explode", args={}), check=False),
                   "bad_fields", 6, "unknown op"),
    "relay_int_not_bool": (lambda c: P.sign1(FOG, _off(c, args={1: 0}), check=False),
                           "bad_fields", 6, "relay takes"),
    "relay_no_args": (lambda c: P.sign1(FOG, _off(c, args={}), check=False), "bad_fields", 6,
                      "relay takes"),
    "limit_negative": (lambda c: P.sign1(FOG, _off(c, op="limit", args={1: -1}), check=False),
                       "bad_fields", 6, "limit takes"),
    "limit_bool": (lambda c: P.sign1(FOG, _off(c, op="limit", args={1: True}), check=False),
                   "bad_fields", 6, "limit takes"),
    "limit_extra_arg": (lambda c: P.sign1(FOG, _off(c, op="limit", args={1: 100, 2: 1}),
                                          check=False), "bad_fields", 6, "limit takes"),
    "interval_not_allowed": (lambda c: P.sign1(FOG, _off(c, op="interval", args={1: 120}),
                                               check=False), "bad_fields", 6, "interval takes"),
    "wrong_dev": (lambda c: P.sign1(FOG, _off(c, dev=b"\x01" * 8)), "wrong_dev", 6, ""),
    "wrong_fog": (lambda c: P.sign1(ROGUE, _off(c, fog=ROGUE.id)), "wrong_fog", 6, ""),
    "truncated": (lambda c: P.sign1(FOG, _off(c))[:-10], "malformed", 0, ""),
    "non_shortest_head": (_non_shortest, "not_deterministic", 0, ""),
    "unsorted_keys": (_unsorted, "not_deterministic", 0, ""),
    "ack_not_command": (lambda c: P.sign1(FOG, P.ack(c.dev, 1, bytes(32), T0, FOG.id)),
                        "wrong_type", 1, "expected type 4, got 3"),
    "too_large": (lambda c: P.sign1(FOG, _off(c, op="ping", args={}))[:9] + bytes(4096),
                  "too_large", 0, ""),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_command_is_rejected_with_the_reason_and_moves_nothing(tmp_path, name):
    build, reason, cid, more = BAD[name]
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = make_app(tmp_path, clock, tr, watts=1500)
    board, meter = app.board, app.meter
    accepted = fog_cmd(app, 5, "limit", {1: 4000})
    assert send(app, tr, clock, accepted)[4] == "limit 4000 W"
    moves, stats = list(board.moves), dict(meter.stats)
    assert board.relay() is True and app.guard.limit_w == 4000

    msg = build(Ctx(app, accepted, clock.t + 5))
    res = send(app, tr, clock, msg)  # verified with the meter's key: signed by the meter

    assert res[0] == P.RESULT and res[1] == meter.id and res[2] == cid
    assert res[3] == P.RESULT_REJECTED
    assert res[4].startswith(reason + ": ") and more in res[4], res[4]
    assert ("(a replay of the accepted command)" in res[4]) == (name == "replay_of_accepted")
    assert meter.last_reject == res[4]
    assert meter.stats["commands_rejected"] == stats["commands_rejected"] + 1 == 1
    assert meter.stats["commands_rejected:" + reason] == 1
    assert meter.stats["commands"] == stats["commands"] == 1
    # nothing moved: no relay call, commanded state, limit and last cid as before
    drive(app, clock, 60)
    assert board.moves == moves and board.relay() is True
    assert app.relay_cmd is True and meter.st["relay"] is True
    assert app.guard.limit_w == 4000 and meter.st["limit"] == 4000
    assert meter.st["cid"] == 5 and meter.engine.dur == 900
    assert app.guard.trips == 0
