"""Device traceability at the fog (docs/PROTOCOL.md section 29, "What the fog reports"; 003
s2.2.6): the fog tells the dispatch chain which firmware its meters run (from their
births) and which operations it saw on them that no approved ticket covered (alarms).

Each `step` (a module of the dispatch chain link's round, `ChainLink.on_step`):
1. **births**: the meters' latest births (the registry's births table) logged since the
   last round, a page by log index. For one whose firmware or hardware differs from the
   device's record on the chain (GET /v1/devices/{dev}/timeline: `device.fw`, `hw`), or
   from the fog's own report of it still in the outbox, a `dv_firmware` (seen = the
   birth's received time, birth = its message's digest). When the firmware itself changed
   from a version the chain knew, and neither did the fog push it (an OTA job of
   fog_node.ota for that version `sent`, `activating` or `done`, or one `rolled_back` from
   the version the chain knew) nor does an approved or executed `firmware` ticket of the
   device cover the received time, first a `dv_alarm` op `firmware`.
2. **readings**: the log's entries since the last round, a page; a reading with TAMPER
   (the meter's cover was opened) of a registered meter that no approved or executed
   ticket of the device covers at its t (any op: a cover opened for sanctioned work is
   that work) makes a `dv_alarm` op `unknown`.

A device the chain does not know (404) is skipped and remembered (`dv_unregistered`): its
latest birth is looked at again every UNREGISTERED_RETRY_S of the fog's clock, and its
TAMPER readings meanwhile make no alarm (the chain would refuse it: unknown_device).

A transaction the chain refuses halts the fog's whole outbox, anchors included, so nothing
is queued that the chain would refuse: the device is registered (a registration is never
undone), the firmware differs from the chain's, the alarm names no `who`, and no ticket on
the timeline covers it. The races left (an operator records the same firmware, or a ticket
for the time seen is approved, between the fog's read and the landing) are accepted as
no-ops from a fog by the chain (aggregator/chain/app/devices.py).

State (chain.db, beside the outbox): `dv_sent` (kind, dev, ref = the birth's or the
reading's log index, what, the outbox transaction's digest; NULL for a body dropped as
invalid), inserted in the outbox's own SQLite transaction, so each record is queued once
whatever crashes; `dv_unregistered` (dev, retry_at); meta `dv_births` and `dv_scan` (the
log indices looked at). A restart resumes from them and repeats nothing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fog_node import ota
from fog_node.chainlink.link import AnchorError, ChainLink
from meterledger import wire as P
from meterledger.clients.chain import ChainClientError, ChainUnavailable
from meterledger.infra.sqlite import atomic, connect, meta, set_meta
from meterledger.wire import trace as DV
from meterledger.wire.cbor import ProtocolError

log = logging.getLogger("fog_node.chainlink.devices")
BIRTHS_PAGE = 64  # births looked at per round
SCAN_PAGE = 512  # log entries looked at per round for TAMPER readings
READS_PER_ROUND = 32  # device timelines read from the chain per round
TIMELINE_PAGES = 20  # pages of one timeline read (of TIMELINE_LIMIT records)
TIMELINE_LIMIT = 500
UNREGISTERED_RETRY_S = 6 * 3600  # how often a device unknown to the chain is asked again
OTA_OWN = ("sent", "activating", "done")  # an OTA job's states whose version the fog pushed
NOTE_MAX = 255
_BIRTHS, _SCAN = "dv_births", "dv_scan"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dv_sent (
    kind TEXT NOT NULL, dev BLOB NOT NULL, ref INTEGER NOT NULL, what TEXT NOT NULL, tx BLOB,
    PRIMARY KEY (kind, dev, ref));
CREATE TABLE IF NOT EXISTS dv_unregistered (dev BLOB PRIMARY KEY, retry_at INTEGER NOT NULL);
"""


