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
from collections import OrderedDict, deque
from collections.abc import Callable

from fog_node.broker_access import AccessError
from fog_node.chainlink.dispatch import Dispatcher
from fog_node.chainlink.faults import FaultReporter
from fog_node.config import FogConfig
from fog_node.enrollment import apply_queued
from fog_node.log.checkpoints import Checkpoint
from fog_node.node import FogError, FogNode
from fog_node.ota import OtaPusher
from fog_node.republish import Republisher
from fog_node.scheduler import Scheduler
from fog_node.storage import fault_kind
from fog_node.transport.mqtt import MQTTLink
from fog_node.transport.rs485.master import BusMaster

log = logging.getLogger("fog_node")
RESTART_PAUSE_S = 5.0  # between starts of the MQTT process (or the bus thread), should it die
BUS_IDLE_S = 0.1  # pause after a bus round that brought nothing new
STEP_RETRY_S = 0.5  # pause after a failed ingest step (a storage fault: retried until it clears)


class FogService:
    def __init__(self, node: FogNode, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.config: FogConfig = node.config
        self.clock = clock
        self.inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        # arrived messages by topic, waiting for their turn in an ingest group (_take_group)
        self._waiting: OrderedDict[str, deque[tuple[str, bytes]]] = OrderedDict()
        self._waiting_n = 0
        self._waiting_cap = 16 * self.config.batch_max
        self.stop_event = threading.Event()
        self.root = self.config.mqtt_root
        self.fog_hex = node.id_hex
        self.connected = threading.Event()
        # TLS and the fog's credentials, or lab mode (fog_node.broker_access)
        self.link = MQTTLink(node.access.client, node.access.fog_user,
                             [f"{self.root}/d/+/{kind}" for kind in ("reading", "birth", "result")],
                             self.inbox, self.connected, self._on_connect)
        self._thread: threading.Thread | None = None
        self._link_started = 0.0
        self.bus: BusMaster | None = None
        self._bus_thread: threading.Thread | None = None
        self._bus_started = 0.0
        self._bus_fault: str | None = None  # the RS485 port error last logged
        c = self.config
        if c.rs485_port:
            if not c.rs485_addresses:
                raise FogError("rs485_port is set but rs485_addresses is empty")
            self.bus = BusMaster(node, c.rs485_port, c.rs485_addresses, clock=clock,
                                 baud=c.rs485_baud, timeout_s=c.rs485_timeout_s,
                                 slow_timeout_s=c.rs485_slow_timeout_s, batch=c.rs485_batch)
            node.rs485 = self.bus  # for /metrics
        self.scheduler = Scheduler(node, clock, self._publish_checkpoint)
        # firmware images an operator pushed (docs/PROTOCOL.md section 22)
        self.ota = OtaPusher(node, self.link.publish, self.bus, self.send_command, clock)
        # issue 14: decoded data for Home Assistant, off unless ha_republish (docs/DATA.md)
        self.republisher = Republisher.configured(self.config, self.fog_hex, self.link.publish,
                                                  self.connected)
        if self.republisher is not None:
            node.republish_counters = self.republisher.counters  # for /metrics

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

    def _wait_for(self, item: tuple[str, bytes]) -> None:
        """Put an arrived message in its topic's queue (bounded: the oldest of a flooding
        topic, or of the longest queue when all together are too many, is dropped and
        counted; nothing dropped was acked, so its meter sends it again)."""
        topic = item[0]
        q = self._waiting.get(topic)
        if q is None:
            q = self._waiting[topic] = deque()
        q.append(item)
        self._waiting_n += 1
        drop = q if len(q) > self.config.inbox_backlog else None
        if drop is None and self._waiting_n > self._waiting_cap:
            drop = max(self._waiting.values(), key=len)
        if drop is not None:
            drop.popleft()
            self._waiting_n -= 1
            self.node.ingest.counters["inbox_dropped"] += 1

    def _take_group(self) -> list[tuple[str, bytes]]:
        """The next ingest group: what arrived (waiting up to batch_wait_s for more), taken
        round-robin by topic with at most inbox_share messages of one topic, so one noisy
        topic cannot starve the others; the rest waits for the next group."""
        while True:  # everything that has arrived: a later topic must get its turn too
            try:
                self._wait_for(self.inbox.get_nowait())
            except queue.Empty:
                break
        if not self._waiting_n:
            try:
                self._wait_for(self.inbox.get(timeout=0.2))
            except queue.Empty:
                return []
        deadline = time.monotonic() + self.config.batch_wait_s
        while self._waiting_n < self.config.batch_max:
            try:
                self._wait_for(self.inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        group: list[tuple[str, bytes]] = []
        share, room = self.config.inbox_share, self.config.batch_max
        for topic in list(self._waiting):
            q = self._waiting[topic]
            for _ in range(min(share, len(q), room - len(group))):
                group.append(q.popleft())
            if not q:
                del self._waiting[topic]
            else:  # to the back: the next group starts with the others
                self._waiting.move_to_end(topic)
            if len(group) >= room:
                break
        self._waiting_n -= len(group)
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
        self.ota.tick()
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
                if self._bus_fault is not None:
                    log.warning("RS485 port %s works again", self.node.config.rs485_port)
                    self._bus_fault = None
        except OSError as e:  # the port (pyserial's SerialException too): unplugged, closed
            if self.stop_event.is_set():
                pass  # stopping: the line went away first (its emulator, the adapter)
            elif str(e) != self._bus_fault:  # once per fault, not at every reopen
                self._bus_fault = str(e)
                log.error("RS485 port %s failed: %s; reopening every %g s until it works",
                          self.node.config.rs485_port, e, RESTART_PAUSE_S)
        except Exception:
            log.exception("RS485 bus thread died")  # a bug; _check_bus starts another
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
            if not self.guarded_step():
                self.stop_event.wait(STEP_RETRY_S)

    def guarded_step(self) -> bool:
        """One step; False if it failed. A storage fault (full disk, I/O error) is logged
        once with its reason, counted, and shown by /healthz until a step succeeds again;
        anything else is a bug, logged with its traceback. Ingest goes on either way."""
        storage = self.node.storage
        try:
            self.step()
        except Exception as e:
            kind = fault_kind(e)
            if kind is None:  # a bug must not silently stop ingest: log it and go on
                storage.count("internal")
                log.exception("ingest step failed")
            elif storage.failed(kind, str(e), self.clock()):
                log.error("storage fault (%s): %s; nothing is acked until it clears, "
                          "retrying every %.1f s", kind, e, STEP_RETRY_S)
            return False
        ended = storage.step_ok()
        if ended is not None:
            now = self.clock()
            log.warning("storage fault (%s) cleared after %.0f s; the log was re-indexed",
                        ended.kind, now - ended.since)
            with self.node.lock:
                self.node.registry.alert(int(now), f"storage_{ended.kind}", None,
                                         f"from {int(ended.since)} to {int(now)}: "
                                         f"{ended.detail}")
        return True

    # -- life cycle ------------------------------------------------------------------------------
    def _refresh_broker_access(self) -> None:
        """The broker's access files as the record and this config say, without any meter the
        registry no longer holds active (a revocation whose update failed), then a reload."""
        access = self.node.access
        with self.node.lock:
            active = {d.dev.hex() for d in self.node.registry.devices() if d.active}
        for dev in access.keep_only(active):
            log.warning("meter %s: broker access removed (not active in the registry)", dev)
        access.write()
        try:
            how = access.reload()
        except AccessError as e:
            log.error("at start: %s", e)
            return
        if how:
            log.info("broker access files written; %s", how)

    def start(self) -> None:
        self._refresh_broker_access()
        self._link_started = time.monotonic()
        self.link.start()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._thread.start()
        if self.bus is not None:
            self._start_bus()
        if self.republisher is not None:
            self.republisher.start()

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
        while not self.inbox.empty() or self._waiting_n:
            self.step()
        with self.node.lock:
            cp = self.node.checkpoints.seal(int(self.clock()))
        if cp is not None:
            self._publish_checkpoint(cp)
        if self.republisher is not None:
            self.republisher.stop()
        self.link.stop()
