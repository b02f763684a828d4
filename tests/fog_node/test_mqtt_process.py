"""The fog's MQTT client process (fog_node.transport.mqtt): it leaves when the fog process dies,
and the fog replaces it should it die first. Real processes, real mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fog_node import service
from fog_node.config import FogConfig
from fog_node.enrollment import apply_request
from fog_node.node import FogNode, init_data_dir
from fog_node.service import FogService
from meterledger import wire as P
from tests.kit.fogkit import wait
from tests.kit.procs import stop

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def gone(pid: int) -> bool:
    try:  # reparented to init once its parent died: gone, or a zombie nobody reaped yet
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_mqtt_process_leaves_when_the_fog_process_is_killed(tmp_path, broker):
    data = tmp_path / "fog"
    init_data_dir(data)
    fog = subprocess.Popen(
        [sys.executable, "-m", "fog_node", "run", "--data-dir", str(data), "--mqtt-port",
         str(broker.port), "--mqtt-security", "lab", "--http-port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    assert fog.stdout is not None
    child: int | None = None
    try:
        assert "running" in fog.stdout.readline()
        wait(lambda: len(children(fog.pid)) == 1, what="the MQTT process")
        (child,) = children(fog.pid)
        os.kill(fog.pid, signal.SIGKILL)
        fog.wait()
        # without the fog it must not stay connected: a restarted fog takes over the session
        wait(lambda: gone(child), timeout=60, what="the MQTT process to leave")
    finally:  # nothing left running, whatever failed
        stop(fog)
        if child is not None and not gone(child):
            os.kill(child, signal.SIGKILL)


class Meter:
    """A meter stand-in on MQTT: publishes readings, collects the fog's acks."""

    def __init__(self, port: int, fog_hex: str) -> None:
        self.key = P.SigningKey.from_int(0xACE)
        self.acks: list[int] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.key.id.hex())
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *_: subscribed.set()
        self.c.subscribe(f"grid/f/{fog_hex}/ack/{self.key.id.hex()}", 1)
        subscribed.wait(10)
        self.prev = bytes(32)

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        self.acks.append(P.parse(bytes(msg.payload)).fields[2])

    def send(self, seq: int) -> None:
        raw = P.sign1(self.key, P.reading(self.key.id, seq, T0 + 900 * seq, 900, seq, 0, 0,
                                          self.prev))
        self.prev = P.digest(raw)
        self.c.publish(f"grid/d/{self.key.id.hex()}/reading", raw, 1)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_a_dead_mqtt_process_is_replaced_and_ingest_goes_on(tmp_path, broker, monkeypatch):
    monkeypatch.setattr(service, "RESTART_PAUSE_S", 0.2)
    init_data_dir(tmp_path / "fog")
    node = FogNode(FogConfig(data_dir=tmp_path / "fog", mqtt_port=broker.port, skew_s=10**10,
                             mqtt_security="lab"),
                   time.time)
    svc = FogService(node)
    svc.start()
    wait(svc.connected.is_set, what="fog connected")
    meter = Meter(broker.port, node.id_hex)
    apply_request(node, {"pub": meter.key.public_key.raw.hex(), "status": "active"})
    meter.send(1)
    wait(lambda: meter.acks == [1], what="the first ack")
    first = svc.link._proc
    assert first is not None
    first.kill()
    wait(lambda: svc.link._proc is not first and svc.connected.is_set(),
         what="a new MQTT process, connected")
    meter.send(2)
    meter.send(3)
    wait(lambda: meter.acks[-1:] == [3], what="acks through the new process")
    assert meter.acks == sorted(meter.acks)  # in order
    svc.stop()
    assert not svc.link.alive()
    meter.close()
    node.close()
