"""Who may read and write on the MQTT broker: the fog owns the broker's access configuration
(docs/PROTOCOL.md section 21, issue 13).

data_dir/broker/
  ca.crt, ca.key          the fog's CA (P-256, `init`); meters pin ca.crt at flashing
  server.crt, server.key  the broker's TLS certificate (DNS/IP names given at `init`) and key
  fog.secret              the fog's own broker password (hex, mode 0600)
  access.json             the record: each meter with MQTT access and its password hash
  passwd                  mosquitto's password_file, generated from the record ($7$ hashes),
                          with the fog's user and a probe user (no topics; see reload)
  acl                     mosquitto's acl_file, generated from the record
  mosquitto.conf          the listener fragment to include in the broker's configuration

A meter's broker user is its id (16 hex) and its password a secret born on the meter
(firmware/transport_mqtt.py); the fog only ever holds its mosquitto 2 hash, `$7$`
PBKDF2-SHA512. A meter may publish under {root}/d/{its id}/ and read its own ack, cmd and fw
topics; the fog's user reads {root}/d/# and reads and writes {root}/f/{fog}/#. Every change
rewrites passwd and acl (each written beside, then renamed) and reloads the broker: SIGHUP
to the pid in `broker_pid_file`, or `broker_reload_cmd`, until a login of the probe user,
whose password is new in each passwd, shows that the broker has the new files. On reload
mosquitto 2.0 checks every client's password again and disconnects those that no longer
pass, and applies the new ACL to every client at its next publish or delivery: a revoked
meter is cut off at once, the others stay connected (tests/fog_node/test_broker_access.py
shows both on a real mosquitto).
"""

from __future__ import annotations

import base64
import grp
import hashlib
import hmac
import json
import os
import re
import secrets
import shlex
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fog_node.config import FogConfig
from meterledger import errors
from meterledger.infra import datadir, pki

BROKER = "broker"  # the directory under data_dir
RELOAD_TIMEOUT_S = 15.0  # for the broker to load new access files
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default: the secrets are random, see section 21
_SALT_LEN, _HASH_LEN = 12, 64  # what mosquitto 2.0 accepts, exactly
_B64 = r"[A-Za-z0-9+/]+={0,2}"
_HASH = re.compile(rf"\$7\$([1-9][0-9]{{0,8}})\$({_B64})\$({_B64})")
_DEV = re.compile(r"[0-9a-f]{16}")
_USER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# QoS 1 messages the broker keeps for each client (mosquitto's default, 1000, would drop the
# end of a firmware image waiting for a meter that is away: docs/PROTOCOL.md section 22)
MAX_QUEUED = 4096


class AccessError(errors.ConfigError):
    """The broker's access files cannot be made, read or loaded as required."""


# -- mosquitto password hashes ------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, *, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """mosquitto 2's `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512 of the UTF-8 password with
    a 12-byte salt, 64 bytes out, salt and hash in standard base64."""
    if not password or "\0" in password:
        raise ValueError("a broker password must be non-empty text without NUL")
    salt = os.urandom(_SALT_LEN) if salt is None else salt
    if len(salt) != _SALT_LEN:
        raise ValueError(f"mosquitto wants a {_SALT_LEN}-byte salt, not {len(salt)}")
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _HASH_LEN)
    return f"$7${iterations}${_b64(salt)}${_b64(dk)}"


def hash_error(hashed: str) -> str | None:
    """What is wrong with a `$7$` hash as mosquitto 2.0 reads it (None if nothing); it goes
    into a file one line per user, so nothing but the hash's own characters may pass."""
    m = _HASH.fullmatch(hashed) if isinstance(hashed, str) else None
    if m is None:
        return f"{hashed!r} is not a mosquitto $7$ (PBKDF2-SHA512) password hash"
    try:
        salt, dk = base64.b64decode(m.group(2), validate=True), base64.b64decode(m.group(3),
                                                                                validate=True)
    except ValueError:
        return "the hash's salt or digest is not base64"
    if len(salt) != _SALT_LEN or len(dk) != _HASH_LEN:
        return f"the hash must hold a {_SALT_LEN}-byte salt and a {_HASH_LEN}-byte digest"
    return None


