"""Local faults: what the fog does about a fault it found in an interval's data, and the
`fault` transaction that tells the dispatch chain afterwards (SPEC section 8; docs/PROTOCOL.md
section 18).

The fog acts first and reports after, because a local fault needs no round trip to the
dispatch center. The one local action in v1 is `on_tamper = "relay_off"`: a meter reporting
TAMPER gets a fog-signed relay-off command (through the dispatcher, so it is retried and its
result logged). Every other fault is reported with the action "none".

Closed outage records (fog_node.cooking.outages: an outage's meters, start and end, once
it is over) wait in the node's cooked.db, not here: each flush queues the oldest ones as
`fault` transactions of kind "outage" with body keys 6-8 and marks them reported. The
chain outbox's own transaction also records the last one queued (OUTAGE_MARK in chain.db),
so a crash between the two databases' commits neither loses nor repeats a record.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from fog_node.chainlink.link import AnchorError
from fog_node.cooking import outages as OT
from fog_node.cooking.feeders import Fault
from fog_node.node import FogNode
from meterledger.clients.chain import ChainClient, ChainClientError
from meterledger.infra.sqlite import meta, set_meta
from meterledger.wire import chain as C
from meterledger.wire.cbor import ProtocolError

log = logging.getLogger("fog_node.chainlink.faults")
MAX_ENTRIES = 256  # log indices named in one fault transaction (it must fit 4096 bytes)
TAMPER_HOLD_S = 3600  # how long a relay-off for tamper may still be carried out
OUTAGES_PER_FLUSH = 64  # closed outage records queued per flush (a backlog drains by ticks)
OUTAGE_MARK = "outage_record_queued"  # chain.db meta: identity of the last record queued


class Commander(Protocol):
    def command(self, dev: bytes, op: str, args: dict[int, object], not_after: int,
                ref: bytes = b"") -> int: ...


class Outbox(Protocol):
    """The dispatch chain's outbox (fog_node.chainlink.link.ChainLink) and its node."""

    @property
    def node(self) -> FogNode: ...

    @property
    def client(self) -> ChainClient: ...

    def queue_tx(self, kind: str, body: dict[int, Any],
                 also: Callable[[sqlite3.Connection], None] | None = None) -> bytes: ...


class _AlreadyQueued(Exception):
    """The outbox holds this outage record's transaction already (queued before a crash
    kept cooked.db from saying so)."""


def outage_body(r: OT.OutageRecord) -> dict[int, Any]:
    """A closed outage record's `fault` body: kind "outage", action "none", no entries, and
    keys 6 meters, 7 start, 8 end; t is the fog's time at the close that ended it."""
    return C.fault_body(C.OUTAGE, r.detail, r.closed, "none", [], meters=r.meters,
                        start=r.start, end=r.end)


def _mark(r: OT.OutageRecord) -> Callable[[sqlite3.Connection], None]:
    """Inside the outbox's transaction: refuse a record queued already, else mark it."""
    def also(db: sqlite3.Connection) -> None:
        if meta(db, OUTAGE_MARK) == r.identity:
            raise _AlreadyQueued(r.identity)
        set_meta(db, OUTAGE_MARK, r.identity)
    return also


class FaultReporter:
    """Acts on faults and queues their `fault` transactions; transactions that cannot be
    queued yet (the link has not met the chain) wait here and are retried on each call."""

    def __init__(self, outbox: Outbox | None, commander: Callable[[], Commander | None],
                 on_tamper: str = "report") -> None:
        self.outbox = outbox
        self.commander = commander
        self.on_tamper = on_tamper
        self.counters: Counter[str] = Counter()
        self._waiting: list[dict[int, object]] = []

    def action(self, f: Fault, now: int) -> str:
        """Carry out the configured local action; returns what was done, for the report."""
        cmd = self.commander()
        if f.kind == "tamper" and self.on_tamper == "relay_off" and cmd is not None and f.devs:
            cids = [cmd.command(dev, "relay", {1: False}, now + TAMPER_HOLD_S) for dev in f.devs]
            self.counters["fault_actions"] += len(cids)
            return (f"relay_off: relay-off commands to {len(cids)} meter(s): "
                    + ", ".join(f"{d.hex()} cid {c}" for d, c in zip(f.devs, cids, strict=True)))
        return "none: reported for dispatch to decide"

    def __call__(self, f: Fault, now: int) -> None:
        done = self.action(f, now)
        entries = list(f.entries[:MAX_ENTRIES])
        more = f" (first {MAX_ENTRIES} of {len(f.entries)} entries)" if len(f.entries) > MAX_ENTRIES else ""
        body = C.fault_body(f.kind, f"feeder {f.feeder}, interval {f.ivl}: {f.detail}{more}", now,
                            done, entries)
        self._waiting.append(body)
        self.counters["faults"] += 1
        self.flush()

    def flush(self) -> int:
        """Queue waiting fault transactions, then the closed outage records waiting in
        cooked.db; returns how many were queued."""
        if self.outbox is None:
            self._waiting.clear()  # no chain configured: the alert is all there is
            return 0  # (outage records stay in cooked.db for a chain configured later)
        queued = 0
        while self._waiting:
            try:
                self.outbox.queue_tx(C.FAULT, self._waiting[0])
            except AnchorError as e:  # no first contact with the chain yet: retry later
                log.info("fault transaction waits: %s", e)
                break
            except ProtocolError as e:  # a body the chain would refuse: resending cannot help
                log.error("fault transaction dropped: %s", e)
                self.counters["fault_txs_dropped"] += 1
            else:
                queued += 1
            self._waiting.pop(0)
        if not self._waiting:  # in order: a fault waiting for first contact goes first
            queued += self._flush_outages(self.outbox)
        self.counters["fault_txs_queued"] += queued
        return queued

    def _flush_outages(self, outbox: Outbox) -> int:
        """Queue the oldest closed outage records and mark each reported; the node's lock
        is held only around cooked.db, never while queueing (the outbox's nonce lock comes
        before the node's)."""
        node = outbox.node
        with node.lock:
            records = node.cooker.pending_outages(OUTAGES_PER_FLUSH)
        if not records:
            return 0
        try:  # the chain refuses an outage ending after its time, and a refusal halts
            now = int(outbox.client.head()["time"])  # the outbox: wait for the chain
        except (ChainClientError, KeyError, TypeError, ValueError) as e:
            log.info("outage records wait for the chain's time: %s", e)
            return 0
        queued = 0
        for r in records:
            if r.end > now:
                break  # in order: the next round tries again
            state = OT.QUEUED
            try:
                outbox.queue_tx(C.FAULT, outage_body(r), also=_mark(r))
            except _AlreadyQueued:
                log.info("outage record %s was queued before a restart", r.identity)
            except AnchorError as e:  # no first contact yet: it waits in cooked.db
                log.info("outage records wait: %s", e)
                break
            except ProtocolError as e:  # the chain would refuse it: resending cannot help
                log.error("outage record %s dropped: %s", r.identity, e)
                self.counters["fault_txs_dropped"] += 1
                state = OT.DROPPED
            else:
                queued += 1
                self.counters["outage_records_queued"] += 1
                log.info("outage record queued: %s, from %d to %d", r.detail, r.start, r.end)
            with node.lock:
                node.cooker.outage_reported(r.id, state)
        return queued
