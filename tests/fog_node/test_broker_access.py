"""Who may read and write on the broker (issue 13, docs/PROTOCOL.md section 21): the CA and
its files, the generated password, ACL and listener files, and a real mosquitto 2.0 that
loads them: anonymous and wrong credentials refused, TLS trust pinned, a meter confined to
its own topics, a revoked meter cut off at the reload while every other meter, connected or
not, keeps its connection and its session."""

from __future__ import annotations

import dataclasses
import datetime
import grp
import json
import shutil
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

from fog_node.broker_access import (
    AccessError,
    BrokerAccess,
    check_password,
    hash_error,
    hash_password,
    meter_acl,
)
from fog_node.config import FogConfig
from fog_node.enrollment import apply_request
from fog_node.node import FogError, FogNode, init_data_dir
from hardware.broker import Mosquitto
from meterledger import wire as P
from meterledger.infra import pki
from tests.kit.fogkit import secure_broker, secure_config, wait

A, B, C, D = (P.SigningKey.from_int(0xA100 + i) for i in range(4))
PASSWORDS = {k.id.hex(): f"pw-{i}-" + "x" * 40 for i, k in enumerate((A, B, C, D))}


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -- password hashes --------------------------------------------------------------------------
def test_hashes_are_mosquitto_passwd_hashes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    assert tool, "mosquitto_passwd comes with mosquitto"
    subprocess.run([tool, "-b", "-c", str(tmp_path / "pw"), "meter", "s3cret"], check=True)
    theirs = (tmp_path / "pw").read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$") and hash_error(theirs) is None
    assert check_password("s3cret", theirs) and not check_password("s3cret!", theirs)
    ours = hash_password("s3cret")
    assert hash_error(ours) is None and ours != hash_password("s3cret")  # a fresh salt each
    assert check_password("s3cret", ours) and not check_password("other", ours)
    fixed = hash_password("s3cret", salt=bytes(range(12)), iterations=101)
    assert fixed.startswith("$7$101$AAECAwQFBgcICQoL$") and len(fixed.split("$")[4]) == 88


@pytest.mark.parametrize("bad", [
    "", "$6$abc$def", "$7$101$AAECAwQFBgcICQoL$" + "A" * 86,   # short digest
    "$7$101$AAECAwQFBgcI$" + "A" * 86 + "==",                   # 9-byte salt
    hash_password("x") + "\nintruder:" + hash_password("y"),     # a second line
    hash_password("x") + ":", "$7$0$AAECAwQFBgcICQoL$" + "A" * 86 + "==",
])
def test_hashes_that_would_break_the_password_file_are_refused(bad: str) -> None:
    assert hash_error(bad) is not None


def test_an_enrollment_with_a_bad_hash_changes_nothing(tmp_path: Path) -> None:
    init_data_dir(tmp_path / "fog")
    node = FogNode(FogConfig(data_dir=tmp_path / "fog"), lambda: 1.8e9)
    try:
        with pytest.raises(FogError, match="mqtt_hash"):
            apply_request(node, {"pub": A.public_key.raw.hex(), "status": "active",
                                 "mqtt_hash": "$7$1$x$y\nfog-x:$7$"})
        assert node.registry.device(A.id) is None and node.access.meters() == {}
    finally:
        node.close()


# -- the CA ------------------------------------------------------------------------------------
def test_ca_server_and_client_certificates(tmp_path: Path) -> None:
    ca = pki.new_ca("test CA")
    server = pki.issue_server(ca, ["broker.example", "10.0.0.2", "::1"])
    client = pki.issue_client(ca, A.id.hex())
    pki.save(ca, tmp_path / "ca.crt", tmp_path / "ca.key")
    pki.save(server, tmp_path / "s.crt", tmp_path / "s.key")
    assert mode(tmp_path / "ca.key") == 0o600 and mode(tmp_path / "s.key") == 0o600
    assert mode(tmp_path / "ca.crt") == 0o644
    loaded = pki.load(tmp_path / "s.crt", tmp_path / "s.key")
    assert loaded.cert == server.cert and loaded.name == "broker.example"
    san = loaded.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.2", "::1"]
    assert pki.verify_issued(ca.cert, server.cert) and pki.verify_issued(ca.cert, client.cert)
    assert not pki.verify_issued(pki.new_ca("other").cert, server.cert)
    basic = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    eku = client.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        A.id.hex()
    now = datetime.datetime.now(datetime.UTC)
    assert server.cert.not_valid_before_utc < now < server.cert.not_valid_after_utc
    with pytest.raises(pki.PKIError, match="not the key of"):
        pki.load(tmp_path / "s.crt", tmp_path / "ca.key")
    with pytest.raises(pki.PKIError, match="no private key"):
        pki.load_key(tmp_path / "missing.key")
    for bad in (["a b"], [], ["x/y"]):
        with pytest.raises(ValueError):
            pki.check_names(bad)


