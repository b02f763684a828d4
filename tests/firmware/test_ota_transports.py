"""Firmware updates end to end (docs/PROTOCOL.md section 22): the fog's OtaPusher sends a
signed image to a host meter running the firmware's own transports, over a real mosquitto
(MQTT: chunks on .../fw/<dev>, then the "fw" command) and over a pseudo-terminal (RS485: the
fog's bus master writes 0x45 chunks, then the command); the meter installs it, reboots into
it and keeps it once the fog acks; a forged image is refused, the fog records the meter's
type-5 result with the reason. Clocks are ManualClocks; waiting is tests.kit.fogkit.wait."""

from __future__ import annotations

import os
import threading
import tty
from pathlib import Path
from typing import Any

from fog_node import ota as O
from fog_node.config import FogConfig
from fog_node.enrollment import apply_request
from fog_node.node import FogNode, init_data_dir
from fog_node.service import FogService
from fog_node.transport.rs485.master import BusMaster
from hal.host import HostReboot
from hardware.virtual_meter import VirtualMeter, make_meter
from meterledger import wire as P
from tests.kit.fogkit import ManualClock, wait

T0 = 1_800_000_000
REL = P.SigningKey.from_int(0x5EED_0F_7E1EA5E)
OTHER = P.SigningKey.from_int(0xBAD_C0DE)
FILES = [("app_extra.py", bytes(range(256)) * 12), ("core/new.py", b"# new\n" * 300)]


def signed(version: str, key: P.SigningKey = REL) -> bytes:
    return O.sign(O.build(version, FILES, "", T0), key)


def meter_config(node: FogNode, tmp: Path, **cfg: Any) -> dict[str, Any]:
    return {"fog": node.key.id.hex(), "fog_pub": node.key.public_key.raw.hex(),
            "source": "sim", "dur": 900, "release_pub": REL.public_key.raw.hex(),
            "fw_dir": str(tmp / "code"), **cfg}


def files_in(tmp: Path) -> dict[str, bytes]:
    root = tmp / "code"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.py")}


def job_done(node: FogNode, dev: bytes, cid: int, state: str | None = None
             ) -> dict[str, Any] | None:
    """The job of command `cid` once the meter answered (in `state`, if given)."""
    doc = O.read_job(node.config.data_dir, dev)
    if doc is None or doc["cid"] != cid or doc["state"] in ("queued", "sent"):
        return None
    return doc if state is None or doc["state"] == state else None


# --- MQTT ------------------------------------------------------------------------------------
def test_an_image_over_mqtt_through_the_fog(tmp_path, broker):
    clock: Any = ManualClock(T0 - 10)
    init_data_dir(tmp_path / "fog")
    node = FogNode(FogConfig(data_dir=tmp_path / "fog", mqtt_port=broker.port,
                             seal_period_s=0.2, mqtt_security="lab"), clock.now)
    svc = FogService(node, clock.now)
    svc.start()
    try:
        wait(svc.connected.is_set, what="fog connected")
        cfg = meter_config(node, tmp_path, transport="mqtt", mqtt_host="127.0.0.1",
                           mqtt_port=broker.port)
        vm = make_meter(0, tmp_path / "meter", clock, cfg)
        dev = vm.app.meter.id
        apply_request(node, {"pub": vm.app.meter.key.pub.hex(), "status": "active"})
        rebooted: list[bool] = []

        def tick() -> None:
            if not rebooted:
                try:
                    vm.app.step()
                except HostReboot:
                    rebooted.append(True)

        # a forged image: refused, the reason logged at the fog as the meter's result
        O.queue_push(node.config.data_dir, dev, signed("0.2.0", OTHER))
        wait(lambda: job_done(node, dev, 1) is not None, tick=tick, what="forged refused")
        doc = job_done(node, dev, 1)
        assert doc is not None and doc["state"] == "rejected" and doc["status"] == P.RESULT_REJECTED
        assert doc["detail"].startswith("forged: ")
        assert not rebooted and files_in(tmp_path) == {} and vm.app.version == "0.1.0"
        # the real one: installed, result "activating", then the meter reboots
        O.queue_push(node.config.data_dir, dev, signed("0.2.0"))
        wait(lambda: bool(rebooted), tick=tick, what="the meter installs and reboots")
        wait(lambda: job_done(node, dev, 2) is not None, what="the fog has the result")
        doc = job_done(node, dev, 2)
        assert doc is not None and doc["state"] == "activating" and doc["running"] is None
        assert doc["detail"].startswith("activating 0.2.0")
        assert files_in(tmp_path) == dict(FILES)
        vm.app.transport.close()
        vm = make_meter(0, tmp_path / "meter", clock, cfg)  # the reboot
        assert vm.app.version == "0.2.0" and vm.app.fw["state"] == "trial"
        # done once the meter's birth says it runs the new version
        wait(lambda: job_done(node, dev, 2, "done") is not None, what="the new birth")
        doc = job_done(node, dev, 2, "done")
        assert doc is not None and doc["running"] == "0.2.0"
        clock.advance(900)
        wait(lambda: vm.app.fw["state"] == "ok", tick=vm.app.step, what="committed on an ack")
        assert vm.app.fw["version"] == "0.2.0"
        vm.app.transport.close()
    finally:
        svc.stop()
        node.close()


