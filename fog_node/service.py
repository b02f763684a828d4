"""The running fog node: MQTT in, group-committed ingest, acks and checkpoints out.

Processes and threads: the MQTT client (paho) runs in a child process, so that its
per-packet Python work does not share this interpreter's lock with ingest; it hands the
messages it receives over a pipe in batches, and publishes what this process sends it
(acks, checkpoints) in order. Here a reader thread puts the messages on `inbox`, and the
ingest thread takes groups of up to `batch_max` (waiting at most `batch_wait_s` to fill
one), processes each group as one log transaction, then sends its acks; it also seals
checkpoints and picks up enrollment requests queued by the CLI. The MQTT session is
persistent (clean session off, fixed client id), so readings published while the fog is
down wait at the broker. A reading whose PUBACK the child sent but which we never committed
(kill -9) is not lost either: the meter keeps it until our ack and sends it again. The child
leaves as soon as this process is gone (its end of the pipe closes), so a restarted node
never meets its predecessor's client on the broker.

With `rs485_port` configured, a bus thread is master of an RS485 bus as well (fog_node.rs485,
docs/PROTOCOL.md section 17): it polls the meters round robin and puts what it fetches
through the same ingest, under the node's lock (never held during serial I/O). Should that
thread die (the adapter unplugged, say), the ingest thread logs it and starts another, at
most every 5 s, as it does for the MQTT process.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fog_node.checkpoints import Checkpoint
from fog_node.cooking import Closed
from fog_node.dispatch import Dispatcher
from fog_node.faults import FaultReporter
from fog_node.node import FogConfig, FogError, FogNode
from fog_node.rs485 import BusMaster

log = logging.getLogger("fog_node")
_REQUESTS = "requests"
RESTART_PAUSE_S = 5.0  # between starts of the MQTT process (or the bus thread), should it die
BUS_IDLE_S = 0.1  # pause after a bus round that brought nothing new


def lock_data_dir(data_dir: Path) -> IO[str] | None:
    """Take the data dir's run lock; None if a running fog node holds it."""
    f = open(data_dir / "fog.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def queue_request(data_dir: Path, request: dict[str, Any]) -> Path:
    """Hand an enrollment decision to the running node (atomic: write, then rename)."""
    d = data_dir / _REQUESTS
    d.mkdir(exist_ok=True)
    name = f"{time.time_ns()}-{os.getpid()}.json"
    tmp = d / (name + ".tmp")
    tmp.write_text(json.dumps(request))
    os.replace(tmp, d / name)
    return d / name


def apply_request(node: FogNode, request: dict[str, Any]) -> tuple[list[Any], list[tuple[bytes, bytes]]]:
    """An enrollment decision: {"pub": hex, "status": "active"|"revoked", "reason": str}."""
    try:
        pub = bytes.fromhex(request["pub"])
        status = request.get("status", "active")
        reason = str(request.get("reason", ""))
    except (KeyError, ValueError, TypeError) as e:
        raise FogError(f"bad enrollment request {request!r}: {e}") from None
    with node.lock:
        _, outcomes, acks = node.ingest.decide(pub, status, reason)
    return outcomes, acks


# -- the MQTT client process -----------------------------------------------------------------
_PUBLISH, _STOP = "publish", "stop"  # commands to the child
_UP, _DOWN = "up", "down"  # connection events it reports, with the messages received
_Publish = tuple[str, bytes, int, bool]  # topic, payload, qos, retain


_ROOT = str(Path(__file__).resolve().parent.parent)
_CHILD = "import sys; from fog_node.service import mqtt_child; mqtt_child(sys.argv[1:])"


def mqtt_child(argv: list[str]) -> None:
    """The MQTT process (argv: pipe fd, host, port, client id, topics...).

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
    events: list[str] = []
    received: list[tuple[str, bytes]] = []

    def on_connect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT connect refused: %s", reason)
            return
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
    retry_at, delay, misc_at, stop_by = 0.0, 1.0, 0.0, 0.0
    stopping = False
    while True:
        now = time.monotonic()
        sock = client.socket()
        if stopping and (sock is None or now >= stop_by):
            return  # disconnected (paho closes after sending DISCONNECT), or given up
        if sock is None:
            if now >= retry_at:
                try:
                    client.reconnect()
                    delay, sock = 1.0, client.socket()
                except OSError as e:  # the broker is away: retry after 1, 2, 4 .. 10 s
                    if delay == 1.0:  # say so once per outage
                        log.warning("MQTT connect to %s:%d failed: %s", host, port, e)
                    retry_at, delay = now + delay, min(2 * delay, 10.0)
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


class _MQTTLink:
    """The parent's side of the MQTT client process: its messages go to `inbox`, its
    connection state to `connected` (with `on_up` called at each connect)."""

    def __init__(self, config: FogConfig, client_id: str, topics: list[str],
                 inbox: queue.SimpleQueue[tuple[str, bytes]], connected: threading.Event,
                 on_up: Callable[[], None]) -> None:
        self._args = (config.mqtt_host, config.mqtt_port, client_id, topics)
        self._inbox = inbox
        self._connected = connected
        self._on_up = on_up
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # the ingest and reader threads both send

    def start(self) -> None:
        # a fresh interpreter (not fork: this process has threads, and not multiprocessing's
        # spawn, which re-runs the caller's main module) with its end of a socket pair
        mine, theirs = socket.socketpair()
        host, port, client_id, topics = self._args
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno()), host, str(port),
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
                    self._connected.set()
                    try:
                        self._on_up()
                    except Exception:  # this thread must go on delivering messages
                        log.exception("after MQTT connect")
                else:
                    self._connected.clear()
            for m in messages:
                put(m)

    def publish(self, items: list[_Publish]) -> None:
        if not items:
            return
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.send((_PUBLISH, items))
            except OSError:  # the child died; step() starts another
                log.error("MQTT process gone: %d messages not published", len(items))

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


class FogService:
    def __init__(self, node: FogNode, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.config: FogConfig = node.config
        self.clock = clock
        self.inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self.stop_event = threading.Event()
        self.root = self.config.mqtt_root
        self.fog_hex = node.id_hex
        self.connected = threading.Event()
        self.link = _MQTTLink(self.config, f"fog-{self.fog_hex}",
                              [f"{self.root}/d/+/{kind}" for kind in ("reading", "birth", "result")],
                              self.inbox, self.connected, self._on_connect)
        self._thread: threading.Thread | None = None
        self._link_started = 0.0
        self.bus: BusMaster | None = None
        self._bus_thread: threading.Thread | None = None
        self._bus_started = 0.0
        c = self.config
        if c.rs485_port:
            if not c.rs485_addresses:
                raise FogError("rs485_port is set but rs485_addresses is empty")
            self.bus = BusMaster(node, c.rs485_port, c.rs485_addresses, clock=clock,
                                 baud=c.rs485_baud, timeout_s=c.rs485_timeout_s,
                                 slow_timeout_s=c.rs485_slow_timeout_s, batch=c.rs485_batch)
            node.rs485 = self.bus  # for /metrics
        self._last_seal = 0.0
        self._next_ivl = self._interval_after(clock())
        # -- dispatch (docs/PROTOCOL.md section 20): set by the runner when a chain link exists
        self.dispatcher: Dispatcher | None = None
        self._dispatched_at: float | None = None
        # -- end dispatch
        # local faults go here after their alert (fog_node.faults: action and fault tx)
        self.faults: FaultReporter | None = None

    # -- MQTT ----------------------------------------------------------------------------
    def _on_connect(self) -> None:
        with self.node.lock:
            latest = self.node.checkpoints.latest()
        if latest is not None:
            self._publish_checkpoint(latest)

    def _publish_checkpoint(self, cp: Checkpoint) -> None:
        self.link.publish([(f"{self.root}/f/{self.fog_hex}/checkpoint", cp.msg, 1, True)])

    def _publish_acks(self, acks: list[tuple[bytes, bytes]]) -> None:
        prefix = f"{self.root}/f/{self.fog_hex}/ack/"
        self.link.publish([(prefix + dev.hex(), ack, 1, False) for dev, ack in acks])

    # -- the ingest thread --------------------------------------------------------------------
    def _topic_dev(self, topic: str) -> bytes | None:
        parts = topic.split("/")
        try:
            return bytes.fromhex(parts[-2]) if len(parts[-2]) == 16 else None
        except ValueError:
            return None

    def _take_group(self) -> list[tuple[str, bytes]]:
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        group = [first]
        deadline = time.monotonic() + self.config.batch_wait_s
        while len(group) < self.config.batch_max:
            try:
                group.append(self.inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return group

    def step(self) -> int:
        """One round of the ingest thread; returns how many messages it handled."""
        group = self._take_group()
        if group:
            payloads = [p for _, p in group]
            devs = [self._topic_dev(t) for t, _ in group]
            with self.node.lock:
                _, acks = self.node.ingest.process(payloads, devs)
            self._publish_acks(acks)
        self._requests()
        self._maybe_seal()
        self._dispatch()  # dispatch hook: results just ingested are matched at once
        self._check_link()
        self._check_bus()
        return len(group)

    # -- dispatch (docs/PROTOCOL.md section 20) -------------------------------------------------------
    def _dispatch(self) -> None:
        """Run the dispatcher at most once a second (service clock); its failure is logged
        and must not stop ingest."""
        d = self.dispatcher
        now = self.clock()
        last = self._dispatched_at
        if d is None or (last is not None and 0.0 <= now - last < 1.0):  # a clock step back runs it
            return
        self._dispatched_at = now
        try:
            d.tick(now)
        except Exception:
            log.exception("dispatch tick failed")

    def send_command(self, dev: bytes, msg: bytes) -> None:
        """Hand a signed command to the meter: on MQTT (QoS 1, not retained), and on the RS485
        bus too when the meter answers there. A meter that gets both acts once and answers
        the second copy as a replay."""
        self.link.publish([(f"{self.root}/f/{self.fog_hex}/cmd/{dev.hex()}", msg, 1, False)])
        bus = self.bus
        if bus is not None and bus.knows(dev) and not bus.has_command(dev, msg):
            # too long for an ADU: MQTT has it; not raised, since the dispatcher would
            # then count it unsent and publish it again at its next tick
            try:
                bus.queue_command(dev, msg)
            except ValueError as e:
                log.warning("command for %s not queued on RS485: %s", dev.hex(), e)
    # -- end dispatch

    def _check_link(self) -> None:
        """Start a new MQTT process if the running node's died (not too often)."""
        now = time.monotonic()
        if self._thread is None or self.stop_event.is_set() or self.link.alive() \
                or now - self._link_started < RESTART_PAUSE_S:
            return
        log.error("the MQTT process died; starting another")
        self.link.stop()
        self._link_started = now
        self.link.start()

    # -- the RS485 bus thread ---------------------------------------------------------------
    def _run_bus(self) -> None:
        bus = self.bus
        assert bus is not None
        try:
            while not self.stop_event.is_set():
                if bus.poll_once(self.stop_event) == 0:
                    self.stop_event.wait(BUS_IDLE_S)
        except Exception:
            log.exception("RS485 bus thread died")  # _check_bus starts another
        finally:
            bus.close()

    def _start_bus(self) -> None:
        self._bus_started = time.monotonic()
        self._bus_thread = threading.Thread(target=self._run_bus, name="rs485", daemon=True)
        self._bus_thread.start()

    def _check_bus(self) -> None:
        """Start a new bus thread if the running node's died (not too often)."""
        t = self._bus_thread
        if t is None or t.is_alive() or self.stop_event.is_set() \
                or time.monotonic() - self._bus_started < RESTART_PAUSE_S:
            return
        log.error("the RS485 bus thread died; starting another")
        self._start_bus()

    def _interval_after(self, now: float) -> int:
        i = self.config.interval_s
        return (int(now) // i + 1) * i

    def _maybe_seal(self) -> None:
        """At an interval close (plus grace): the cooked data of the interval, then a
        checkpoint naming it (ivl, agg). Otherwise, every seal period: what new data calls
        for (estimates, revisions), then a checkpoint if the log grew."""
        now = self.clock()
        cp: Checkpoint | None = None
        closed: Closed | None = None
        flush_faults = False
        with self.node.lock:
            cooker, checkpoints = self.node.cooker, self.node.checkpoints

            def seal() -> None:  # between chunks of aggregates (cooking.AGGREGATES_PER_CHECKPOINT)
                checkpoints.seal(int(now), force=True)

            if now >= self._next_ivl + self.config.grace_s:
                ivl = self._next_ivl
                closed = cooker.close(ivl, int(now), seal)
                cp = checkpoints.seal(int(now), ivl=ivl, agg=closed.agg)
                self._next_ivl = self._interval_after(now - self.config.grace_s)
            elif now - self._last_seal >= self.config.seal_period_s:
                cooker.tick(int(now), seal)
                cp = checkpoints.seal(int(now))
                self._last_seal = now
                if self.faults is not None:
                    flush_faults = True
        if cp is not None:
            self._last_seal = now
            self._publish_checkpoint(cp)
        if closed is not None and closed.faults:
            self._on_faults(closed, int(now))
        if flush_faults and self.faults is not None:  # outside the node lock: the chain
            self.faults.flush()  # link takes its nonce lock first, then the node's

    def _on_faults(self, closed: Closed, now: int) -> None:
        """Local faults of a closed interval: an alert each, the local action the config
        asks for, and (when anchoring) a fault transaction saying what was done."""
        for f in closed.faults:
            with self.node.lock:
                self.node.registry.alert(now, f"fault_{f.kind}", None,
                                         f"feeder {f.feeder}, interval {f.ivl}: {f.detail}")
            log.warning("fault %s on feeder %s at interval %d: %s", f.kind, f.feeder, f.ivl,
                        f.detail)
            if self.faults is not None:
                self.faults(f, now)

    def _requests(self) -> None:
        d = self.config.data_dir / _REQUESTS
        if not d.is_dir():
            return
        for path in sorted(d.glob("*.json")):
            try:
                _, acks = apply_request(self.node, json.loads(path.read_text()))
                self._publish_acks(acks)
            except (FogError, ValueError) as e:
                log.error("enrollment request %s refused: %s", path.name, e)
            path.unlink()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.step()
            except Exception:  # a bug must not silently stop ingest: log it and go on
                log.exception("ingest step failed")
                time.sleep(0.5)

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._link_started = time.monotonic()
        self.link.start()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._thread.start()
        if self.bus is not None:
            self._start_bus()

    def stop(self) -> None:
        """Drain what arrived, seal a last checkpoint, and disconnect."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._bus_thread is not None:
            # a visit ends within a few request timeouts (two slow ones at most per request)
            self._bus_thread.join(4 * self.config.rs485_slow_timeout_s + 5)
            if self._bus_thread.is_alive():
                log.error("the RS485 bus thread did not stop")
        while not self.inbox.empty():
            self.step()
        with self.node.lock:
            cp = self.node.checkpoints.seal(int(self.clock()))
        if cp is not None:
            self._publish_checkpoint(cp)
        self.link.stop()