# -- the generated files ------------------------------------------------------------------------
def granted(tmp_path: Path, **settings: Any) -> BrokerAccess:
    config = FogConfig(data_dir=tmp_path / "fog", mqtt_tls_port=18883, **settings)
    key = init_data_dir(config.data_dir)
    access = BrokerAccess(config, key.id.hex())
    for k in (A, B):
        assert access.grant(k.id.hex(), hash_password(PASSWORDS[k.id.hex()]))
    return access


def test_files_hold_each_party_with_its_hash_and_topics(tmp_path: Path) -> None:
    access = granted(tmp_path)
    fog = access.fog_hex
    users = dict(line.split(":", 1) for line in access.passwd.read_text().splitlines())
    assert set(users) == {f"fog-{fog}", f"probe-{fog}", A.id.hex(), B.id.hex()}
    assert check_password((access.dir / "fog.secret").read_text().strip(), users[f"fog-{fog}"])
    assert check_password(PASSWORDS[A.id.hex()], users[A.id.hex()])
    assert not check_password(PASSWORDS[A.id.hex()], users[B.id.hex()])
    blocks: dict[str, list[str]] = {}
    user = ""
    for line in access.acl.read_text().splitlines():
        if line.startswith("user "):
            user = line[5:]
        elif line.startswith("topic "):
            blocks.setdefault(user, []).append(line)
    assert "" not in blocks, "no topic for anonymous clients"
    assert f"probe-{fog}" not in blocks, "nor for the probe user"
    assert blocks[A.id.hex()] == meter_acl("grid", fog, A.id.hex()) == [
        f"topic write grid/d/{A.id.hex()}/#", f"topic read grid/f/{fog}/ack/{A.id.hex()}",
        f"topic read grid/f/{fog}/cmd/{A.id.hex()}", f"topic read grid/f/{fog}/fw/{A.id.hex()}"]
    assert blocks[f"fog-{fog}"] == ["topic read grid/d/#", f"topic readwrite grid/f/{fog}/#"]
    for p in (access.passwd, access.acl, access.record, access.ca_key, access.server_key,
              access.dir / "fog.secret"):
        assert mode(p) == 0o600, p
    conf = access.conf.read_text().splitlines()
    for line in ("allow_anonymous false", "per_listener_settings false", "listener 18883",
                 f"password_file {access.passwd}", f"acl_file {access.acl}",
                 f"cafile {access.ca_cert}", f"certfile {access.server_cert}",
                 f"keyfile {access.server_key}", "tls_version tlsv1.2",
                 "use_username_as_clientid true"):
        assert line in conf, line
    assert sum(ln.startswith("listener ") for ln in conf) == 1, "no plain listener"
    # the record is the truth: a revocation rewrites both files without the meter
    assert access.revoke(A.id.hex()) and not access.revoke(A.id.hex())
    assert A.id.hex() not in access.passwd.read_text() + access.acl.read_text()
    assert json.loads(access.record.read_text())["meters"].keys() == {B.id.hex()}


def test_lab_mode_adds_an_anonymous_plain_listener(tmp_path: Path) -> None:
    access = granted(tmp_path, mqtt_security="lab", mqtt_port=11883, broker_listen="127.0.0.1")
    conf = access.conf.read_text().splitlines()
    assert "allow_anonymous true" in conf
    assert [ln for ln in conf if ln.startswith("listener ")] == ["listener 18883 127.0.0.1",
                                                                 "listener 11883 127.0.0.1"]
    acl = access.acl.read_text().split("\nuser ")[0]
    assert "topic readwrite grid/#" in acl  # anonymous clients: the root, nothing else


def test_broker_group_gets_the_files_the_broker_reads(tmp_path: Path) -> None:
    gid = grp.getgrnam("mosquitto").gr_gid  # the mosquitto package makes the group
    access = granted(tmp_path, broker_group="mosquitto")
    for p in (access.passwd, access.acl, access.server_key):
        assert (p.stat().st_gid, mode(p)) == (gid, 0o640), p
    for p in (access.ca_key, access.record, access.dir / "fog.secret"):
        assert p.stat().st_gid != gid and mode(p) == 0o600, p
    with pytest.raises(AccessError, match="no such group"):
        BrokerAccess(FogConfig(data_dir=tmp_path / "fog", broker_group="no-such-grp"),
                     access.fog_hex).write()


