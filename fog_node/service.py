"""The running fog node: MQTT in, group-committed ingest, acks and checkpoints out.

Threads: paho's network thread puts incoming messages on a queue; the ingest thread takes
groups of up to `batch_max` (waiting at most `batch_wait_s` to fill one), processes each
group as one log transaction, then publishes the acks; it also seals checkpoints and picks
up enrollment requests queued by the CLI. The MQTT session is persistent (clean session
off, fixed client id), so readings published while the fog is down wait at the broker.
A reading whose PUBACK we sent but which we never committed (kill -9) is not lost either:
the meter keeps it until our ack and sends it again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fog_node.checkpoints import Checkpoint
from fog_node.node import FogConfig, FogError, FogNode

log = logging.getLogger("fog_node")
_REQUESTS = "requests"


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


class FogService:
    def __init__(self, node: FogNode, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.config: FogConfig = node.config
        self.clock = clock
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.stop_event = threading.Event()
        self.root = self.config.mqtt_root
        self.fog_hex = node.id_hex
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fog-{self.fog_hex}",
                                  clean_session=False, protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(1, 10)
        self.connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_seal = 0.0
        self._next_ivl = self._interval_after(clock())

    # -- MQTT ----------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT connect refused: %s", reason)
            return
        for kind in ("reading", "birth", "result"):
            client.subscribe(f"{self.root}/d/+/{kind}", 1)
        self.connected.set()
        with self.node.lock:
            latest = self.node.checkpoints.latest()
        if latest is not None:
            self._publish_checkpoint(latest)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        self.connected.clear()  # paho reconnects by itself; _on_connect subscribes again

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put((msg.topic, bytes(msg.payload)))

    def _publish_checkpoint(self, cp: Checkpoint) -> None:
        self.client.publish(f"{self.root}/f/{self.fog_hex}/checkpoint", cp.msg, 1, retain=True)

    def _publish_acks(self, acks: list[tuple[bytes, bytes]]) -> None:
        for dev, ack in acks:
            self.client.publish(f"{self.root}/f/{self.fog_hex}/ack/{dev.hex()}", ack, 1)

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
        return len(group)

    def _interval_after(self, now: float) -> int:
        i = self.config.interval_s
        return (int(now) // i + 1) * i

    def _maybe_seal(self) -> None:
        now = self.clock()
        cp: Checkpoint | None = None
        with self.node.lock:
            if now >= self._next_ivl + self.config.grace_s:
                cp = self.node.checkpoints.seal(int(now), ivl=self._next_ivl)
                self._next_ivl = self._interval_after(now - self.config.grace_s)
            elif now - self._last_seal >= self.config.seal_period_s:
                cp = self.node.checkpoints.seal(int(now))
        if cp is not None:
            self._last_seal = now
            self._publish_checkpoint(cp)

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
        self.client.connect_async(self.config.mqtt_host, self.config.mqtt_port, 30)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Drain what arrived, seal a last checkpoint, and disconnect."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(10)
        while not self.inbox.empty():
            self.step()
        with self.node.lock:
            cp = self.node.checkpoints.seal(int(self.clock()))
        if cp is not None:
            self._publish_checkpoint(cp)
        self.client.disconnect()
        self.client.loop_stop()
