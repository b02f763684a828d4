# MQTT transport of the meter (SPEC section 5), written against the umqtt.simple API
# (installed on the board with mip at flash time). On the host the same API is provided
# by hardware/umqtt_paho.py over paho-mqtt, so virtual meters run this very code.
#
# Sessions are persistent (clean_session False): acks and commands the fog publishes
# while the meter is away are queued by the broker and delivered when it is back.
# A backlog batch is a CBOR array of 1..32 reading messages, inline and in seq order; a
# single reading is sent as itself (docs/PROTOCOL.md, "MQTT"). Firmware image chunks arrive
# on {root}/f/{fog}/fw/{dev} (poll kind "fw", docs/PROTOCOL.md section 22).
#
# Broker access (docs/PROTOCOL.md section 21): with config "mqtt_ca" (the PEM of the fog's
# CA, pinned at flashing) the meter connects over TLS (port 8883 unless "mqtt_port" says
# otherwise), accepts only a broker certificate of that CA naming "mqtt_tls_name" (default
# mqtt_host), and logs in as its id with the password in its data dir (SECRET), born on the
# meter at provisioning (ensure_secret). Without "mqtt_ca" it connects plain and anonymous
# (lab mode) and never sends its password.
from core.compat import const, hexlify

_KEEPALIVE = const(60)
_BACKOFF_MAX_S = const(60)
_DRAIN = const(16)  # incoming messages handled per poll, so one poll stays short
SECRET = "mqtt.secret"  # the meter's broker password (64 hex), in its data dir


def read_secret(fs):
    """The meter's broker password, or "" if it has none."""
    try:
        return fs.read(SECRET).decode().strip()
    except (OSError, ValueError):
        return ""


def ensure_secret(fs, random_bytes):
    """The meter's broker password, made (32 random bytes, hex) if it has none yet; written
    beside, then renamed, so a power loss leaves the old file or none."""
    secret = read_secret(fs)
    if len(secret) == 64:
        return secret
    secret = hexlify(random_bytes(32))
    fs.write(SECRET + ".tmp", secret.encode())
    fs.rename(SECRET + ".tmp", SECRET)
    return secret


class _Named:
    # A TLS context that checks the broker's certificate against a fixed name rather than the
    # address connected to (umqtt and paho pass the host as server_hostname).
    def __init__(self, ctx, name):
        self.ctx = ctx
        self.name = name
        self.check_hostname = True  # paho: the context checks the name itself

    def wrap_socket(self, sock, server_hostname=None, **kw):
        return self.ctx.wrap_socket(sock, server_hostname=self.name, **kw)