# -- a real mosquitto ---------------------------------------------------------------------------
@dataclass
class Stack:
    access: BrokerAccess
    broker: Mosquitto
    port: int

    @property
    def fog_hex(self) -> str:
        return self.access.fog_hex

    def fog_password(self) -> str:
        return (self.access.dir / "fog.secret").read_text().strip()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    config = secure_config(tmp_path)
    key = init_data_dir(config.data_dir)
    access = BrokerAccess(config, key.id.hex())
    for k in (A, B, C):
        access.grant(k.id.hex(), hash_password(PASSWORDS[k.id.hex()]))
    with secure_broker(tmp_path, config, key.id.hex()) as broker:
        yield Stack(access, broker, config.mqtt_tls_port)


class Client:
    """A paho client (its own network thread) that records CONNACKs, disconnects, SUBACKs
    and messages."""

    def __init__(self, stack: Stack, user: str | None, password: str | None = None,
                 ca: Path | None = None, host: str = "127.0.0.1", clean: bool = False) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user or "anonymous",
                             clean_session=clean, protocol=mqtt.MQTTv311)
        self.c.tls_set_context(ssl.create_default_context(cafile=str(ca or stack.access.ca_cert)))
        if user is not None:
            self.c.username_pw_set(user, password)
        self.connacks: list[str] = []
        self.disconnects = 0
        self.subacks: dict[int, list[int]] = {}
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c.on_connect = lambda c, u, f, r, p: self.connacks.append(str(r))
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.__setitem__(
            mid, [r.value for r in rcs])
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(60, 60)  # paho would retry on its own: once is what we test
        self.c.connect(host, stack.port, 30)
        self.c.loop_start()
        wait(lambda: bool(self.connacks), 10, what="CONNACK")

    def _on_disconnect(self, *_: Any) -> None:
        self.disconnects += 1

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    @property
    def accepted(self) -> bool:
        return self.connacks == ["Success"]

    def got(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def subscribe(self, topic: str) -> list[int]:
        _, mid = self.c.subscribe(topic, 1)
        assert mid is not None
        wait(lambda: mid in self.subacks, 10, what=f"SUBACK for {topic}")
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, 1, retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def meter(stack: Stack, k: P.SigningKey, **kw: Any) -> Client:
    return Client(stack, k.id.hex(), PASSWORDS[k.id.hex()], **kw)


def fog(stack: Stack) -> Client:
    return Client(stack, f"fog-{stack.fog_hex}", stack.fog_password())


def test_anonymous_and_wrong_credentials_are_refused(stack: Stack) -> None:
    assert Client(stack, None).connacks == ["Not authorized"]
    assert Client(stack, A.id.hex(), PASSWORDS[B.id.hex()]).connacks == ["Not authorized"]
    assert Client(stack, D.id.hex(), PASSWORDS[D.id.hex()]).connacks == ["Not authorized"]
    assert Client(stack, "", "").connacks != ["Success"]
    ok = [meter(stack, A), fog(stack)]
    assert all(c.accepted for c in ok)
    for c in ok:
        c.close()


def test_clients_trust_only_the_pinned_ca_and_the_broker_name(stack: Stack, tmp_path: Path,
                                                              ) -> None:
    other = pki.new_ca("someone else's CA")
    pki.save_cert(other.cert, tmp_path / "other.crt")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        meter(stack, A, ca=tmp_path / "other.crt")
    # 127.0.0.2 is this machine too, but not a name on the broker's certificate
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        meter(stack, A, host="127.0.0.2")
    # and the broker speaks nothing but TLS on its port
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=A.id.hex())
    plain.username_pw_set(A.id.hex(), PASSWORDS[A.id.hex()])
    plain.connect("127.0.0.1", stack.port, 30)
    rc = mqtt.MQTT_ERR_SUCCESS
    for _ in range(100):  # the broker drops the connection: its TLS handshake cannot start
        rc = plain.loop(0.1)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            break
    assert rc != mqtt.MQTT_ERR_SUCCESS and not plain.is_connected()


