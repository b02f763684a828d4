"""The running fog node: MQTT in, group-committed ingest, acks and checkpoints out.

Threads: the MQTT link (fog_node.transport.mqtt, a client in a child process) puts what it
receives on `inbox`; the ingest thread takes groups of up to `batch_max` (waiting at most
`batch_wait_s` to fill one), processes each group as one log transaction, then sends its
acks; between groups it applies queued enrollment requests (fog_node.enrollment), runs the
scheduler (fog_node.scheduler: checkpoints, cooking, faults, dispatch) and restarts a
transport that died.

With `rs485_port` configured, a bus thread is master of an RS485 bus as well (fog_node.transport.rs485,
docs/PROTOCOL.md section 17): it polls the meters round robin and puts what it fetches
through the same ingest, under the node's lock (never held during serial I/O). Should that
thread die (the adapter unplugged, say), the ingest thread logs it and starts another, at
most every 5 s, as it does for the MQTT process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from fog_node.chainlink.dispatch import Dispatcher
from fog_node.chainlink.faults import FaultReporter
from fog_node.config import FogConfig
from fog_node.enrollment import apply_queued
from fog_node.log.checkpoints import Checkpoint
from fog_node.node import FogError, FogNode
from fog_node.scheduler import Scheduler
from fog_node.transport.mqtt import MQTTLink
from fog_node.transport.rs485.master import BusMaster

log = logging.getLogger("fog_node")
RESTART_PAUSE_S = 5.0  # between starts of the MQTT process (or the bus thread), should it die
BUS_IDLE_S = 0.1  # pause after a bus round that brought nothing new


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
        self.link = MQTTLink(self.config.mqtt_host, self.config.mqtt_port, f"fog-{self.fog_hex}",
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
        self.scheduler = Scheduler(node, clock, self._publish_checkpoint)

    # the runner sets these when a chain link exists (docs/PROTOCOL.md section 20)
    @property
    def dispatcher(self) -> Dispatcher | None:
        return self.scheduler.dispatcher

    @dispatcher.setter
    def dispatcher(self, d: Dispatcher | None) -> None:
        self.scheduler.dispatcher = d

    @property
    def faults(self) -> FaultReporter | None:
        return self.scheduler.faults

    @faults.setter
    def faults(self, f: FaultReporter | None) -> None:
        self.scheduler.faults = f

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
        apply_queued(self.node, self._publish_acks)
        self.scheduler.tick()
        self._check_link()
        self._check_bus()
        return len(group)

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
