"""The firmware's MQTT transport on a secure broker (issue 13, docs/PROTOCOL.md section 21).

On the host the firmware's own transport code runs: its TLS context (transport_mqtt.
tls_context: the pinned CA, CERT_REQUIRED, the broker's name), through hardware/umqtt_paho.py
to a real mosquitto loading the files a fog generated. In the MicroPython VM (no network,
no ssl module there) the same module runs its password and lab-mode logic. Not covered
here, since nothing can run it: MicroPython's own ssl (mbedtls) handshake and umqtt.simple
on a board.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fog_node.node import init_data_dir
from hardware import umqtt_paho
from hardware.firmware import module
from hardware.mpvm import run_micropython
from hardware.virtual_meter import VirtualClock, make_meter
from meterledger.infra import pki
from tests.kit.fogkit import secure_broker, secure_config
from tests.kit.meterkit import FOG, T0

tm = module("transport_mqtt")


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A broker with the fog's TLS listener: its port and the fog's CA (PEM)."""
    config = secure_config(tmp_path)
    key = init_data_dir(config.data_dir)
    with secure_broker(tmp_path, config, key.id.hex()):
        yield config.mqtt_tls_port, (config.data_dir / "broker" / "ca.crt").read_text()


def connect(port: int, ca_pem: str, host: str = "127.0.0.1", name: str | None = None) -> Any:
    """The firmware's TLS context on the host client, as MqttTransport builds them."""
    c = umqtt_paho.factory(b"0123456789abcdef", host, port, 60,
                           ssl=tm.tls_context(ca_pem, name))
    c.set_callback(lambda t, m: None)
    c.connect(False)
    return c


def test_the_pinned_ca_and_the_broker_name_are_checked(secure: tuple[int, str]) -> None:
    port, ca = secure
    other = pki.cert_pem(pki.new_ca("another CA").cert)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        connect(port, other)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        connect(port, ca, host="127.0.0.2")  # this machine, not a name on the certificate
    # the handshake passes with the pinned CA; the broker then wants credentials
    with pytest.raises(OSError, match="refused: Not authorized"):
        connect(port, ca)
    # mqtt_tls_name: connect to one address, check the certificate for another name
    with pytest.raises(OSError, match="refused: Not authorized"):
        connect(port, ca, host="127.0.0.2", name="127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        connect(port, ca, name="broker.elsewhere")


def test_a_meter_without_a_ca_connects_plain_and_sends_no_password(tmp_path: Path) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(10)
            got.append(conn.recv(4096))  # the CONNECT packet, in the clear
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    clock = VirtualClock(T0 - 5, 1.0)
    vm = make_meter(0, tmp_path / "m", clock, {
        "transport": "mqtt", "mqtt_host": "127.0.0.1", "mqtt_port": port, "fog": FOG.id.hex(),
        "fog_pub": FOG.pub.hex(), "source": "sim"})
    t.join(10)
    srv.close()
    assert len(vm.mqtt_secret) == 64, "the meter has its broker password"
    (packet,) = got
    assert packet[0] == 0x10 and b"MQTT" in packet
    flags = packet[packet.index(b"MQTT") + 5]
    assert flags & 0xC0 == 0, "no user name, no password on a plain link"
    assert vm.mqtt_secret.encode() not in packet
    assert not vm.app.transport.connected()  # no CONNACK came


def test_the_broker_password_is_made_once_and_kept(tmp_path: Path) -> None:
    fs = module("core.fs").VfsFS(str(tmp_path / "flash"))
    first = tm.ensure_secret(fs, lambda n: bytes(range(n)))
    assert first == bytes(range(32)).hex()
    assert tm.ensure_secret(fs, lambda n: b"\xff" * n) == first  # kept across boots/flashes
    fs.write("mqtt.secret", b"torn")  # a power loss mid-write of a first one: made again
    assert tm.ensure_secret(fs, lambda n: b"\x01" * n) == "01" * 32
    assert tm.read_secret(module("core.fs").VfsFS(str(tmp_path / "empty"))) == ""


VM = """
import transport_mqtt as tm
from core.fs import VfsFS

class Board:
    def __init__(self): self._fs = VfsFS("/flash/data")
    def fs(self): return self._fs
    def random_bytes(self, n): return bytes(range(7, 7 + n))
    def ticks_ms(self): return 0

calls = []
class Client:
    def __init__(self, *a, **kw): calls.append(sorted(kw))
    def set_callback(self, f): pass
    def set_last_will(self, *a): pass
    def connect(self, clean): pass
    def subscribe(self, t, q): pass
    def publish(self, t, m, r, q): pass

b = Board()
s = tm.ensure_secret(b.fs(), b.random_bytes)
print("SECRET", s, tm.ensure_secret(b.fs(), b.random_bytes) == s)
lab = tm.MqttTransport(b, {"mqtt_host": "h", "fog": "00" * 8}, Client)
print("LAB", lab.port, lab.connect("0123456789abcdef", b"birth"), calls)
calls.clear()
tls = tm.MqttTransport(b, {"mqtt_host": "h", "fog": "00" * 8, "mqtt_ca": "PEM"}, Client)
print("TLS", tls.port, tls.connect("0123456789abcdef", b"birth"), calls, tls.stats["failures"])
"""


@pytest.mark.vm
def test_passwords_and_lab_mode_on_micropython() -> None:
    out = dict(line.split(" ", 1) for line in run_micropython(VM).splitlines())
    secret, again = out["SECRET"].split()
    assert secret == bytes(range(7, 39)).hex() and again == "True"
    # lab: port 1883, no credentials, no TLS
    assert out["LAB"] == "1883 True [[]]"
    # with a CA: port 8883; this VM has no ssl module, so the connect fails, counted, and
    # the meter goes on (it measures and spools; it never falls back to a plain link)
    assert out["TLS"] == "8883 False [] 1"