def test_a_meter_reads_and_writes_only_its_own_topics(stack: Stack) -> None:
    f, a, b = fog(stack), meter(stack, A), meter(stack, B)
    root, fh, ah, bh = "grid", stack.fog_hex, A.id.hex(), B.id.hex()
    checkpoint = f"{root}/f/{fh}/checkpoint"
    f.publish(checkpoint, b"the fog's checkpoint", retain=True)
    assert f.subscribe(f"{root}/d/#") == [1]
    assert b.subscribe(f"{root}/f/{fh}/ack/{bh}") == [1]
    assert a.subscribe(f"{root}/f/{fh}/ack/{ah}") == [1]
    # A asks for everything else; whatever the SUBACKs say, nothing may reach it
    for t in (f"{root}/#", f"{root}/f/{fh}/ack/{bh}", f"{root}/f/{fh}/cmd/{bh}",
              f"{root}/d/{bh}/reading", checkpoint, "$SYS/#"):
        a.subscribe(t)
    # A's forgeries: B's reading, an ack to B, the fog's retained checkpoint
    a.publish(f"{root}/d/{bh}/reading", b"forged reading")
    a.publish(f"{root}/f/{fh}/ack/{bh}", b"forged ack")
    a.publish(checkpoint, b"forged checkpoint", retain=True)
    a.publish(f"{root}/d/{ah}/reading", b"A's own reading")  # published after the forgeries
    wait(lambda: f.got(f"{root}/d/{ah}/reading") == [b"A's own reading"], what="A's reading")
    assert f.got(f"{root}/d/{bh}/reading") == []
    # what the others publish, and a last ack to A: everything before it was delivered first
    b.publish(f"{root}/d/{bh}/reading", b"B's reading")
    wait(lambda: f.got(f"{root}/d/{bh}/reading") == [b"B's reading"], what="B's reading")
    f.publish(f"{root}/f/{fh}/ack/{bh}", b"ack for B")
    f.publish(f"{root}/f/{fh}/cmd/{bh}", b"cmd for B")
    f.publish(f"{root}/f/{fh}/ack/{ah}", b"ack for A")
    wait(lambda: a.got(f"{root}/f/{fh}/ack/{ah}") == [b"ack for A"], what="A's ack")
    wait(lambda: b.got(f"{root}/f/{fh}/ack/{bh}") == [b"ack for B"], what="B's ack")
    with a.lock:
        assert [(t, p) for t, p, _ in a.messages] == [(f"{root}/f/{fh}/ack/{ah}", b"ack for A")]
    assert b.got(f"{root}/f/{fh}/ack/{bh}") == [b"ack for B"], "A's forged ack never reached B"
    # the retained checkpoint is still the fog's
    reader = Client(stack, f"fog-{stack.fog_hex}", stack.fog_password(), clean=True)
    reader.subscribe(checkpoint)
    wait(lambda: bool(reader.got(checkpoint)), what="the retained checkpoint")
    assert reader.got(checkpoint) == [b"the fog's checkpoint"]
    for c in (f, a, b, reader):
        c.close()


def test_a_revoked_meter_is_cut_off_at_once_and_no_other_meter_is(stack: Stack) -> None:
    root, fh = "grid", stack.fog_hex
    f, a, b = fog(stack), meter(stack, A), meter(stack, B)
    f.subscribe(f"{root}/d/#")
    for c, k in ((a, A), (b, B)):
        c.subscribe(f"{root}/f/{fh}/ack/{k.id.hex()}")
    # C has a persistent session but is offline, with an ack queued for it
    c = meter(stack, C)
    c.subscribe(f"{root}/f/{fh}/ack/{C.id.hex()}")
    c.close()
    f.publish(f"{root}/f/{fh}/ack/{C.id.hex()}", b"queued for C")

    reloads = stack.broker.reloads()
    assert stack.access.revoke(A.id.hex())
    assert stack.access.reload().endswith(", loaded")  # SIGHUP (broker_pid_file), probed
    wait(lambda: stack.broker.reloads() > reloads, what="the broker's reload")
    wait(lambda: a.disconnects == 1, what="A cut off")
    # one pass of the broker's loop judged every client: B was kept, connected
    assert b.disconnects == 0 and f.disconnects == 0 and b.c.is_connected()
    b.publish(f"{root}/d/{B.id.hex()}/reading", b"B after the reload")
    wait(lambda: f.got(f"{root}/d/{B.id.hex()}/reading") == [b"B after the reload"],
         what="B's reading")
    f.publish(f"{root}/f/{fh}/ack/{B.id.hex()}", b"ack for B")
    wait(lambda: b.got(f"{root}/f/{fh}/ack/{B.id.hex()}") == [b"ack for B"], what="B's ack")
    # A cannot come back; C's session and its queued ack survived the reload
    assert meter(stack, A).connacks == ["Not authorized"]
    c2 = meter(stack, C)
    assert c2.accepted
    wait(lambda: c2.got(f"{root}/f/{fh}/ack/{C.id.hex()}") == [b"queued for C"],
         what="C's queued ack")
    # enrolling another meter is a reload too: D gets in, B stays
    assert stack.access.grant(D.id.hex(), hash_password(PASSWORDS[D.id.hex()]))
    reloads = stack.broker.reloads()
    stack.access.reload()
    wait(lambda: stack.broker.reloads() > reloads, what="the second reload")
    d = meter(stack, D)
    assert d.accepted and b.disconnects == 0 and c2.disconnects == 0 and f.disconnects == 0
    for cl in (f, b, c2, d):
        cl.close()


