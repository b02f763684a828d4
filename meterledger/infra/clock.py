"""Clocks passed in: services take a `Clock` (a function returning Unix seconds as a float)
instead of reading the wall clock, so tests and simulations drive time, and chain rules
never see one at all (they use block time)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Clock = Callable[[], float]


def system() -> float:
    """The wall clock (Unix seconds)."""
    return time.time()


def compressed(real: Clock, start: float, epoch: float, k: float) -> Clock:
    """A simulated clock running `k` times faster than `real`, reading `start` when `real`
    reads `epoch` (the demo's and virtual meters' compressed time)."""
    if k == 1.0:
        return real
    return lambda: start + (real() - epoch) * k


class ManualClock:
    """A clock that moves only when told to (tests, replays)."""

    def __init__(self, t: float) -> None:
        self._t = float(t)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._t += seconds
            return self._t
