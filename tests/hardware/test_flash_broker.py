"""tools.flash for an MQTT meter on a secure broker (issue 13, docs/PROTOCOL.md section 21):
the image pins the fog's CA, the meter's broker password is born in its data dir and only
its hash reaches the fog, and a meter booted from the image gets its readings acked over TLS."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from fog_node.broker_access import check_password
from fog_node.node import FogNode, init_data_dir
from fog_node.service import FogService
from hardware.virtual_meter import make_meter
from meterledger.infra import pki
from tests.hardware.test_flash import _flash, printed_id
from tests.kit.fogkit import ManualClock, secure_broker, secure_config, wait

T0 = 1_800_000_000


def test_an_mqtt_image_pins_the_ca_and_its_meter_is_acked_over_tls(tmp_path: Path) -> None:
    config = secure_config(tmp_path, seal_period_s=0.2)
    fog_key = init_data_dir(config.data_dir)
    image = tmp_path / "image"
    r = _flash(["--board", "esp32", "--target", str(image), "--fog-data", str(config.data_dir),
                "--enroll", "--transport", "mqtt", "--mqtt-host", "127.0.0.1", "--mqtt-port",
                str(config.mqtt_tls_port), "--set", "dur=900"])
    assert r["rc"] == 0, r
    assert "only its hash goes on" in r["out"]
    mid = printed_id(r["out"])
    cfg = json.loads((image / "config.json").read_text())
    ca = (config.data_dir / "broker" / "ca.crt").read_text()
    assert cfg["mqtt_ca"] == ca and pki.load_cert(config.data_dir / "broker" / "ca.crt")
    secret_file = image / "data" / "mqtt.secret"
    secret = secret_file.read_text().strip()
    assert len(secret) == 64 and stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    # the fog holds the hash of the password, never the password
    recorded = json.loads((config.data_dir / "broker" / "access.json").read_text())["meters"]
    assert set(recorded) == {mid} and check_password(secret, recorded[mid])
    holders = [p.relative_to(tmp_path) for p in tmp_path.rglob("*")
               if p.is_file() and secret.encode() in p.read_bytes()]
    assert holders == [Path("image/data/mqtt.secret")]
    assert secret not in r["out"] + r["err"]

    # the meter boots from the image (its config.json, its flash) and talks TLS to the fog
    clock = ManualClock(T0 - 30)
    with secure_broker(tmp_path, config, fog_key.id.hex()):
        node = FogNode(config, clock.now)
        svc = FogService(node, clock.now)
        svc.start()
        meter_clock: Any = clock
        vm = make_meter(0, image / "data", meter_clock, cfg)
        try:
            assert vm.app.meter.id.hex() == mid and vm.mqtt_secret == secret
            assert vm.app.transport.port == config.mqtt_tls_port

            def tick() -> None:
                clock.advance(5)
                vm.app.step()

            wait(lambda: vm.app.meter.spool.acked >= 1, tick=tick, what="a reading acked")
            assert vm.app.transport.stats["connects"] == 1
        finally:
            vm.app.transport.close()
            svc.stop()
            node.close()


def test_reflashing_keeps_the_password_and_provisioning_files_carry_its_hash(
        tmp_path: Path) -> None:
    init_data_dir(tmp_path / "fog")
    prov = tmp_path / "p.json"
    args = ["--board", "rp2", "--target", str(tmp_path / "img"), "--fog-data",
            str(tmp_path / "fog"), "--transport", "mqtt", "--mqtt-host", "broker.lan",
            "--provisioning-out", str(prov)]
    assert _flash(args)["rc"] == 0
    secret = (tmp_path / "img" / "data" / "mqtt.secret").read_text().strip()
    first = json.loads(prov.read_text())["meters"][0]["mqtt_hash"]
    assert _flash(args)["rc"] == 0
    assert (tmp_path / "img" / "data" / "mqtt.secret").read_text().strip() == secret
    (entry,) = json.loads(prov.read_text())["meters"]
    assert check_password(secret, entry["mqtt_hash"]) and check_password(secret, first)


def test_mqtt_needs_a_ca_unless_it_is_a_lab(tmp_path: Path) -> None:
    pub = init_data_dir(tmp_path / "fog").public_key.raw.hex()
    base = ["--board", "esp32", "--target", str(tmp_path / "img"), "--fog-pub", pub,
            "--transport", "mqtt", "--mqtt-host", "h", "--dry-run"]
    r = _flash(base)
    assert r["rc"] == 2 and "needs the broker's CA" in r["err"]
    r = _flash([*base, "--mqtt-ca", str(tmp_path / "nope.crt")])
    assert r["rc"] == 2 and "no certificate at" in r["err"]
    r = _flash([*base, "--mqtt-ca", str(tmp_path / "fog" / "broker" / "ca.crt"),
                "--mqtt-tls-name", "broker.lan"])
    assert r["rc"] == 0, r
    note = next(ln for ln in r["out"].splitlines() if "config.json:" in ln)
    shown = json.loads(note.split("config.json: ", 1)[1])
    assert shown["mqtt_ca"].startswith("<PEM certificate")
    assert shown["mqtt_tls_name"] == "broker.lan"
    r = _flash([*base, "--mqtt-lab"])
    assert r["rc"] == 0, r
    note = next(ln for ln in r["out"].splitlines() if "config.json:" in ln)
    assert "mqtt_ca" not in json.loads(note.split("config.json: ", 1)[1])
    r = _flash([*base, "--mqtt-lab", "--mqtt-tls-name", "x"])
    assert r["rc"] == 2  # one or the other
