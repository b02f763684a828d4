"""The umqtt.simple client API on the host, backed by paho-mqtt (v2 callback API).

Virtual meters run the firmware's MQTT transport (firmware/transport_mqtt.py) unchanged:
it expects umqtt.simple's blocking calls (connect, publish waiting for PUBACK at QoS 1,
subscribe waiting for SUBACK) and non-blocking `check_msg()`. Like umqtt there is no
background thread and no automatic reconnect: paho's network loop runs only inside these
calls, so the transport's own backoff decides when to reconnect.

Like umqtt.simple >= 1.4 it takes `user`, `password` and `ssl`, an SSLContext (or anything
with its `wrap_socket`) that the firmware's transport made from the CA it pins: paho wraps
the socket with it, so the broker's certificate is checked by that context exactly.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

_WAIT_S = 5.0


class _Sock:
    """What umqtt exposes as `.sock`: closing it drops the TCP link without DISCONNECT."""

    def __init__(self, owner: MQTTClient) -> None:
        self.owner = owner

    def close(self) -> None:
        c = self.owner._c
        if c is not None:
            s = c.socket()
            if s is not None:
                s.close()
        self.owner._c = None


class MQTTClient:
    def __init__(self, client_id: bytes | str, server: str, port: int = 0,
                 user: bytes | str | None = None, password: bytes | str | None = None,
                 keepalive: int = 0, ssl: Any = None) -> None:
        self.client_id = client_id.decode() if isinstance(client_id, bytes) else client_id
        self.server = server
        self.port = port or (8883 if ssl else 1883)
        self.user = user.decode() if isinstance(user, bytes) else user
        self.password = password.decode() if isinstance(password, bytes) else password
        self.ssl = ssl
        self.keepalive = keepalive or 60
        self._refused = ""
        self._cb: Callable[[bytes, bytes], None] | None = None
        self._will: tuple[str, bytes, bool, int] | None = None
        self._c: mqtt.Client | None = None
        self._queue: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._connected = False
        self._suback: set[int] = set()
        self.sock = _Sock(self)

    # -- paho callbacks ---------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        self._connected = not reason.is_failure
        self._refused = str(reason) if reason.is_failure else ""

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        self._connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.append((msg.topic.encode(), bytes(msg.payload)))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      props: Any) -> None:
        self._suback.add(mid)

    # -- umqtt.simple API -------------------------------------------------------------
    def set_callback(self, f: Callable[[bytes, bytes], None]) -> None:
        self._cb = f

    def set_last_will(self, topic: bytes, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        self._will = (topic.decode(), msg, retain, qos)

    def _client(self) -> mqtt.Client:
        if self._c is None:
            raise OSError(107, "not connected")
        return self._c

    def _loop_until(self, done: Callable[[], bool], what: str) -> None:
        c = self._client()
        deadline = time.monotonic() + _WAIT_S
        while not done():
            rc = c.loop(timeout=0.02)
            if self._refused:  # umqtt raises MQTTException(return code) on a refused CONNACK
                raise OSError(111, f"connection refused: {self._refused}")
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise OSError(104, f"connection lost while waiting for {what} ({rc})")
            if time.monotonic() > deadline:
                raise OSError(110, f"timed out waiting for {what}")

    def connect(self, clean_session: bool = True) -> bool:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        clean_session=clean_session, protocol=mqtt.MQTTv311)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        if self._will is not None:
            topic, payload, retain, qos = self._will
            c.will_set(topic, payload, qos, retain)
        if self.user:
            c.username_pw_set(self.user, self.password)
        if self.ssl is not None:
            c.tls_set_context(self.ssl)
        self._c = c
        self._connected = False
        self._refused = ""
        try:
            c.connect(self.server, self.port, self.keepalive)
        except OSError:
            self._c = None
            raise
        self._loop_until(lambda: self._connected, "CONNACK")
        return False

    def publish(self, topic: bytes, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        c = self._client()
        info = c.publish(topic.decode(), msg, qos, retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise OSError(104, f"publish failed ({info.rc})")
        if qos:
            self._loop_until(info.is_published, "PUBACK")
        else:
            c.loop(timeout=0)

    def subscribe(self, topic: bytes, qos: int = 0) -> None:
        c = self._client()
        rc, mid = c.subscribe(topic.decode(), qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise OSError(104, f"subscribe failed ({rc})")
        self._loop_until(lambda: mid in self._suback, "SUBACK")

    def pending(self) -> bool:
        return bool(self._queue)

    def check_msg(self) -> None:
        c = self._client()
        if not self._queue:
            rc = c.loop(timeout=0)
            if rc != mqtt.MQTT_ERR_SUCCESS or not self._connected:
                raise OSError(104, f"connection lost ({rc})")
        if self._queue and self._cb is not None:
            topic, payload = self._queue.popleft()
            self._cb(topic, payload)

    def ping(self) -> None:
        self._client().loop(timeout=0)

    def disconnect(self) -> None:
        c = self._client()
        c.disconnect()
        c.loop(timeout=0.1)
        self._c = None


def factory(client_id: bytes, server: str, port: int, keepalive: int,
            user: bytes | None = None, password: bytes | None = None,
            ssl: Any = None) -> MQTTClient:
    """The client factory the firmware transport takes (`client_factory=`)."""
    return MQTTClient(client_id, server, port, user, password, keepalive, ssl)