def test_reload_failures_say_why(tmp_path: Path) -> None:
    access = granted(tmp_path, broker_pid_file=str(tmp_path / "none.pid"))
    with pytest.raises(AccessError, match="pid file"):
        access.reload()
    access = BrokerAccess(FogConfig(data_dir=tmp_path / "fog", broker_reload_cmd="false"),
                          access.fog_hex)
    with pytest.raises(AccessError, match="exited with 1"):
        access.reload()
    assert BrokerAccess(FogConfig(data_dir=tmp_path / "fog"), access.fog_hex).reload() == ""


def test_a_reload_counts_only_once_the_broker_has_the_new_files(stack: Stack) -> None:
    # a "reload" that does nothing: the probe user's new password is never accepted
    idle = BrokerAccess(dataclasses.replace(stack.access.config, broker_pid_file="",
                                            broker_reload_cmd="true"), stack.fog_hex)
    assert idle.grant(D.id.hex(), hash_password(PASSWORDS[D.id.hex()]))
    with pytest.raises(AccessError, match="has not loaded the new access files"):
        idle.reload(timeout_s=0.3)
    assert meter(stack, D).connacks == ["Not authorized"]
    # the real one (SIGHUP to broker_pid_file) is confirmed by the probe's login (of the
    # password this object last wrote: the record, D included, written again)
    stack.access.write()
    assert stack.broker.proc is not None
    assert stack.access.reload() == f"SIGHUP to broker pid {stack.broker.proc.pid}, loaded"
    d = meter(stack, D)
    assert d.accepted
    d.close()


def test_init_adds_the_broker_files_to_an_older_data_dir_and_checks_names_first(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fog_node import __main__ as fog_cli

    d = tmp_path / "fog"
    assert fog_cli.main(["init", "--data-dir", str(d), "--broker-name", "a b"]) == 2
    assert not d.exists(), "a bad name is refused before anything is written"
    assert fog_cli.main(["init", "--data-dir", str(d), "--broker-name", "broker.lan"]) == 0
    key = (d / "fog.key").read_bytes()
    ca = (d / "broker" / "ca.crt").read_bytes()
    assert fog_cli.main(["init", "--data-dir", str(d)]) == 2  # everything is there
    assert (d / "broker" / "ca.crt").read_bytes() == ca
    shutil.rmtree(d / "broker")  # a data dir made before issue 13
    capsys.readouterr()
    assert fog_cli.main(["init", "--data-dir", str(d)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("fog id ") and "made the broker's CA" in out.err
    assert (d / "fog.key").read_bytes() == key and (d / "broker" / "server.crt").is_file()


def test_at_start_the_files_lose_meters_the_registry_does_not_hold_active(
        tmp_path: Path) -> None:
    from fog_node.service import FogService

    init_data_dir(tmp_path / "fog")
    node = FogNode(FogConfig(data_dir=tmp_path / "fog", mqtt_security="lab", mqtt_port=1),
                   lambda: 1.8e9)
    try:
        for k in (A, B):
            apply_request(node, {"pub": k.public_key.raw.hex(), "status": "active",
                                 "mqtt_hash": hash_password(PASSWORDS[k.id.hex()])})
        # A's revocation is logged, but its broker update is lost (say, a crash in between)
        with node.lock:
            node.ingest.decide(A.public_key.raw, "revoked", "stolen")
        assert set(node.access.meters()) == {A.id.hex(), B.id.hex()}
        svc = FogService(node)
        svc.start()
        svc.stop()
        assert set(node.access.meters()) == {B.id.hex()}
        assert A.id.hex() not in node.access.passwd.read_text()
    finally:
        node.close()