class _Stop(Exception):
    """This round's work ends here (the chain away, the read budget spent, the outbox not
    ready): the cursors stay where the work stopped and the next round goes on."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(why)
        self.key = key


@dataclass
class Ticket:
    op: str
    start: int
    end: int
    approved: bool = False  # granted (an execution needs it, so executed ones are too)


@dataclass(frozen=True)
class View:
    """What the chain's timeline says of a device: the firmware and hardware it records,
    and the device's tickets by id (hex)."""

    fw: str | None
    hw: str | None
    tickets: dict[str, Ticket]

    def covered(self, t: int, op: str | None) -> str | None:
        """The id of an approved (or executed) ticket of `op` (None: any op) whose window
        holds t, the chain's own test for an alarm; None if there is none."""
        for tid, k in sorted(self.tickets.items()):
            if k.approved and k.start <= t <= k.end and (op is None or k.op == op):
                return tid
        return None


def view_of(pages: list[dict[str, Any]]) -> View:
    """A device's View from the pages of its timeline (GET /v1/devices/{dev}/timeline)."""
    device = pages[0]["device"]
    tickets: dict[str, Ticket] = {}
    for page in pages:
        for rec in page["timeline"]:
            body = rec["body"]
            if rec["kind"] == DV.DV_TICKET:
                tickets[rec["tx"]] = Ticket(body["op"], int(body["start"]), int(body["end"]))
            elif rec["kind"] == DV.DV_APPROVE and body["ticket"] in tickets:
                tickets[body["ticket"]].approved = int(body["granted"]) == 1
    fw, hw = device.get("fw"), device.get("hw")
    return View(None if fw is None else str(fw), None if hw is None else str(hw), tickets)


def _note(text: str) -> str:
    """A body's text field: at most NOTE_MAX characters, no surrounding spaces."""
    return text[:NOTE_MAX].strip()