def tls_context(ca_pem, name=None):
    """A TLS client context that trusts only `ca_pem` and requires the broker's certificate
    (MicroPython's ssl defaults to CERT_NONE: it is set here, explicitly)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_pem)
    return _Named(ctx, name) if name else ctx


def batch_payload(msgs):
    n = len(msgs)
    if n == 1:
        return msgs[0]
    if not 1 < n <= 32:
        raise ValueError("a batch holds 1..32 readings")
    head = bytes([0x80 | n]) if n < 24 else bytes([0x98, n])
    return head + b"".join(msgs)


def _umqtt_client(client_id, server, port, keepalive, user=None, password=None, ssl=None):
    from umqtt.simple import MQTTClient  # >= 1.4: ssl is an SSLContext

    return MQTTClient(client_id, server, port=port, user=user, password=password,
                      keepalive=keepalive, ssl=ssl)


class MqttTransport:
    def __init__(self, board, config, client_factory=None):
        self.board = board
        self.server = config.get("mqtt_host", "127.0.0.1")
        self.ca = config.get("mqtt_ca") or ""
        self.port = config.get("mqtt_port", 8883 if self.ca else 1883)
        self.tls_name = config.get("mqtt_tls_name") or None
        self.root = config.get("mqtt_root", "grid")
        self.fog_hex = config.get("fog", "")
        self.factory = client_factory or _umqtt_client
        self.client = None
        self.dev_hex = None
        self.birth = None
        self.inbox = []
        self._retry_at = 0
        self._backoff = 1
        self._tls = None  # the TLS context, made at the first connect
        self.stats = {"connects": 0, "failures": 0, "published": 0}

    def _t(self, kind, fog=False):
        if fog:
            return self.root + "/f/" + self.fog_hex + "/" + kind + "/" + self.dev_hex
        return self.root + "/d/" + self.dev_hex + "/" + kind

    def _uptime(self):
        b = self.board
        return b.ticks_ms() // 1000

    def connect(self, dev_hex, birth):
        self.dev_hex = dev_hex
        self.birth = birth
        return self._connect()

    def _security(self):
        # TLS and credentials (never a password on a plain link); {} in lab mode
        if not self.ca:
            return {}
        if self._tls is None:
            self._tls = tls_context(self.ca, self.tls_name)
        kw = {"ssl": self._tls}
        secret = read_secret(self.board.fs())
        if secret:
            kw["user"] = self.dev_hex.encode()
            kw["password"] = secret.encode()
        return kw

    def _connect(self):
        c = None
        try:
            c = self.factory(self.dev_hex.encode(), self.server, self.port, _KEEPALIVE,
                             **self._security())
            c.set_callback(self._on_message)
            c.set_last_will(self._t("status").encode(), b"offline", True, 1)
            c.connect(False)
            c.subscribe(self._t("ack", True).encode(), 1)
            c.subscribe(self._t("cmd", True).encode(), 1)
            c.subscribe(self._t("fw", True).encode(), 1)  # firmware chunks (PROTOCOL s. 22)
            c.publish(self._t("birth").encode(), self.birth, True, 1)
            c.publish(self._t("status").encode(), b"online", True, 1)
        except Exception:  # noqa: BLE001  OSError, or umqtt's MQTTException on a refused CONNECT
            self.client = c
            self._down()
            return False
        self.client = c
        self._backoff = 1
        self.stats["connects"] += 1
        return True

    def _down(self):
        self.stats["failures"] += 1
        c = self.client
        self.client = None
        if c is not None:
            try:
                # drop the TCP link without DISCONNECT, so the broker publishes our will
                c.sock.close()
            except Exception:  # noqa: BLE001  the socket may be gone already
                pass
        self._retry_at = self._uptime() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX_S)

    def _on_message(self, topic, msg):
        t = topic.decode() if isinstance(topic, bytes) else topic
        if t.endswith("/ack/" + self.dev_hex):
            self.inbox.append(("ack", bytes(msg)))
        elif t.endswith("/cmd/" + self.dev_hex):
            self.inbox.append(("cmd", bytes(msg)))
        elif t.endswith("/fw/" + self.dev_hex):
            self.inbox.append(("fw", bytes(msg)))

    def connected(self):
        return self.client is not None

    def where(self):
        """The broker, for the console: "mqtt 10.0.0.2:8883 tls"."""
        return "mqtt " + str(self.server) + ":" + str(self.port) + (" tls" if self.ca else "")

    def _publish(self, kind, payload):
        if self.client is None:
            return False
        try:
            self.client.publish(self._t(kind).encode(), payload, False, 1)
        except Exception:  # noqa: BLE001  the link is gone: reconnect later, readings stay spooled
            self._down()
            return False
        self.stats["published"] += 1
        return True

    def send_readings(self, msgs):
        return self._publish("reading", batch_payload(msgs))

    def send_result(self, msg):
        self._publish("result", msg)

    def poll(self):
        if self.client is None:
            if self.dev_hex is not None and self._uptime() >= self._retry_at:
                self._connect()
        else:
            try:
                for _ in range(_DRAIN):
                    if self.client.check_msg() is None and not self._pending_more():
                        break
            except Exception:  # noqa: BLE001
                self._down()
        out = self.inbox
        self.inbox = []
        return out

    def _pending_more(self):
        # umqtt returns None both for "nothing" and "handled one"; ask the client if it
        # can tell (the host adapter can), else one message per poll
        more = getattr(self.client, "pending", None)
        return bool(more and more())

    def close(self):
        if self.client is not None:
            try:
                self.client.disconnect()
            except OSError:
                pass
            self.client = None
