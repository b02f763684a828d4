"""Clocks passed in (meterledger.infra.clock)."""

from __future__ import annotations

from meterledger.infra.clock import ManualClock, compressed


def test_a_compressed_clock_runs_k_times_faster_from_its_epoch() -> None:
    real = ManualClock(1_000.0)
    sim = compressed(real, start=1_800_000_000.0, epoch=1_000.0, k=900.0)
    assert sim() == 1_800_000_000.0
    real.advance(2.0)
    assert sim() == 1_800_000_000.0 + 1_800.0  # two real seconds: two 15-minute intervals
    assert compressed(real, 5.0, 7.0, 1.0) is real  # k = 1: the real clock itself


def test_a_manual_clock_moves_only_when_told() -> None:
    c = ManualClock(10)
    assert c() == c() == 10.0
    assert c.advance(0.5) == 10.5 == c()