class DeviceReporter:
    """The fog's device reports (module doc): `step()` reports births' firmware and alarms."""

    def __init__(self, link: ChainLink, clock: Callable[[], float]) -> None:
        self.link = link
        self.node = link.node
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self._said: set[str] = set()  # what was logged once
        self._views: dict[bytes, View | None] = {}  # this round's reads (None: unregistered)
        self._reads = 0
        self._closed = False
        self._lock = threading.Lock()
        self.db = connect(link.db_path, wal=False)
        self.db.executescript(_SCHEMA)
        if meta(self.db, _SCAN) is None:
            # a fog that starts reporting looks at readings from now on: a TAMPER reading
            # of the past was handled then (its fault and alarm), and an alarm observed long
            # ago would only mislead a fault's determination
            with self.node.lock:
                size = self.node.log.size()
            with atomic(self.db):
                set_meta(self.db, _SCAN, size)

    def close(self) -> None:
        """Wait for a step under way; later steps do nothing."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.db.close()

    def _once(self, key: str, level: int, msg: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, msg, *args)

    def step(self) -> None:
        """One round: unregistered devices due again, new births, new readings."""
        now = int(self.clock())
        with self._lock:
            if self._closed:
                return
            self._views, self._reads = {}, 0
            try:
                self._retry(now)
                self._births(now)
                self._scan(now)
            except _Stop as e:
                self.counters[f"waited_{e.key}"] += 1
                self._once(e.key, logging.WARNING if e.key == "away" else logging.INFO,
                           "device reports wait: %s", e)
                return
            self._said.difference_update({"away", "outbox"})  # logged again next time

    # -- the chain's record ------------------------------------------------------------------
    def _view(self, dev: bytes, now: int) -> View | None:
        """The device as the chain records it (read once a round), None when it is not
        registered (404; asked again after UNREGISTERED_RETRY_S)."""
        if dev in self._views:
            return self._views[dev]
        row = self.db.execute("SELECT retry_at FROM dv_unregistered WHERE dev = ?",
                              (dev,)).fetchone()
        if row is not None and int(row[0]) > now:
            self._views[dev] = None
            return None
        if self._reads >= READS_PER_ROUND:
            raise _Stop("budget", f"{READS_PER_ROUND} device timelines read this round; the "
                                  "rest next round")
        self._reads += 1
        try:
            pages = self._timeline(dev)
        except ChainClientError as e:
            # ChainClient.get names the HTTP status in its message: 404 = never registered
            if isinstance(e, ChainUnavailable) or ": HTTP 404:" not in str(e):
                raise _Stop("away", f"the chain did not give device {dev.hex()}'s timeline: "
                                    f"{e}") from None
            self.db.execute("INSERT INTO dv_unregistered (dev, retry_at) VALUES (?, ?) ON "
                            "CONFLICT(dev) DO UPDATE SET retry_at = excluded.retry_at",
                            (dev, now + UNREGISTERED_RETRY_S))
            self.counters["unregistered"] += 1
            self._once(f"unregistered {dev.hex()}", logging.INFO, "meter %s is not registered "
                       "on the chain (dv_register): no firmware or alarm reported; asked "
                       "again every %d s", dev.hex(), UNREGISTERED_RETRY_S)
            self._views[dev] = None
            return None
        if row is not None:
            self.db.execute("DELETE FROM dv_unregistered WHERE dev = ?", (dev,))
            log.info("meter %s is registered on the chain now", dev.hex())
        v = self._views[dev] = view_of(pages)
        return v

    def _timeline(self, dev: bytes) -> list[dict[str, Any]]:
        pages: list[dict[str, Any]] = []
        after: int | None = None
        for _ in range(TIMELINE_PAGES):
            doc = self.link.client.device_timeline(dev.hex(), after, TIMELINE_LIMIT)
            pages.append(doc)
            if doc["next"] is None:
                break
            after = int(doc["next"])
        return pages

    # -- what was sent -----------------------------------------------------------------------
    def _sent(self, kind: str, dev: bytes, ref: int) -> bool:
        return self.db.execute("SELECT 1 FROM dv_sent WHERE kind = ? AND dev = ? AND ref = ?",
                               (kind, dev, ref)).fetchone() is not None

    def _pending_firmware(self, dev: bytes) -> tuple[str, str] | None:
        """The fog's newest dv_firmware of the device still waiting in the outbox."""
        row = self.db.execute(
            "SELECT s.what FROM dv_sent s JOIN outbox o ON o.digest = s.tx WHERE s.kind = ? "
            "AND s.dev = ? AND o.state = 'queued' ORDER BY o.nonce DESC LIMIT 1",
            (DV.DV_FIRMWARE, dev)).fetchone()
        if row is None:
            return None
        fw, hw = json.loads(row[0])
        return str(fw), str(hw)

    def _queue(self, kind: str, dev: bytes, ref: int, what: str, body: dict[int, Any]) -> None:
        """Queue one transaction with its dv_sent mark, in one SQLite transaction."""
        def mark(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO dv_sent (kind, dev, ref, what, tx) VALUES (?, ?, ?, ?, "
                       "(SELECT digest FROM outbox ORDER BY nonce DESC LIMIT 1))",
                       (kind, dev, ref, what))

        try:
            self.link.queue_tx(kind, body, also=mark)
        except AnchorError as e:  # no first contact with the chain yet
            raise _Stop("outbox", str(e)) from None
        except sqlite3.IntegrityError:  # queued already (a mark of another round)
            return
        except ProtocolError as e:  # the chain would refuse it: resending cannot help
            self.db.execute("INSERT OR IGNORE INTO dv_sent (kind, dev, ref, what, tx) VALUES "
                            "(?, ?, ?, ?, NULL)", (kind, dev, ref, f"dropped: {e}"))
            self.counters[f"{kind}_dropped"] += 1
            log.error("%s of meter %s (log index %d) dropped: %s", kind, dev.hex(), ref, e)
            return
        self.counters[f"{kind}_queued"] += 1
        log.info("%s of meter %s queued: %s (log index %d)", kind, dev.hex(), what, ref)

    # -- 1. births ---------------------------------------------------------------------------
    def _retry(self, now: int) -> None:
        """The latest birth of each unregistered device whose retry time came."""
        due = self.db.execute("SELECT dev FROM dv_unregistered WHERE retry_at <= ? ORDER BY "
                              "retry_at, dev LIMIT ?", (now, BIRTHS_PAGE)).fetchall()
        for (dev,) in due:
            if self._view(dev, now) is None:  # asked: still unknown, its retry moved on
                continue  # (known: the row is gone, whatever its birth says)
            with self.node.lock:
                row = self.node.registry.db.execute(
                    "SELECT dev, received, fw, hw, leaf FROM births WHERE dev = ?",
                    (dev,)).fetchone()
            if row is not None:
                self._birth(row[0], int(row[1]), str(row[2]), str(row[3]), int(row[4]), now)

    def _births(self, now: int) -> None:
        after = int(meta(self.db, _BIRTHS) or -1)
        with self.node.lock:
            rows = self.node.registry.db.execute(
                "SELECT dev, received, fw, hw, leaf FROM births WHERE leaf > ? ORDER BY leaf "
                "LIMIT ?", (after, BIRTHS_PAGE)).fetchall()
        done = after
        try:
            for dev, received, fw, hw, leaf in rows:
                self._birth(dev, int(received), str(fw), str(hw), int(leaf), now)
                done = int(leaf)
        finally:
            if done > after:
                set_meta(self.db, _BIRTHS, done)

    def _birth(self, dev: bytes, received: int, fw: str, hw: str, leaf: int,
               now: int) -> None:
        """One birth: an alarm for a firmware change nobody sanctioned, then the record."""
        if self._sent(DV.DV_FIRMWARE, dev, leaf):
            return
        v = self._view(dev, now)
        if v is None:
            return
        old = self._pending_firmware(dev) or (v.fw, v.hw)
        if old == (fw, hw):
            self.counters["firmware_current"] += 1
            return
        if old[0] is not None and old[0] != fw and not self._sent(DV.DV_ALARM, dev, leaf):
            why = self._sanctioned(dev, v, old[0], fw, received)
            if why is None:
                detail = (f"firmware {old[0]} -> {fw} seen in the birth at log index {leaf} "
                          "without an approved firmware ticket")
                self._queue(DV.DV_ALARM, dev, leaf, "firmware",
                            DV.alarm_body(dev, "firmware", received, _note(detail)))
            else:
                self.counters["firmware_sanctioned"] += 1
                log.info("meter %s: firmware %s -> %s is no alarm: %s", dev.hex(), old[0], fw,
                         why)
        with self.node.lock:
            digest = P.digest(self.node.log.entry(leaf))
        self._queue(DV.DV_FIRMWARE, dev, leaf, json.dumps([fw, hw]),
                    DV.firmware_body(dev, fw, hw, received, digest))

    def _sanctioned(self, dev: bytes, v: View, old: str, new: str, t: int) -> str | None:
        """Why a firmware change is no alarm (the fog's own OTA update, or a ticket), None
        when nothing sanctions it."""
        job = ota.read_job(self.node.config.data_dir, dev)
        if job is not None:
            if job.get("version") == new and job.get("state") in OTA_OWN:
                return f"the fog pushed {new} (its OTA job is {job['state']})"
            if job.get("state") == "rolled_back" and job.get("version") == old:
                return f"the meter rolled back from {old}, which the fog pushed"
        tid = v.covered(t, "firmware")
        return None if tid is None else f"firmware ticket {tid} covers {t}"

    # -- 2. readings -------------------------------------------------------------------------
    def _scan(self, now: int) -> None:
        start = int(meta(self.db, _SCAN) or 0)
        with self.node.lock:
            end = min(self.node.log.size(), start + SCAN_PAGE)
            entries = [self.node.log.entry(i) for i in range(start, end)]
        pos = start
        try:
            for raw in entries:
                self._entry(pos, raw, now)
                pos += 1
        finally:
            if pos > start:
                set_meta(self.db, _SCAN, pos)

    def _entry(self, index: int, raw: bytes, now: int) -> None:
        """One log entry: a TAMPER reading of a registered meter no ticket covers is an
        alarm."""
        try:
            m = P.parse(raw, schema=False)
        except P.ProtocolError:
            return
        f = m.fields
        if m.type != P.READING or not int(f.get(7, 0)) & P.TAMPER:
            return
        dev, seq, t = f[1], int(f[2]), int(f[3])
        if self._sent(DV.DV_ALARM, dev, index):
            return
        v = self._view(dev, now)
        if v is None:
            self.counters["tamper_unregistered"] += 1
            return
        tid = v.covered(t, None)
        if tid is not None:
            self.counters["tamper_ticketed"] += 1
            log.info("meter %s: TAMPER at %d (seq %d) is no alarm: ticket %s covers it",
                     dev.hex(), t, seq, tid)
            return
        detail = f"TAMPER reading seq {seq} at log index {index}: the meter's cover was opened"
        self._queue(DV.DV_ALARM, dev, index, DV.UNKNOWN_OP,
                    DV.alarm_body(dev, DV.UNKNOWN_OP, t, _note(detail)))
