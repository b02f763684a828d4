"""Helpers for fog end-to-end tests: a manual clock for meters, meters on MQTT, log checks,
and the secure broker a fog generates (issue 13): `secure_config`, `secure_broker`,
`enroll_request`. Tests that start a fog against the plain `broker` fixture say so with
`mqtt_security="lab"`."""

from __future__ import annotations

import pathlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from fog_node.broker_access import BrokerAccess, hash_password
from fog_node.config import FogConfig
from fog_node.log.store import LogStore
from hardware.broker import Mosquitto, free_port
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
                dur: int = 900, ca: str | None = None, first: int = 0) -> list[VirtualMeter]:
    """`n` virtual meters on MQTT (meter-<first>...); with `ca` (the PEM of the fog's CA) over
    TLS with their broker passwords, as flashed meters connect."""
    cfg = {"transport": "mqtt", "mqtt_host": "127.0.0.1", "mqtt_port": port,
           "fog": fog.id.hex(), "fog_pub": fog.public_key.raw.hex(), "source": "sim", "dur": dur}
    if ca is not None:
        cfg["mqtt_ca"] = ca
    return [make_meter(i, tmp / f"meter-{i:03d}", clock, cfg) for i in range(first, first + n)]


def enroll_request(vm: VirtualMeter, status: str = "active") -> dict[str, Any]:
    """The decision tools.flash hands the fog for this meter: its key and the hash of the
    broker password born in its flash."""
    req: dict[str, Any] = {"pub": bytes(vm.app.meter.key.pub).hex(), "status": status,
                           "reason": "test"}
    if status == "active" and vm.mqtt_secret:
        req["mqtt_hash"] = hash_password(vm.mqtt_secret)
    return req


def secure_config(tmp: pathlib.Path, **settings: Any) -> FogConfig:
    """A fog config in TLS mode (the default) on a free port, naming the pid file of the
    broker `secure_broker` starts in tmp/broker, so that the fog reloads it."""
    return FogConfig(data_dir=tmp / "fog", mqtt_tls_port=free_port(),
                     broker_pid_file=str(tmp / "broker" / "mosquitto.pid"), **settings)


def secure_broker(tmp: pathlib.Path, config: FogConfig, fog_hex: str) -> Mosquitto:
    """A real mosquitto (not started yet) that includes the listener, TLS and access files
    the fog generates for `config` in its data dir, as a production broker does."""
    access = BrokerAccess(config, fog_hex)
    access.write()
    return Mosquitto(tmp / "broker", port=config.mqtt_tls_port, include_dir=access.dir)


def wait(cond: Callable[[], bool], timeout: float = 30.0, tick: Callable[[], object] | None = None,
         what: str = "condition", every: float = 0.005) -> None:
    """Until cond(); `every` is the pause between tries (longer for a condition that asks
    another process, such as a CometBFT node, over the network)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if tick is not None:
            tick()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def logged_readings(log: LogStore) -> Counter[tuple[bytes, int]]:
    """How often each (meter, seq) appears in the log."""
    c: Counter[tuple[bytes, int]] = Counter()
    for i in range(log.size()):
        m = P.parse(log.entry(i), schema=False)
        if m.type == P.READING:
            c[(m.kid, m.fields[2])] += 1
    return c
