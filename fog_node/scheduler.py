"""The ingest thread's clockwork: interval closes, checkpoints, cooking, local faults and the
dispatcher's tick, run between ingest groups (`Scheduler.tick`).

At an interval close (plus grace) it cooks the interval (aggregates, estimates) and seals a
checkpoint naming it (ivl, agg); otherwise, every seal period, it cooks what new data calls
for and seals a checkpoint if the log grew. Local faults of a closed interval get an alert,
the configured action and a fault transaction (fog_node.chainlink.faults). The dispatcher
(fog_node.chainlink.dispatch) runs at most once a second. Time is the node's clock, passed
in; nothing here reads the wall clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fog_node.chainlink.dispatch import Dispatcher
from fog_node.chainlink.faults import FaultReporter
from fog_node.cooking.cooker import Closed
from fog_node.log.checkpoints import Checkpoint
from fog_node.node import FogNode

log = logging.getLogger("fog_node")


class Scheduler:
    def __init__(self, node: FogNode, clock: Callable[[], float],
                 publish_checkpoint: Callable[[Checkpoint], None]) -> None:
        self.node = node
        self.config = node.config
        self.clock = clock
        self.publish_checkpoint = publish_checkpoint
        self._last_seal = 0.0
        self._next_ivl = self._interval_after(clock())
        # set by the runner when a chain link exists (docs/PROTOCOL.md section 20)
        self.dispatcher: Dispatcher | None = None
        self._dispatched_at: float | None = None
        # local faults go here after their alert (action and fault tx)
        self.faults: FaultReporter | None = None

    def tick(self) -> None:
        self.seal()
        self.dispatch()  # results just ingested are matched at once
        with self.node.lock:  # rejections counted since the last write, when one is due
            self.node.ingest.record.tick()

    def _interval_after(self, now: float) -> int:
        i = self.config.interval_s
        return (int(now) // i + 1) * i

    def seal(self) -> None:
        """At an interval close (plus grace): the cooked data of the interval, then a
        checkpoint naming it (ivl, agg). Otherwise, every seal period: what new data calls
        for (estimates, revisions), then a checkpoint if the log grew."""
        now = self.clock()
        cp: Checkpoint | None = None
        closed: Closed | None = None
        flush_faults = False
        with self.node.lock:
            cooker, checkpoints = self.node.cooker, self.node.checkpoints

            def seal() -> None:  # between chunks of aggregates (cooker.AGGREGATES_PER_CHECKPOINT)
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
            self.publish_checkpoint(cp)
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

    def dispatch(self) -> None:
        """Run the dispatcher at most once a second (node clock); its failure is logged
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