def check_password(password: str, hashed: str) -> bool:
    """Whether `password` matches the `$7$` hash (as the broker decides it)."""
    if hash_error(hashed) is not None:
        return False
    _, _, n, salt, dk = hashed.split("$")
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(n),
                              _HASH_LEN)
    return hmac.compare_digest(got, base64.b64decode(dk))


# -- what each party may do ---------------------------------------------------------------------
def meter_acl(root: str, fog_hex: str, dev_hex: str) -> list[str]:
    """A meter publishes under its own device topics, reads its own acks and commands."""
    return [f"topic write {root}/d/{dev_hex}/#",
            f"topic read {root}/f/{fog_hex}/ack/{dev_hex}",
            f"topic read {root}/f/{fog_hex}/cmd/{dev_hex}",
            f"topic read {root}/f/{fog_hex}/fw/{dev_hex}"]  # firmware chunks (PROTOCOL s. 22)


def fog_acl(root: str, fog_hex: str) -> list[str]:
    """The fog reads what meters publish, and writes (and may read back) its own acks,
    commands and checkpoint."""
    return [f"topic read {root}/d/#", f"topic readwrite {root}/f/{fog_hex}/#"]


def republish_topics(config: FogConfig) -> list[str]:
    """Issue 14 (docs/DATA.md): the topics the fog republishes on, which it may write and
    the Home Assistant user (ha_username) may only read; none unless ha_republish."""
    if not config.ha_republish:
        return []
    return [f"{config.ha_root}/#", f"{config.ha_discovery_prefix}/#"]


@dataclass(frozen=True)
class ClientAuth:
    """How the fog's MQTT client connects: TLS with the CA it trusts and its credentials, or
    (lab) plain and anonymous when `ca_file` is empty."""

    host: str
    port: int
    username: str = ""
    password: str = ""
    ca_file: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.ca_file)


