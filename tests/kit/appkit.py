"""Helpers for the firmware app on the host board (tests/firmware): one way to boot it on a
test clock, to drive it, and to check that a script prints the same in the MicroPython VM as
in CPython."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from app import App
from hal.host import Board
from hardware.mpvm import run_micropython
from tests.kit.meterkit import FOG, Clock


def host_board(tmp_path: Any, clock: Clock, config: dict[str, Any]) -> Board:
    """A host board whose flash is tmp_path/flash and whose clocks are the test's."""
    return Board(dict(config, data_dir=str(tmp_path / "flash"), clock=lambda: clock.t,
                      ticks_ms=lambda: clock.up_ms, sleep_ms=lambda ms: None))


def make_app(tmp_path: Any, clock: Clock, tr: Any = None, **cfg: Any) -> App:
    """The app, started, with the fog key pinned and (unless cfg says another "source") a
    simulated household (seed 4)."""
    config = {"fog_pub": FOG.pub.hex(), "source": "sim", "seed": 4, **cfg}
    app = App(host_board(tmp_path, clock, config), config, tr)
    app.start()
    return app


def drive(app: Any, clock: Clock, seconds: int, step: int = 5) -> None:
    """Advance the clock `seconds` in `step`s, the app stepping at each."""
    for _ in range(seconds // step):
        clock.advance(step)
        app.step()


def same_in_micropython(script: str) -> list[str]:
    """What `script` prints, which must be the same in the MicroPython VM and in CPython."""
    vm = run_micropython(script).splitlines()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(script, {})
    assert vm == buf.getvalue().splitlines()
    return vm
