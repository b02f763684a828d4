"""Helpers for fog end-to-end tests: a manual clock for meters, meters on MQTT, log checks."""

from __future__ import annotations

import pathlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from fog_node.log.store import LogStore
from hardware.virtual_meter import VirtualMeter, make_meter
from meterledger import wire as P


class ManualClock:
    """A meter clock the test advances by hand (now in Unix s, uptime in ms)."""

    def __init__(self, start: float) -> None:
        self.start = self.t = start

    def now(self) -> float:
        return self.t

    def ticks_ms(self) -> int:
        return int((self.t - self.start) * 1000)

    def advance(self, s: float) -> None:
        self.t += s


def mqtt_meters(tmp: pathlib.Path, n: int, port: int, fog: P.SigningKey, clock: Any,
                dur: int = 900) -> list[VirtualMeter]:
    cfg = {"transport": "mqtt", "mqtt_host": "127.0.0.1", "mqtt_port": port,
           "fog": fog.id.hex(), "fog_pub": fog.public_key.raw.hex(), "source": "sim", "dur": dur}
    return [make_meter(i, tmp / f"meter-{i:03d}", clock, cfg) for i in range(n)]


def wait(cond: Callable[[], bool], timeout: float = 30.0, tick: Callable[[], None] | None = None,
         what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if tick is not None:
            tick()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def logged_readings(log: LogStore) -> Counter[tuple[bytes, int]]:
    """How often each (meter, seq) appears in the log."""
    c: Counter[tuple[bytes, int]] = Counter()
    for i in range(log.size()):
        m = P.parse(log.entry(i), schema=False)
        if m.type == P.READING:
            c[(m.kid, m.fields[2])] += 1
    return c
