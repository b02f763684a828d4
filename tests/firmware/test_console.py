"""The meter's serial console (firmware/core/console.py, app.py): lines at a level, each
thing said once, the spool only when its depth changes band; the same lines on host meters
(the sink virtual_meter --verbose passes) and inside the real MicroPython VM."""

from __future__ import annotations

from typing import Any

import pytest

from app import App
from core import console as C
from core import cose
from core import messages as M
from tests.kit.appkit import drive, host_board, same_in_micropython
from tests.kit.meterkit import FOG, T0, Clock, RecordingTransport


def app_with(tmp_path: Any, clock: Clock, tr: Any, level: str, **cfg: Any) -> tuple[App, list[str]]:
    lines: list[str] = []
    config = {"fog_pub": FOG.pub.hex(), "source": "sim", "seed": 4, "log_level": level,
              "log_sink": lines.append, **cfg}
    app = App(host_board(tmp_path, clock, config), config, tr)
    app.start()
    return app, lines


def topics(lines: list[str]) -> list[str]:
    return [line.split()[2].rstrip(":") for line in lines]


def test_levels_and_saying_things_once():
    out: list[str] = []
    c = C.Console(out.append, "warn", lambda: 42)
    assert not c.info("boot", "hello") and c.warn("ntp", "no answer")
    assert out == ["    42 W ntp: no answer"]
    assert c.change("ntp", False, C.WARN, "ntp", "down") and not c.change("ntp", False, C.WARN, "ntp", "down")
    assert c.change("ntp", True, C.WARN, "ntp", "up")
    off: list[str] = []
    c = C.Console(off.append, "off")
    c.error("x", "y")
    assert off == [] and C.Console(None).info("x", "y") is False
    with pytest.raises(ValueError):
        C.Console(print, "loud")


def test_spool_depth_is_said_only_when_it_changes_band():
    out: list[str] = []
    c = C.Console(out.append, "info")
    for depth in [0, 1, 2, 3, 24, 25, 26, 49, 50, 80, 90, 99, 100, 100, 3, 0]:
        c.spool(depth, 100)
    assert [line.split("(")[1] for line in out] == [
        "below 25%)", "25%+)", "50%+)", "75%+)", "90%+)", "full)", "below 25%)", "empty)"]
    assert out[3].split()[1] == "W"  # from 75 % on it is a warning


def test_a_host_meter_says_what_happened(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    tr.up = False
    app, lines = app_with(tmp_path, clock, tr, "info")
    assert lines[0].split()[1:3] == ["I", "boot:"] and "fw 0.1.0 on host" in lines[0]
    assert "link: could not connect" in lines[1]
    drive(app, clock, 3 * 900)
    assert topics(lines).count("reading") == 3
    assert topics(lines).count("spool") == 1  # 1, 2, 3 of 3072 are one band
    assert topics(lines).count("link") == 1  # said once, not at every step
    tr.up = True
    drive(app, clock, 5)
    assert "I link: connected" in lines[-1]
    stored = app.meter.spool.get(3)
    tr.inbox.append(("ack", cose.sign1(FOG, M.ack(app.meter.id, 3, cose.digest(stored), T0, FOG.id))))
    tr.inbox.append(("ack", cose.sign1(FOG, M.ack(app.meter.id, 9, bytes(32), T0, FOG.id))))
    tr.inbox.append(("cmd", cose.sign1(FOG, M.command(app.meter.id, 1, "limit", {1: 2500},
                                                      T0 + 10**6, b"", FOG.id))))
    tr.inbox.append(("cmd", cose.sign1(FOG, M.command(app.meter.id, 1, "ping", {},
                                                      T0 + 10**6, b"", FOG.id))))
    drive(app, clock, 5)
    tail = lines[-5:]
    assert "I ack: through seq 3, 3 dropped, 0 unacknowledged" in tail[0]
    assert "I spool: 0 of 3072 readings unacknowledged (empty)" in tail[1]
    assert "W ack: refused: unknown_seq" in tail[2]
    assert "I command: cid 1 limit: done, limit 2500 W" in tail[3]
    assert "W command: refused: stale_cid" in tail[4]
    tr.up = False
    drive(app, clock, 5)
    assert "W link: lost" in lines[-1]


def test_warn_level_keeps_only_the_warnings_and_off_says_nothing(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    tr.up = False
    app, lines = app_with(tmp_path, clock, tr, "warn", ntp_host="pool.example", ntp_ok=False,
                          synced=False)
    drive(app, clock, 2 * 900)
    assert lines and all(line.split()[1] in ("W", "E") for line in lines)
    assert topics(lines).count("ntp") == 1  # a failing NTP server is said once
    app2, quiet = app_with(tmp_path / "b", clock, RecordingTransport(), "off")
    drive(app2, clock, 900)
    assert quiet == []


VM_CONSOLE = """
from core.console import Console, WARN
out = []
t = [0]
c = Console(out.append, "info", lambda: t[0])
c.info("boot", "fw 0.1.0")
c.debug("x", "hidden")
for d in (0, 1, 30, 60, 80, 95, 100, 0):
    t[0] += 7
    c.spool(d, 100)
c.change("ntp", False, WARN, "ntp", "no answer")
c.change("ntp", False, WARN, "ntp", "no answer")
for line in out:
    print(line)
"""


@pytest.mark.vm
def test_the_console_says_the_same_inside_micropython():
    vm = same_in_micropython(VM_CONSOLE)
    assert len(vm) == 9 and vm[0] == "     0 I boot: fw 0.1.0"