# --- RS485 -----------------------------------------------------------------------------------
class PtyPort:
    """The meter's end of a pseudo-terminal, with the MicroPython UART calls."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.rx = bytearray()

    def _pump(self) -> None:
        try:
            self.rx += os.read(self.fd, 4096)
        except (BlockingIOError, OSError):
            pass

    def any(self) -> int:
        self._pump()
        return len(self.rx)

    def read(self, n: int = 1) -> bytes | None:
        self._pump()
        data = bytes(self.rx[:n])
        del self.rx[:n]
        return data or None

    def write(self, data: bytes) -> int:
        os.write(self.fd, data)
        return len(data)


class MeterThread:
    """A meter serving the bus in a thread of its own until it reboots (or is stopped)."""

    def __init__(self, vm: VirtualMeter) -> None:
        self.vm = vm
        self.rebooted = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.vm.app.step()
                self.vm.app.transport.serve_for(20)
        except HostReboot:
            self.rebooted.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def test_an_image_over_rs485_from_the_fogs_bus_master(tmp_path):
    clock: Any = ManualClock(T0 - 10)
    init_data_dir(tmp_path / "fog")
    node = FogNode(FogConfig(data_dir=tmp_path / "fog", mqtt_security="lab"), clock.now)
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    cfg = meter_config(node, tmp_path, transport="rs485", rs485_address=7)
    port = PtyPort(master)
    vm = make_meter(0, tmp_path / "meter", clock, cfg, bus=port)
    dev = vm.app.meter.id
    apply_request(node, {"pub": vm.app.meter.key.pub.hex(), "status": "active"})
    bus = BusMaster(node, os.ttyname(slave), [7], clock=clock.now, slow_timeout_s=2.0)
    pusher = O.OtaPusher(node, lambda items: None, bus, bus.queue_command, clock.now)
    meter = MeterThread(vm)

    def poll() -> None:
        bus.poll_once()

    try:
        wait(lambda: bus.knows(dev), tick=poll, what="the meter's birth")
        pusher.push(dev, signed("0.2.0", OTHER))

        def tick() -> None:
            bus.poll_once()
            pusher.tick()

        wait(lambda: job_done(node, dev, 1) is not None, tick=tick, what="forged refused")
        doc = job_done(node, dev, 1)
        assert doc is not None and doc["detail"].startswith("forged: ")
        pusher.push(dev, signed("0.2.0"))
        assert bus.firmware_left(dev) > 0
        wait(meter.rebooted.is_set, tick=tick, what="the meter installs and reboots")
        wait(lambda: job_done(node, dev, 2) is not None, tick=tick, what="the result")
        doc = job_done(node, dev, 2)
        assert doc is not None and doc["state"] == "activating", doc
        assert bus.counters["fw_chunks"] >= len(O.parse_image(signed("0.2.0")).blob) // 200
        assert files_in(tmp_path) == dict(FILES)
        meter.close()
        vm = make_meter(0, tmp_path / "meter", clock, cfg, bus=port)  # the reboot
        assert vm.app.version == "0.2.0"
        meter = MeterThread(vm)
        wait(lambda: job_done(node, dev, 2, "done") is not None, tick=tick, what="its birth")
        clock.advance(900)
        wait(lambda: vm.app.fw["state"] == "ok", tick=poll, what="committed")
    finally:
        meter.close()
        bus.close()
        os.close(master)
        os.close(slave)
        node.close()
