"""The one logging setup (meterledger/infra/logs.py) and what the fog says of refused
messages (fog_node/rejections.py): formats, levels, and lines that do not repeat."""

from __future__ import annotations

import io
import json
import logging

import pytest

from fog_node.ingest import Outcome
from fog_node.rejections import RejectionLog
from meterledger.infra import logs
from meterledger.infra.clock import ManualClock


@pytest.fixture
def restore_root(monkeypatch: pytest.MonkeyPatch):
    # setup() passes its choice on to child processes in the environment: put it back after
    for name in (logs.ENV_LEVEL, logs.ENV_FORMAT):
        monkeypatch.setenv(name, "")  # recorded: restored (removed) at teardown
        monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def bare_root() -> None:
    """No handler on the root logger (pytest puts its capture there during each test, and
    setup() leaves a root someone else configured alone)."""
    logging.getLogger().handlers[:] = []


def test_json_lines_carry_time_level_logger_message_and_traceback(restore_root) -> None:
    bare_root()
    out = io.StringIO()
    logs.setup("debug", "json", stream=out)
    logging.getLogger("fog_node").debug("a %s", "detail")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "DEBUG" and first["logger"] == "fog_node"
    assert first["msg"] == "a detail" and first["ts"].endswith("Z")
    assert "ValueError: boom" in second["exc"]


def test_text_lines_and_levels_and_the_environment(restore_root,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bare_root()
    out = io.StringIO()
    monkeypatch.setenv(logs.ENV_LEVEL, "warning")
    logs.setup(stream=out)
    logging.getLogger("a").info("hidden")
    logging.getLogger("a").warning("shown")
    (line,) = out.getvalue().splitlines()
    assert line.endswith(" WARNING a: shown")
    logs.setup("info", "text", stream=out)  # again: replaced, not doubled
    logging.getLogger("a").info("once")
    assert out.getvalue().count("once") == 1


def test_once_holds_back_repeats_within_its_window_and_counts_them() -> None:
    clock = ManualClock(1000.0)
    once = logs.Once(window_s=60, monotonic=clock)
    assert once("refused", "x") == 0
    assert once("refused", "x") is None and once("refused", "x") is None
    assert once("refused", "y") == 0  # another key: its own window
    clock.advance(61)
    assert once("refused", "x") == 2


def test_the_fog_logs_the_first_refusal_per_meter_and_reason_then_a_summary(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(0.0)
    r = RejectionLog(summary_s=60, monotonic=clock)
    a, b = b"\x01" * 8, b"\x02" * 8
    caplog.set_level(logging.INFO, "fog_node.rejections")
    r.note([Outcome("rejected", "future_t", a, 1, "t 9 is 5 s ahead")] * 500)
    r.note([Outcome("rejected", "future_t", b, 1, "t 9"), Outcome("logged", "", a, 2),
            Outcome("quarantined", "unknown_meter", b"\x03" * 8, 1)])
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("meter 0101010101010101: message rejected (future_t): t 9 is 5 s")
    assert "hint:" in lines[0] and "--sim-" in lines[0]
    assert "quarantined (unknown_meter)" in lines[2] and "fog enroll" in lines[2]
    caplog.clear()
    clock.advance(61)
    r.flush()
    (summary,) = [rec.getMessage() for rec in caplog.records]
    assert summary.startswith("meter 0101010101010101: 499 more future_t rejection(s)")


def test_the_fog_remembers_a_bounded_number_of_meters() -> None:
    r = RejectionLog(tracked=10, monotonic=ManualClock(0.0))
    r.note([Outcome("rejected", "bad_signature", bytes([i]) * 8) for i in range(100)])
    assert len(r.seen) == 10


def test_a_silent_rs485_address_is_said_once_then_summarised_then_its_return(
        caplog: pytest.LogCaptureFixture) -> None:
    from fog_node.transport.rs485.silence import Silences

    clock = ManualClock(0.0)
    s = Silences(summary_s=600, monotonic=clock)
    caplog.set_level(logging.INFO, "fog_node.transport.rs485")
    for _ in range(100):  # polled twice a second for a while
        s.timeout(7, "no answer in 0.1 s")
        clock.advance(0.5)
    s.answered(8)  # an address that never was silent: nothing to say
    clock.advance(600)
    s.timeout(7)
    s.answered(7)
    lines = [rec.getMessage() for rec in caplog.records]
    assert lines == ["RS485 address 7 does not answer (no answer in 0.1 s); polling it on",
                     "RS485 address 7 still silent: 101 timeouts in 650 s",
                     "RS485 address 7 answers again after 101 timeout(s) in 650 s"]


def test_strangers_with_fresh_key_ids_cannot_flood_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(0.0)
    r = RejectionLog(summary_s=60, monotonic=clock)
    caplog.set_level(logging.INFO, "fog_node.rejections")
    r.note([Outcome("quarantined", "unknown_meter", i.to_bytes(8, "big"), 1)
            for i in range(500)])
    assert len(caplog.records) == r.firsts_max
    caplog.clear()
    clock.advance(61)
    r.flush()
    (line,) = [rec.getMessage() for rec in caplog.records]
    assert line.startswith("480 more meters' first refusals not logged") and "unknown_meter 480" in line


def test_a_root_logger_configured_by_someone_else_is_left_alone(restore_root) -> None:
    bare_root()
    theirs = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(theirs)
    logs.setup("debug", "json", stream=io.StringIO())
    assert logging.getLogger().handlers == [theirs]
