"""The fog and its meters on a secure broker (issue 13, docs/PROTOCOL.md section 21): a real
mosquitto that includes the files the fog generates, a running fog node (TLS, its own
credentials, broker reloads through broker_pid_file) and virtual meters running the
firmware's MQTT transport over TLS with the CA pinned and the password born in their flash.

Readings and acks flow end to end; enrolling and revoking meters while the node runs (the
way `fog_node enroll|revoke` hands decisions to it) lets a meter in and cuts one off at once,
and no other meter even notices; the fog itself trusts only its CA and its own password."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fog_node import __main__ as fog_cli
from fog_node.config import FogConfig
from fog_node.enrollment import queue_request
from fog_node.node import FogNode, init_data_dir
from fog_node.service import FogService
from hardware.virtual_meter import VirtualMeter
from meterledger.infra import pki
from tests.kit.fogkit import (
    ManualClock,
    enroll_request,
    logged_readings,
    mqtt_meters,
    secure_broker,
    secure_config,
    wait,
)

T0 = 1_800_000_000


def stats(vm: VirtualMeter) -> dict[str, int]:
    return dict(vm.app.transport.stats)


def test_readings_flow_over_tls_and_enrollment_changes_leave_other_meters_alone(
        tmp_path: Path) -> None:
    config = secure_config(tmp_path, seal_period_s=0.2)
    key = init_data_dir(config.data_dir)
    clock = ManualClock(T0 - 10)
    with secure_broker(tmp_path, config, key.id.hex()):
        node = FogNode(config, clock.now)
        svc = FogService(node, clock.now)
        svc.start()
        meters: list[VirtualMeter] = []
        try:
            wait(svc.connected.is_set, what="the fog connected over TLS")
            ca = node.access.ca_cert.read_text()
            meters = mqtt_meters(tmp_path, 3, config.mqtt_tls_port, node.key, clock, ca=ca)
            first, second, late = meters
            for vm in (first, second):  # as `fog_node enroll` does while the node runs
                queue_request(config.data_dir, enroll_request(vm))

            def tick(*which: VirtualMeter) -> None:
                clock.advance(10)  # past the meters' reconnect backoff, an interval per 90
                for vm in which or meters:
                    vm.app.step()

            wait(lambda: first.app.meter.spool.acked >= 2 and second.app.meter.spool.acked >= 2,
                 tick=tick, what="two readings of each enrolled meter acked")
            assert stats(late)["connects"] == 0 and not late.app.transport.connected()
            assert stats(first)["connects"] == stats(second)["connects"] == 1
            kept = stats(second)

            # the operator revokes the first meter and enrolls the late one
            queue_request(config.data_dir, enroll_request(first, "revoked"))
            queue_request(config.data_dir, enroll_request(late))
            wait(lambda: not first.app.transport.connected(), tick=lambda: tick(first),
                 what="the revoked meter cut off")
            wait(lambda: late.app.meter.spool.acked >= 2, tick=tick,
                 what="the late meter's readings acked")
            acked = second.app.meter.spool.acked
            wait(lambda: second.app.meter.spool.acked >= acked + 2, tick=tick,
                 what="the kept meter goes on")
            assert stats(second)["connects"] == kept["connects"], "the kept meter reconnected"
            assert stats(second)["failures"] == kept["failures"], "the kept meter lost its link"
            # the revoked meter keeps trying, and is refused each time
            tries = stats(first)
            wait(lambda: stats(first)["failures"] > tries["failures"] + 1, tick=tick,
                 what="two refused reconnects")
            assert stats(first)["connects"] == tries["connects"]
        finally:
            for vm in meters:
                vm.app.transport.close()
            svc.stop()
        counts = logged_readings(node.log)
        assert set(counts.values()) == {1}
        top = max(s for d, s in counts if d == first.app.meter.id)
        assert first.app.meter.st["seq"] > top, "readings after the revocation never arrived"
        node.close()


def test_enroll_from_the_command_line_reloads_the_broker_its_config_names(
        tmp_path: Path) -> None:
    config = secure_config(tmp_path)
    key = init_data_dir(config.data_dir)
    toml = tmp_path / "fog.toml"
    toml.write_text(f'mqtt_tls_port = {config.mqtt_tls_port}\n'
                    f'broker_pid_file = "{config.broker_pid_file}"\n')
    clock = ManualClock(T0 - 10)
    with secure_broker(tmp_path, config, key.id.hex()) as broker:
        ca = (config.data_dir / "broker" / "ca.crt").read_text()
        (vm,) = mqtt_meters(tmp_path, 1, config.mqtt_tls_port, key, clock, ca=ca)
        try:
            assert not vm.app.transport.connected()  # refused: not enrolled
            reloads = broker.reloads()
            secret_file = tmp_path / "meter-000" / "mqtt.secret"
            assert fog_cli.main(["enroll", "--data-dir", str(config.data_dir), "--config",
                                 str(toml), "--pub", bytes(vm.app.meter.key.pub).hex(),
                                 "--mqtt-secret-file", str(secret_file)]) == 0
            wait(lambda: broker.reloads() > reloads, what="the broker reloaded")

            def tick() -> None:
                clock.advance(5)
                vm.app.step()

            wait(vm.app.transport.connected, tick=tick, what="the enrolled meter connected")
            reloads = broker.reloads()
            assert fog_cli.main(["revoke", "--data-dir", str(config.data_dir), "--config",
                                 str(toml), "--pub", bytes(vm.app.meter.key.pub).hex(),
                                 "--reason", "stolen"]) == 0
            wait(lambda: broker.reloads() > reloads, what="the broker reloaded")
            wait(lambda: not vm.app.transport.connected(), tick=vm.app.step,
                 what="the revoked meter cut off")
        finally:
            vm.app.transport.close()


@pytest.mark.parametrize("wrong", ["ca", "password"])
def test_the_fog_trusts_only_its_ca_and_logs_in_only_with_its_password(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], wrong: str) -> None:
    config = secure_config(tmp_path)
    key = init_data_dir(config.data_dir)
    if wrong == "ca":
        pki.save_cert(pki.new_ca("not the fog's CA").cert, tmp_path / "other-ca.crt")
        config = dataclasses.replace(config, mqtt_ca_file=str(tmp_path / "other-ca.crt"))
        expected = "certificate verify failed"
    else:
        (tmp_path / "guess").write_text("0" * 64 + "\n")
        config = dataclasses.replace(config, mqtt_password_file=str(tmp_path / "guess"))
        expected = "refused: Not authorized"
    # the broker's files as the fog's init made them (the fog's real password in passwd)
    right = FogConfig(data_dir=config.data_dir, mqtt_tls_port=config.mqtt_tls_port)
    with secure_broker(tmp_path, right, key.id.hex()):
        node = FogNode(dataclasses.replace(config, broker_pid_file=""), lambda: float(T0))
        svc = FogService(node)
        svc.start()
        seen: list[str] = []

        def said() -> bool:
            seen.append(capfd.readouterr().err)  # the MQTT process's stderr is the test's
            return expected in "".join(seen)

        try:
            wait(said, what=f"the MQTT process to say {expected!r}")
            assert not svc.connected.is_set()
        finally:
            svc.stop()
            node.close()
