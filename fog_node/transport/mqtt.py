"""The fog's MQTT transport: a paho client in a child process, and the parent's link to it.

The MQTT client runs in a child process, so that its per-packet Python work does not share
the fog's interpreter lock with ingest; it hands the messages it receives over a pipe in
batches, and publishes what the parent sends it (acks, checkpoints, commands) in order. The
session is persistent (clean session off, fixed client id), so readings published while
the fog is down wait at the broker. A reading whose PUBACK the child sent but which the fog
never committed (kill -9) is not lost either: the meter keeps it until the fog's ack and
sends it again. The child leaves as soon as the parent is gone (its end of the pipe closes),
so a restarted node never meets its predecessor's client on the broker.

The child connects with TLS (the broker's certificate must chain to the CA file given and
name the host) and the fog's user name and password (docs/PROTOCOL.md section 21), or, in
lab mode, plain and anonymous. It gets them from the parent's `ClientAuth` at each start
through its environment, which (unlike its command line) only its own user can read.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fog_node.broker_access import ClientAuth

log = logging.getLogger("fog_node")


# -- the MQTT client process -----------------------------------------------------------------
_PUBLISH, _STOP = "publish", "stop"  # commands to the child
_UP, _DOWN = "up", "down"  # connection events it reports, with the messages received
_Publish = tuple[str, bytes, int, bool]  # topic, payload, qos, retain


_ROOT = str(Path(__file__).resolve().parent.parent.parent)
_CHILD = ("import sys; from meterledger.infra import logs; logs.setup(); "
          "from fog_node.transport.mqtt import mqtt_child; mqtt_child(sys.argv[1:])")
_ENV_CA, _ENV_USER, _ENV_PASSWORD = ("METERLEDGER_MQTT_CA", "METERLEDGER_MQTT_USER",
                                     "METERLEDGER_MQTT_PASSWORD")


def _secure(client: mqtt.Client) -> None:
    """TLS pinned to the CA file and the fog's credentials, as the parent passed them."""
    ca = os.environ.pop(_ENV_CA, "")
    user = os.environ.pop(_ENV_USER, "")
    password = os.environ.pop(_ENV_PASSWORD, "")
    if ca:  # only this CA, the broker's name checked against the host, TLS 1.2 at least
        ctx = ssl.create_default_context(cafile=ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        client.tls_set_context(ctx)
    if user:
        client.username_pw_set(user, password)


# long: one select loop around paho's external-loop API; split, its state would be shared
def mqtt_child(argv: list[str]) -> None:
    """The MQTT process (argv: pipe fd, host, port, client id, topics...; TLS and
    credentials in its environment).

    One thread runs paho's documented external-loop API (loop_read, loop_write,
    loop_misc) beside the pipe: each round reads whatever the broker sent, hands the
    messages to the parent as one batch, queues what the parent asked to publish (in order),
    and writes all of it, PUBACKs included, in one burst. The parent decides when it stops
    (a stop command, or its death closing the pipe), so a Ctrl-C or a service manager's
    SIGTERM to the whole process group cannot cut the link before the parent's last
    publishes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(int(argv[0]))
    host, port, client_id, topics = argv[1], int(argv[2]), argv[3], argv[4:]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                         protocol=mqtt.MQTTv311)
    # acks: no in-flight limit. The default 20 makes delivery RTT-bound, and any limit costs
    # a scan of every message in flight at each PUBACK (paho's _update_inflight)
    client.max_inflight_messages_set(0)
    _secure(client)
    events: list[str] = []
    received: list[tuple[str, bytes]] = []
    said: set[str] = set()  # what went wrong, said once until the next connect
    state = {"delay": 1.0}  # until the next attempt after a failed one: 1, 2, 4 .. 10 s

    def on_connect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:  # bad credentials, or not authorised: retried with backoff
            if str(reason) not in said:
                said.add(str(reason))
                log.warning("MQTT connect to %s:%d refused: %s", host, port, reason)
            return
        said.clear()
        state["delay"] = 1.0
        for topic in topics:
            c.subscribe(topic, 1)
        events.append(_UP)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        received.append((msg.topic, bytes(msg.payload)))

    client.on_connect = on_connect
    client.on_disconnect = lambda *_: events.append(_DOWN)
    client.on_message = on_message
    # writes wait for the end of the round instead of one send() per queued packet
    client.on_socket_register_write = lambda *_: None
    client.connect_async(host, port, 30)
    retry_at, misc_at, stop_by = 0.0, 0.0, 0.0
    stopping = False
    while True:
        now = time.monotonic()
        sock = client.socket()
        if stopping and (sock is None or now >= stop_by):
            return  # disconnected (paho closes after sending DISCONNECT), or given up
        if sock is None:
            if now >= retry_at:
                # a CONNACK resets the delay: a refused one (credentials) backs off too
                retry_at, state["delay"] = now + state["delay"], min(2 * state["delay"], 10.0)
                try:
                    client.reconnect()
                    sock = client.socket()
                except OSError as e:  # the broker is away, or its TLS certificate is not ours
                    if str(e) not in said:  # say so once per outage
                        said.add(str(e))
                        log.warning("MQTT connect to %s:%d failed: %s", host, port, e)
        waiting: list[Any] = [conn] if sock is None else [conn, sock]
        writing = [sock] if sock is not None and client.want_write() else []
        ready, _, _ = select.select(waiting, writing, [], 1.0 if sock else
                                    max(0.0, retry_at - now))
        if sock is not None and sock in ready:
            for _ in range(1000):  # every packet that is there, within reason
                client.loop_read()
                if client.socket() is not sock or not select.select([sock], [], [], 0)[0]:
                    break
        if conn in ready:
            try:
                while conn.poll():
                    cmd, arg = conn.recv()
                    if cmd == _PUBLISH:
                        for topic, payload, qos, retain in arg:
                            client.publish(topic, payload, qos, retain=retain)
                    elif cmd == _STOP:
                        client.disconnect()  # queued after every publish before it
                        stopping, stop_by = True, now + 5
            except (EOFError, OSError):  # the parent died: leave now, the broker keeps the session
                os._exit(0)
        if client.socket() is not None and client.want_write():
            client.loop_write()
        if events or received:
            try:
                conn.send((events[:], received[:]))
            except OSError:
                os._exit(0)
            events.clear()
            received.clear()
        if now >= misc_at:  # keepalive pings, and noticing a silent broker
            client.loop_misc()
            misc_at = now + 1.0


class MQTTLink:
    """The parent's side of the MQTT client process: its messages go to `inbox`, its
    connection state to `connected` (with `on_up` called at each connect)."""

    def __init__(self, auth: Callable[[], ClientAuth], client_id: str, topics: list[str],
                 inbox: queue.SimpleQueue[tuple[str, bytes]], connected: threading.Event,
                 on_up: Callable[[], None]) -> None:
        """`auth` says where and how to connect; it is asked again at each start."""
        self._auth = auth
        self._args = (client_id, topics)
        self._inbox = inbox
        self._connected = connected
        self._said_up = False  # what the log said of the connection
        self._where = ""
        self._lost_at: float | None = None
        self._on_up = on_up
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # the ingest and reader threads both send

    def start(self) -> None:
        # a fresh interpreter (not fork: this process has threads, and not multiprocessing's
        # spawn, which re-runs the caller's main module) with its end of a socket pair
        auth = self._auth()
        self._where = f"{auth.host}:{auth.port}"
        client_id, topics = self._args
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        env.update({_ENV_CA: auth.ca_file, _ENV_USER: auth.username,
                    _ENV_PASSWORD: auth.password})
        mine, theirs = socket.socketpair()
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno()), auth.host, str(auth.port),
                 client_id, *topics],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL)  # its warnings go to stderr
        # now only the child holds its end: either side's death is end of file to the other
        self._conn = Connection(mine.detach())
        threading.Thread(target=self._read, args=(self._conn,), name="mqtt-reader",
                         daemon=True).start()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _read(self, conn: Connection) -> None:
        put = self._inbox.put
        while True:
            try:
                events, messages = conn.recv()
            except (EOFError, OSError):
                self._connected.clear()
                return
            for event in events:
                if event == _UP:
                    self._say_up()
                    self._connected.set()
                    try:
                        self._on_up()
                    except Exception:  # this thread must go on delivering messages
                        log.exception("after MQTT connect")
                else:
                    if self._connected.is_set():
                        self._lost_at = time.monotonic()
                        log.warning("MQTT connection to the broker lost; reconnecting "
                                    "(meters' readings wait in their spools)")
                    self._connected.clear()
            for m in messages:
                put(m)

    def _say_up(self) -> None:
        """Connected: said once at the first connect, then after each loss."""
        if self._lost_at is None and self._said_up:
            return
        if self._lost_at is None:
            log.info("MQTT connected to %s", self._where)
        else:
            log.info("MQTT reconnected to %s after %.0f s", self._where,
                     time.monotonic() - self._lost_at)
        self._said_up, self._lost_at = True, None

    def publish(self, items: list[_Publish]) -> bool:
        """Hand `items` to the MQTT process, in order. True: it took them (its client sends
        QoS 1 messages over reconnects for as long as it lives). False: nothing was handed
        over, because there is no process (not started, or stopped) or it died; a caller that
        must not lose them (the republisher's clearings) sends them again later."""
        if not items:
            return True
        with self._lock:
            if self._conn is None:
                return False
            try:
                self._conn.send((_PUBLISH, items))
            except OSError:  # the child died; step() starts another
                log.error("MQTT process gone: %d messages not published", len(items))
                return False
        return True

    def stop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.send((_STOP, None))
            except OSError:
                pass
        if self._proc is not None:
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None
        if conn is not None:
            conn.close()
        self._connected.clear()
