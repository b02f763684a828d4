"""The status LED (firmware/core/status.py, app.py; patterns in hardware/boards/README.md):
the pattern for each state, the most urgent first, the flashes per 2-second cycle that tell
them apart, and the app driving board.led() from its state on the host board and in the
real MicroPython VM."""

from __future__ import annotations

import pytest

from core import status as S
from tests.kit.appkit import drive, make_app, same_in_micropython
from tests.kit.meterkit import T0, Clock, RecordingTransport


def flashes(pattern: str) -> int:
    """Rising edges in one cycle, sampled every ms."""
    levels = [S.lit(pattern, ms) for ms in range(2000)]
    return sum(1 for a, b in zip([levels[-1], *levels], levels, strict=False) if b and not a)


def test_each_pattern_is_told_apart_by_its_flashes():
    assert {p: flashes(p) for p in S.PATTERNS} == {
        S.NO_NETWORK: 10, S.NO_ACK: 2, S.SPOOL: 3, S.UPDATING: 1, S.OK: 1}
    assert sum(S.lit(S.OK, ms) for ms in range(2000)) == 60  # a heartbeat, mostly off
    assert sum(S.lit(S.UPDATING, ms) for ms in range(2000)) == 1000
    for p, steps in S.PATTERNS.items():
        assert sum(steps) == 2000, p


def test_the_most_urgent_state_wins():
    assert S.choose(False, False, True, True) == S.NO_NETWORK
    assert S.choose(True, False, True, True) == S.NO_ACK
    assert S.choose(True, True, True, True) == S.SPOOL
    assert S.choose(True, True, False, True) == S.UPDATING
    assert S.choose(True, True, False) == S.OK


def test_the_led_is_driven_only_on_a_change():
    st = S.Status()
    st.set(True, True, False)
    assert st.show(0) is True and st.show(10) is None and st.show(60) is False
    assert st.show(1000) is None and st.show(2000) is True


def test_the_app_shows_network_ack_and_spool_state(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = make_app(tmp_path, clock, tr, spool_capacity=12)
    assert app.status.pattern == S.OK
    tr.up = False
    drive(app, clock, 5)
    assert app.status.pattern == S.NO_NETWORK
    tr.up = True
    drive(app, clock, 900)  # a reading, sent, not acknowledged yet
    assert app.status.pattern == S.OK
    drive(app, clock, 2 * 900 + 60)  # no fog ack for two intervals and a resend
    assert app.status.pattern == S.NO_ACK and len(app.meter.spool) < 6
    app.config["ack_warn_s"] = 10**6  # (an operator who only cares about the spool)
    app.show_status()
    while len(app.meter.spool) < 6:
        assert app.status.pattern == S.OK
        drive(app, clock, 900)
    assert app.status.pattern == S.SPOOL
    # the LED itself follows the pattern through idle()'s short sleeps
    seen = set()
    for _ in range(40):
        clock.up_ms += 50
        app.show_status()
        seen.add(app.board.led_on)
    assert seen == {True, False}


def test_an_offline_meter_shows_ok_or_its_spool(tmp_path):
    clock = Clock(T0 - 30)
    app = make_app(tmp_path, clock, None, spool_capacity=4)
    drive(app, clock, 900)
    assert app.status.pattern == S.OK
    drive(app, clock, 900)
    assert app.status.pattern == S.SPOOL


VM_LED = """
from core import status as S
st = S.Status()
out = []
for state in ((False, True, False), (True, False, False), (True, True, True), (True, True, False, True), (True, True, False)):
    p = st.set(*state)
    levels = "".join("1" if S.lit(p, ms) else "0" for ms in range(0, 2000, 50))
    out.append(p + " " + levels)
for line in out:
    print(line)
"""


@pytest.mark.vm
def test_the_patterns_are_the_same_inside_micropython():
    vm = same_in_micropython(VM_LED)
    assert [line.split()[0] for line in vm] == [S.NO_NETWORK, S.NO_ACK, S.SPOOL, S.UPDATING, S.OK]
