"""Virtual meters running the firmware's MQTT transport against a real mosquitto.

A small test fog (paho subscriber + the fog key signing acks and commands with the firmware
core) plays the fog node, which has its own tests; here the meter side is under test:
retained birth and status, the will, readings and backlog batches in seq order, spool
draining only on a valid fog ack, commands and results, and reconnecting after a broker
restart with nothing lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core import cbor, cose, keys
from core import messages as M
from hardware.virtual_meter import VirtualClock, VirtualMeter, make_meter
from tests.kit.meterkit import FOG, T0


class FogRecorder:
    """Records everything under grid/#; acks readings on request."""

    def __init__(self, port: int) -> None:
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-fog")
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *args: subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("grid/#", 1)
        self.c.loop_start()
        # the broker confirmed the subscription: nothing published from now on is missed
        assert subscribed.wait(60), "no SUBACK from the broker"

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.msgs if t.endswith(suffix)]

    def readings(self, dev_hex: str) -> list[bytes]:
        """Distinct readings in order of first arrival (a meter resends what is not acked)."""
        out: list[bytes] = []
        for payload in self.on(f"/d/{dev_hex}/reading"):
            out.extend(m for m in split_batch(payload) if m not in out)
        return out

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, 1).wait_for_publish(60)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def split_batch(payload: bytes) -> list[bytes]:
    """A single message, or a CBOR array of inline messages: return the raw messages."""
    if payload[0] == 0xD2:
        return [payload]
    n = payload[0] & 0x1F
    pos = 1
    if n == 24:
        n, pos = payload[1], 2
    out = []
    for _ in range(n):
        end = _item_end(payload, pos)
        out.append(payload[pos:end])
        pos = end
    assert pos == len(payload)
    return out


def _item_end(data: bytes, pos: int) -> int:
    # find where the tagged COSE item starting at pos ends by decoding growing prefixes
    for end in range(pos + 1, len(data) + 1):
        try:
            cbor.decode(data[pos:end], (18,))
            return end
        except cbor.CBORError:
            continue
    raise AssertionError("no complete item")


def wait(cond: Callable[[], bool], timeout: float = 60.0, tick: Callable[[], None] | None = None) -> None:
    """Until cond(); the timeout is a limit on a hang, never a margin a loaded host eats."""
    deadline = time.monotonic() + timeout
    while not cond():
        if tick:
            tick()
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def mqtt_meter(tmp_path: Any, port: int, clock: VirtualClock, index: int = 0) -> VirtualMeter:
    cfg = {"transport": "mqtt", "mqtt_host": "127.0.0.1", "mqtt_port": port, "fog": FOG.id.hex(),
           "fog_pub": FOG.pub.hex(), "source": "sim"}
    return make_meter(index, tmp_path / f"m{index}", clock, cfg)


def ack_for(vm: VirtualMeter, seq: int) -> bytes:
    stored = vm.app.meter.spool.get(seq)
    return cose.sign1(FOG, M.ack(vm.app.meter.id, seq, cose.digest(stored), T0, FOG.id))


def test_birth_status_readings_and_acks_over_a_real_broker(tmp_path, broker):
    fog = FogRecorder(broker.port)
    clock = VirtualClock(T0 - 5, 900.0)  # one interval per real second
    vm = mqtt_meter(tmp_path, broker.port, clock)
    dev = vm.id_hex
    wait(lambda: len(fog.on(f"/d/{dev}/birth")) == 1 and fog.on(f"/d/{dev}/status") == [b"online"])
    b = cose.verify(fog.on(f"/d/{dev}/birth")[0], keys.VerifyingKey(vm.app.meter.key.pub)).fields
    assert b[0] == M.BIRTH and b[16] == FOG.id
    wait(lambda: len(fog.readings(dev)) >= 3, tick=vm.app.step)
    got = fog.readings(dev)
    assert [cose.parse(m).fields[2] for m in got[:3]] == [1, 2, 3]
    assert len(vm.app.meter.spool) >= 3  # PUBACK is not an ack: nothing dropped yet
    fog.publish(f"grid/f/{FOG.id.hex()}/ack/{dev}", ack_for(vm, 3))
    wait(lambda: vm.app.meter.spool.acked == 3, tick=vm.app.step)
    # a forged ack is ignored and counted
    forged = cose.sign1(keys.SigningKey(5), M.ack(vm.app.meter.id, 4, b"\0" * 32, T0, FOG.id))
    fog.publish(f"grid/f/{FOG.id.hex()}/ack/{dev}", forged)
    wait(lambda: vm.app.meter.stats["ack_rejected"] == 1, tick=vm.app.step)
    assert vm.app.meter.spool.acked == 3
    vm.app.transport.close()
    fog.close()