class BrokerAccess:
    """The broker's access files of one fog node, generated from its record."""

    def __init__(self, config: FogConfig, fog_hex: str) -> None:
        self.config = config
        self.fog_hex = fog_hex
        self.dir = config.data_dir / BROKER
        self._probe_secret: str | None = None  # the probe user's, of the last write()
        self.changes = 0  # grants and revocations made through this object

    # -- paths ------------------------------------------------------------------------------
    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def passwd(self) -> Path:
        return self.dir / "passwd"

    @property
    def acl(self) -> Path:
        return self.dir / "acl"

    @property
    def conf(self) -> Path:
        return self.dir / "mosquitto.conf"

    @property
    def record(self) -> Path:
        return self.dir / "access.json"

    @property
    def fog_secret(self) -> Path:
        c = self.config.mqtt_password_file
        return Path(c) if c else self.dir / "fog.secret"

    @property
    def fog_user(self) -> str:
        return self.config.mqtt_username or f"fog-{self.fog_hex}"

    @property
    def ha_user(self) -> str:
        """Home Assistant's read-only user (issue 14); "" unless republishing with one."""
        return self.config.ha_username if self.config.ha_republish else ""

    def ha_password(self) -> str:
        """ha_username's password: ha_password_file, or data_dir/broker/ha.secret (made)."""
        if self.config.ha_password_file:
            return datadir.read_secret(Path(self.config.ha_password_file),
                                       "Home Assistant broker password")
        return datadir.ensure_secret(self.dir / "ha.secret", "Home Assistant broker password")

    @property
    def probe_user(self) -> str:
        """A user with no topics whose password is new at each write (see reload)."""
        return f"probe-{self.fog_hex}"

    # -- init -------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.ca_cert.is_file() and self.server_cert.is_file()

    def create(self, names: Iterable[str] = ()) -> None:
        """The CA, the broker's certificate for `names` (default: localhost, 127.0.0.1, ::1
        and this host's name), the fog's password, and the generated files. Refuses to
        replace a CA: meters pin it."""
        if self.ca_cert.exists() or self.ca_key.exists():
            raise AccessError(f"{self.ca_cert} exists already; meters pin this CA")
        names = list(dict.fromkeys(names)) or default_names()
        ca = pki.new_ca(f"meterledger fog {self.fog_hex} CA")
        server = pki.issue_server(ca, names)
        pki.save(ca, self.ca_cert, self.ca_key)  # ca.key: 0600, the fog's alone
        pki.save(server, self.server_cert, self.server_key, self._gid())
        datadir.ensure_secret(self.dir / "fog.secret", "fog broker password")
        self.write()

    def client(self) -> ClientAuth:
        """The fog's own connection settings (reads the password file in TLS mode)."""
        c = self.config
        if c.mqtt_security == "lab":
            return ClientAuth(c.mqtt_host, c.mqtt_port)
        ca = c.mqtt_ca_file or str(self.ca_cert)
        if not Path(ca).is_file():
            raise AccessError(f"no broker CA certificate at {ca}: run `fog_node init` (it makes "
                              "the broker's CA), set mqtt_ca_file, or mqtt_security = \"lab\"")
        password = datadir.read_secret(self.fog_secret, "fog broker password")
        return ClientAuth(c.mqtt_host, c.mqtt_tls_port, self.fog_user, password, ca)

    # -- the record -------------------------------------------------------------------------
    def meters(self) -> dict[str, str]:
        """Meter id (hex) -> password hash, as recorded."""
        try:
            doc = json.loads(self.record.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise AccessError(f"cannot read the broker access record {self.record}: {e}") from None
        meters = doc.get("meters") if isinstance(doc, dict) else None
        if not isinstance(meters, dict) or not all(
                isinstance(k, str) and _DEV.fullmatch(k) and isinstance(v, str)
                and hash_error(v) is None for k, v in meters.items()):
            raise AccessError(f"{self.record} is not a broker access record")
        return dict(meters)

    def _save(self, meters: dict[str, str]) -> None:
        doc = {"fog": self.fog_hex, "meters": dict(sorted(meters.items()))}
        pki.write_atomic(self.record, (json.dumps(doc, indent=1) + "\n").encode(), 0o600)

    def grant(self, dev_hex: str, hashed: str) -> bool:
        """Give a meter broker access with this password hash; False if it had exactly that."""
        if not _DEV.fullmatch(dev_hex):
            raise AccessError(f"{dev_hex!r} is not a meter id (16 lowercase hex)")
        err = hash_error(hashed)
        if err is not None:
            raise AccessError(err)
        meters = self.meters()
        if meters.get(dev_hex) == hashed:
            return False
        meters[dev_hex] = hashed
        self._save(meters)
        self.write()
        self.changes += 1
        return True

    def keep_only(self, active: set[str]) -> list[str]:
        """Drop every recorded meter not in `active` (the registry's active meters): a
        revocation whose broker update failed is completed here. Returns those dropped."""
        meters = self.meters()
        dropped = sorted(set(meters) - active)
        if dropped:
            self._save({d: h for d, h in meters.items() if d in active})
        return dropped

    def revoke(self, dev_hex: str) -> bool:
        """Take a meter's broker access away; False if it had none."""
        meters = self.meters()
        if meters.pop(dev_hex, None) is None:
            return False
        self._save(meters)
        self.write()
        self.changes += 1
        return True

    # -- the generated files ----------------------------------------------------------------
    def passwd_text(self, meters: dict[str, str], probe_secret: str) -> str:
        lines = []
        if _USER.fullmatch(self.fog_user) is None:
            raise AccessError(f"mqtt_username {self.fog_user!r}: 1..64 letters, digits, . _ -")
        try:
            fog_pw = datadir.read_secret(self.fog_secret, "fog broker password")
        except errors.ConfigError:
            fog_pw = ""  # a fog without its own password (lab-only data dir): no fog user
        if fog_pw:
            lines.append(f"{self.fog_user}:{hash_password(fog_pw)}")
        lines.append(f"{self.probe_user}:{hash_password(probe_secret)}")
        if self.ha_user:  # issue 14: Home Assistant, read only
            lines.append(f"{self.ha_user}:{hash_password(self.ha_password())}")
        lines += [f"{dev}:{h}" for dev, h in sorted(meters.items())]
        return "\n".join(lines) + "\n"

    def acl_text(self, meters: dict[str, str]) -> str:
        root = self.config.mqtt_root
        out = [f"# generated by fog node {self.fog_hex} from access.json; do not edit",
               "# (docs/PROTOCOL.md section 21)"]
        if self.config.mqtt_security == "lab":  # anonymous clients: anything under the root
            out += ["# lab: anonymous clients may read and write anything under the root",
                    f"topic readwrite {root}/#"]
            out += [f"topic readwrite {t}" for t in republish_topics(self.config)]
        out += ["", f"user {self.fog_user}", *fog_acl(root, self.fog_hex),
                *(f"topic write {t}" for t in republish_topics(self.config))]
        if self.ha_user:
            out += ["", f"user {self.ha_user}",
                    *(f"topic read {t}" for t in republish_topics(self.config))]
        for dev in sorted(meters):
            out += ["", f"user {dev}", *meter_acl(root, self.fog_hex, dev)]
        return "\n".join(out) + "\n"

    def conf_text(self, tls_port: int | None = None, plain_port: int | None = None) -> str:
        """The broker's configuration fragment (ports from the config unless given)."""
        return mosquitto_conf(self, tls_port or self.config.mqtt_tls_port,
                              self.config.broker_listen,
                              (plain_port or self.config.mqtt_port)
                              if self.config.mqtt_security == "lab" else None)

    def _gid(self) -> int:
        """The broker's group (broker_group), -1 if none is configured."""
        group = self.config.broker_group
        if not group:
            return -1
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise AccessError(f"broker_group {group!r}: no such group") from None

    def write(self) -> None:
        """Regenerate passwd, acl and (once the certificates exist) mosquitto.conf from the
        record, each file atomically; the files the broker reads that are not public go to
        broker_group, mode 0640 (0600 without one)."""
        meters = self.meters()
        gid = self._gid()
        private = 0o600 if gid == -1 else 0o640
        probe_secret = secrets.token_hex(16)
        pki.write_atomic(self.passwd, self.passwd_text(meters, probe_secret).encode(), private,
                         gid)
        self._probe_secret = probe_secret
        pki.write_atomic(self.acl, self.acl_text(meters).encode(), private, gid)
        if self.exists():
            if gid != -1 and self.server_key.stat().st_gid != gid:  # a group set after init
                os.chown(self.server_key, -1, gid)
                os.chmod(self.server_key, 0o640)
            pki.write_atomic(self.conf, self.conf_text().encode(), 0o644)

    def _signal(self) -> str:
        """SIGHUP to the pid in broker_pid_file, or run broker_reload_cmd; says which."""
        c = self.config
        if c.broker_pid_file:
            try:
                pid = int(Path(c.broker_pid_file).read_text().split()[0])
                os.kill(pid, signal.SIGHUP)
            except (OSError, ValueError, IndexError) as e:
                raise AccessError(f"broker not reloaded: pid file {c.broker_pid_file}: "
                                  f"{e}") from None
            return f"SIGHUP to broker pid {pid}"
        if c.broker_reload_cmd:
            try:
                r = subprocess.run(shlex.split(c.broker_reload_cmd), capture_output=True,
                                   text=True, timeout=30, stdin=subprocess.DEVNULL, check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise AccessError(f"broker not reloaded: {c.broker_reload_cmd!r}: {e}") from None
            if r.returncode != 0:
                tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or [""]
                raise AccessError(f"broker not reloaded: {c.broker_reload_cmd!r} exited with "
                                  f"{r.returncode}: {tail[0]}")
            return f"ran {c.broker_reload_cmd!r}"
        return ""

    def reload(self, timeout_s: float = RELOAD_TIMEOUT_S) -> str:
        """Make the broker load the files again and wait until it has; says how ("" when no
        reload is configured). mosquitto drops a SIGHUP that arrives while it reloads, so
        the fog checks: the probe user's password is new at each write(), and the broker
        takes it only once it loaded those files. Until then the signal is sent again."""
        how = self._signal()
        if not how or self._probe_secret is None:
            return how
        auth = self.client()
        deadline = signalled = time.monotonic()
        deadline += timeout_s
        delay = 0.01
        while True:
            why = probe(auth, self.probe_user, self._probe_secret)
            if not why:
                return how + ", loaded"
            now = time.monotonic()
            if now > deadline:
                raise AccessError(f"{how}, but the broker has not loaded the new access files "
                                  f"after {timeout_s:g} s (probe: {why})")
            if now - signalled >= 1.0:
                self._signal()
                signalled = now
            time.sleep(delay)
            delay = min(2 * delay, 0.5)


def probe(auth: ClientAuth, user: str, password: str) -> str:
    """Log in to the broker as `user` and leave: "" if it let us in, else why not."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, clean_session=True,
                    protocol=mqtt.MQTTv311)
    if auth.tls:
        c.tls_set_context(ssl.create_default_context(cafile=auth.ca_file))
    c.username_pw_set(user, password)
    answer: list[str] = []
    c.on_connect = lambda cl, u, f, reason, p: answer.append(str(reason))
    try:
        c.connect(auth.host, auth.port, 10)
        deadline = time.monotonic() + 10
        while not answer and time.monotonic() < deadline:
            if c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS and not answer:
                return "connection lost before CONNACK"
    except (OSError, ValueError) as e:  # the broker is away, or TLS failed
        return str(e)
    finally:
        if answer == ["Success"]:
            c.disconnect()
        sock = c.socket()
        if sock is not None:
            sock.close()
    return "" if answer == ["Success"] else (answer[0] if answer else "no CONNACK")

def mosquitto_conf(access: BrokerAccess, tls_port: int, bind: str = "",
                   lab_port: int | None = None) -> str:
    """The mosquitto 2.0 fragment: a TLS listener (server certificate of the fog's CA, TLS 1.2
    at least, no anonymous clients, client id = user name), the password and ACL files, and
    in lab mode a plain listener on which anonymous clients are let in."""
    where = f" {bind}" if bind else ""
    lines = [f"# generated by MeterLedger fog node {access.fog_hex}; do not edit",
             "# include it from mosquitto.conf (docs/PROTOCOL.md section 21)",
             "per_listener_settings false",
             f"allow_anonymous {'true' if lab_port else 'false'}",
             "# room for a whole firmware image while its meter is away (fog_node/ota.py)",
             f"max_queued_messages {MAX_QUEUED}",
             f"password_file {access.passwd.resolve()}",
             f"acl_file {access.acl.resolve()}",
             "",
             f"listener {tls_port}{where}",
             "protocol mqtt",
             f"cafile {access.ca_cert.resolve()}",
             f"certfile {access.server_cert.resolve()}",
             f"keyfile {access.server_key.resolve()}",
             "tls_version tlsv1.2",
             "require_certificate false",
             "use_username_as_clientid true"]
    if lab_port:
        lines += ["", "# lab only (mqtt_security = \"lab\"): plain MQTT, anonymous clients",
                  f"listener {lab_port}{where}", "protocol mqtt"]
    return "\n".join(lines) + "\n"


def default_names() -> list[str]:
    """The broker certificate's names when none are given: this machine's."""
    return list(dict.fromkeys(["localhost", "127.0.0.1", "::1", socket.gethostname()]))

