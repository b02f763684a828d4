"""A firmware image waits whole at the broker for a meter that is away (docs/PROTOCOL.md
section 22): a real mosquitto configured as a stock install is (no max_queued_messages of
its own: 1000) plus the fragment the fog generates (fog_node/broker_access.py), a meter's
persistent session, and the image's real MQTT chunks published by the fog's user while the
meter is offline. With the fragment's max_queued_messages every chunk is there when the
meter comes back; without it the broker drops the end of the image."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fog_node import ota as O
from fog_node.broker_access import BrokerAccess, hash_password
from fog_node.node import init_data_dir
from hardware.broker import Mosquitto
from meterledger import wire as P
from tests.kit.fogkit import secure_config, wait

REL = P.SigningKey.from_int(0x5EED_0F_7E1EA5E)
METER = P.SigningKey.from_int(0xA1F0)
PASSWORD = "meter-password-" + "x" * 40


class StockMosquitto(Mosquitto):
    """mosquitto as a distribution configures it: its queue limit is mosquitto's default."""

    def _command(self) -> list[str]:
        cmd = super()._command()
        conf = self.workdir / "mosquitto.conf"
        lines = conf.read_text().splitlines(keepends=True)
        conf.write_text("".join(ln for ln in lines if not ln.startswith("max_queued_messages")))
        return cmd


class Client:
    def __init__(self, access: BrokerAccess, port: int, user: str, password: str) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, clean_session=False,
                             protocol=mqtt.MQTTv311)
        self.c.tls_set_context(ssl.create_default_context(cafile=str(access.ca_cert)))
        self.c.username_pw_set(user, password)
        self.got: list[bytes] = []
        self.lock = threading.Lock()
        self.up = threading.Event()
        self.c.on_connect = lambda c, u, f, r, p: self.up.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        wait(self.up.is_set, 10, what="CONNACK")

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append(bytes(msg.payload))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize("fragment", ["as generated", "without its max_queued_messages"])
def test_an_image_waits_whole_for_a_meter_that_is_away(tmp_path: Path, fragment: str) -> None:
    config = secure_config(tmp_path)
    key = init_data_dir(config.data_dir)
    access = BrokerAccess(config, key.id.hex())
    access.grant(METER.id.hex(), hash_password(PASSWORD))
    access.write()
    conf = access.conf.read_text()
    assert f"max_queued_messages {O.BROKER_QUEUE}\n" in conf
    if fragment != "as generated":
        access.conf.write_text(conf.replace(f"max_queued_messages {O.BROKER_QUEUE}\n", ""))
    img = O.parse_image(O.sign(O.build("0.2.0", [("app.py", b"#" * 1_200_000)], "", 1), REL))
    frames = O.chunks(img, O.MQTT_CHUNK)
    assert 1000 < len(frames) <= O.MQTT_MAX_CHUNKS  # more than mosquitto queues by default
    topic = f"grid/f/{key.id.hex()}/fw/{METER.id.hex()}"
    with StockMosquitto(tmp_path / "broker", port=config.mqtt_tls_port, include_dir=access.dir):
        meter = Client(access, config.mqtt_tls_port, METER.id.hex(), PASSWORD)
        acked: list[int] = []
        meter.c.on_subscribe = lambda c, u, m, rc, p: acked.append(m)
        _, mid = meter.c.subscribe(topic, 1)
        wait(lambda: mid in acked, 10, what="SUBACK")
        meter.close()  # away; its session stays
        fog = Client(access, config.mqtt_tls_port, f"fog-{key.id.hex()}",
                     (access.dir / "fog.secret").read_text().strip())
        infos = [fog.c.publish(topic, f, 1) for f in frames]
        wait(lambda: all(i.is_published() for i in infos), 60, what="the broker has them")
        meter = Client(access, config.mqtt_tls_port, METER.id.hex(), PASSWORD)
        wait(lambda: len(meter.got) >= 1000, 60, what="what the broker kept")
        # after whatever the broker kept, in order: once it arrives, the rest has
        fog.c.publish(topic, b"end", 1).wait_for_publish(10)
        wait(lambda: b"end" in meter.got, 60, what="the meter's queue")
        meter.close()
        fog.close()
    got = [f for f in meter.got if f != b"end"]
    if fragment == "as generated":
        assert got == frames
        assert b"".join(f[12:] for f in got) == img.blob
    else:  # the proof the setting matters: a stock broker keeps the first 1000 only
        assert got == frames[:1000]