def test_backlog_goes_out_as_batches_in_seq_order_after_a_broker_outage(tmp_path, broker):
    clock = VirtualClock(T0 - 5, 900.0)
    vm = mqtt_meter(tmp_path, broker.port, clock)
    dev = vm.id_hex
    broker.stop()
    wait(lambda: len(vm.readings) >= 4, tick=vm.app.step)  # measuring goes on while offline
    assert not vm.app.transport.connected()
    broker.start()
    fog = FogRecorder(broker.port)
    wait(lambda: len(fog.readings(dev)) >= 4, timeout=60, tick=vm.app.step)
    batches = fog.on(f"/d/{dev}/reading")
    assert batches[0][0] & 0xE0 == 0x80  # a CBOR array: the backlog
    seqs = [cose.parse(m).fields[2] for m in fog.readings(dev)]
    assert seqs[:4] == [1, 2, 3, 4]
    vm.app.transport.close()
    fog.close()


def test_will_marks_the_meter_offline_when_its_link_drops(tmp_path, broker):
    clock = VirtualClock(T0 - 5, 1.0)
    vm = mqtt_meter(tmp_path, broker.port, clock)
    fog = FogRecorder(broker.port)
    dev = vm.id_hex
    wait(lambda: fog.on(f"/d/{dev}/status")[-1:] == [b"online"])
    vm.app.transport._down()  # the link drops without a DISCONNECT
    wait(lambda: fog.on(f"/d/{dev}/status")[-1:] == [b"offline"])
    wait(lambda: fog.on(f"/d/{dev}/status")[-1:] == [b"online"], timeout=60, tick=vm.app.step)
    fog.close()


def test_command_over_mqtt_is_executed_and_answered(tmp_path, broker):
    clock = VirtualClock(T0 - 5, 1.0)
    vm = mqtt_meter(tmp_path, broker.port, clock)
    fog = FogRecorder(broker.port)
    dev = vm.id_hex
    cmd = cose.sign1(FOG, M.command(vm.app.meter.id, 1, "relay", {1: False}, T0 + 3600, b"", FOG.id))
    fog.publish(f"grid/f/{FOG.id.hex()}/cmd/{dev}", cmd)
    wait(lambda: len(fog.on(f"/d/{dev}/result")) == 1, tick=vm.app.step)
    r = cose.verify(fog.on(f"/d/{dev}/result")[0], keys.VerifyingKey(vm.app.meter.key.pub)).fields
    assert (r[2], r[3]) == (1, M.RESULT_DONE) and vm.board.relay() is False
    vm.app.transport.close()
    fog.close()


def test_acks_sent_while_the_meter_was_away_reach_it(tmp_path, broker):
    clock = VirtualClock(T0 - 5, 900.0)
    vm = mqtt_meter(tmp_path, broker.port, clock)
    fog = FogRecorder(broker.port)
    dev = vm.id_hex
    wait(lambda: len(fog.readings(dev)) >= 2, tick=vm.app.step)
    a = ack_for(vm, 2)
    vm.app.transport.close()  # clean disconnect; the session persists at the broker
    fog.publish(f"grid/f/{FOG.id.hex()}/ack/{dev}", a)
    vm.app.transport._retry_at = 0
    wait(lambda: vm.app.meter.spool.acked == 2, tick=vm.app.step)
    fog.close()
