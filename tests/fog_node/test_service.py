"""Meters -> mosquitto -> fog node -> acks -> meters, all real: the firmware's MQTT
transport, a real broker on loopback, the fog service on SQLite files."""

from __future__ import annotations

import time

from fog_node.config import FogConfig
from fog_node.enrollment import apply_request
from fog_node.node import FogNode, init_data_dir
from fog_node.service import FogService
from meterledger import wire as P
from meterledger.wire import merkle
from tests import merkle_reference as ref
from tests.kit.fogkit import ManualClock, logged_readings, mqtt_meters, wait

T0 = 1_800_000_000


def assert_each_reading_logged_once(node, meters):
    counts = logged_readings(node.log)
    assert set(counts.values()) == {1}, "a reading was logged twice"
    for vm in meters:
        top = vm.app.meter.st["seq"]
        assert top >= 3
        assert {s for (d, s) in counts if d == vm.app.meter.id} == set(range(1, top + 1))


def start_fog(tmp, port, clock):
    init_data_dir(tmp / "fog")
    node = FogNode(FogConfig(data_dir=tmp / "fog", mqtt_port=port, seal_period_s=0.2,
                             mqtt_security="lab"), clock)
    svc = FogService(node, clock)
    svc.start()
    wait(svc.connected.is_set, what="fog connected")
    return node, svc


def test_meters_to_fog_to_acks_and_proofs(tmp_path, broker):
    clock = ManualClock(T0 - 10)
    node, svc = start_fog(tmp_path, broker.port, clock.now)
    meters = mqtt_meters(tmp_path, 5, broker.port, node.key, clock)
    # the first two meters are enrolled only later: their readings wait in quarantine
    for vm in meters[2:]:
        apply_request(node, {"pub": vm.app.meter.key.pub.hex(), "status": "active"})

    def tick() -> None:
        for vm in meters:
            vm.app.step()

    for _ in range(3):  # three intervals
        clock.advance(900)
        tick()
    wait(lambda: all(vm.app.meter.spool.acked == 3 for vm in meters[2:]), tick=tick,
         what="acks for enrolled meters")
    assert all(vm.app.meter.spool.acked == 0 for vm in meters[:2])
    with node.lock:
        assert len(node.registry.quarantined()) >= 3
    for vm in meters[:2]:
        apply_request(node, {"pub": vm.app.meter.key.pub.hex(), "status": "active"})
    clock.advance(61)  # let the meters' resend timer run out too
    wait(lambda: all(len(vm.app.meter.spool) == 0 for vm in meters), tick=tick,
         what="every spool drained")
    svc.stop()
    assert_each_reading_logged_once(node, meters)
    # an inclusion proof against the latest signed checkpoint, checked by the reference
    with node.lock:
        cp = node.checkpoints.latest()
        assert cp is not None and cp.size == node.log.size()
        f = P.verify(cp.msg, node.key.public_key).fields
        leaf = next(i for i in range(node.log.size())
                    if P.parse(node.log.entry(i), schema=False).type == P.READING)
        proof = node.log.inclusion_proof(leaf, cp.size)
        assert ref.verify_inclusion(merkle.leaf_hash(node.log.entry(leaf)), leaf, cp.size,
                                    list(proof.path), f[4])
    node.close()


def test_broker_restart_while_meters_keep_measuring(tmp_path, broker):
    clock = ManualClock(T0 - 10)
    node, svc = start_fog(tmp_path, broker.port, clock.now)
    meters = mqtt_meters(tmp_path, 3, broker.port, node.key, clock)
    for vm in meters:
        apply_request(node, {"pub": vm.app.meter.key.pub.hex(), "status": "active"})

    def tick() -> None:
        for vm in meters:
            vm.app.step()

    clock.advance(900)
    tick()
    wait(lambda: all(vm.app.meter.spool.acked == 1 for vm in meters), tick=tick, what="first acks")
    broker.stop()
    wait(lambda: not svc.connected.is_set(), what="fog noticed the broker is gone")
    for _ in range(4):  # four intervals while the broker is down
        clock.advance(900)
        tick()
    assert all(len(vm.app.meter.spool) == 4 for vm in meters)
    broker.start()
    wait(svc.connected.is_set, what="fog reconnected")

    def tick_and_age() -> None:
        clock.advance(5)  # meter uptime drives its reconnect backoff and resends
        tick()
        time.sleep(0.01)

    wait(lambda: all(vm.app.meter.spool.acked >= 5 for vm in meters), timeout=60,
         tick=tick_and_age, what="backlog acked after the broker came back")
    svc.stop()
    assert_each_reading_logged_once(node, meters)
    node.close()
