"""Home demand response at the fog (docs/PROTOCOL.md section 30): the fog carries out the
utility's DR events for the meters under contract, with the meters' `limit` command, and
reports each curtailed meter to the chain, which pays the compensation.

Each `step` (run by the dispatch chain's link at the start of its round, `ChainLink.on_step`):
1. **sync**: the DR events naming this fog and the accepted contracts of its meters (with
   the customers' preferences) from the chain's API, kept in chain.db; the chain being
   away only delays this part, the rest runs on what is kept;
2. **act**: while an event runs, every meter whose contract the if-then rule
   (`meterledger.wire.dr.exclusion`) curtails gets a `limit` command (through the
   dispatcher: signed, logged, retried until the event's end) capping it at the baseline's
   mean power less the contract's max curtailment, above its floor (`cap_w`); a meter
   without a baseline day, not active here, or in another event already is left alone;
3. **restore**: at the event's end (or when a preference recorded meanwhile opts the meter
   out), the limit the meter had before (the last one done that no event set, else none);
4. **report**: once the chain's time has passed the end, the limit has its result (or its
   not_after passed), and the restore has its result and the event's window is measured
   (or REPORT_WAIT_S passed for either), one `dr_report` per meter with the baseline,
   measured and curtailed Wh from the fog's own intervals (`curtailment`: the window on the newest complete days before it, excluding
   days this meter was curtailed), queued with the "reported" mark in one transaction.

State (chain.db, beside the outbox and the dispatcher's commands; a restart resumes it):
`dr_events` (event, start, end, its JSON, state pending -> active -> ended -> done),
`dr_contracts` (the contracts as the chain last gave them), `dr_acts` (event, meter,
contract, the cap, the prior limit, the two commands' cids, state limited -> restored ->
reported or dropped), `meta.dr_after` (events ending after it may still need work).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from fog_node import dashboard_queries as Q
from fog_node.chainlink.dispatch import Dispatcher
from fog_node.chainlink.link import AnchorError, ChainLink
from fog_node.reads import Reads
from meterledger import wire as P
from meterledger.clients.chain import ChainClientError
from meterledger.infra.sqlite import atomic, connect, meta, set_meta
from meterledger.wire import billing as BL
from meterledger.wire import dr as DR
from meterledger.wire.cbor import ProtocolError

log = logging.getLogger("fog_node.chainlink.dr")
RESTORE_HOLD_S = 86_400  # a restore is resent for a day (the broker queues it meanwhile)
REPORT_WAIT_S = 6 * 3600  # how long a report waits for the event's measured intervals
PRIOR_SCAN = 200  # the meter's newest done commands looked at for its limit before
PAGES = 20  # pages of events or contracts read per sync
_AFTER = "dr_after"
LIMITED, RESTORED, REPORTED, DROPPED = "limited", "restored", "reported", "dropped"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dr_events (
    event BLOB PRIMARY KEY, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    doc TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending');
CREATE TABLE IF NOT EXISTS dr_contracts (
    contract BLOB PRIMARY KEY, valid_to INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dr_acts (
    event BLOB NOT NULL, dev BLOB NOT NULL, contract BLOB NOT NULL, limit_w INTEGER NOT NULL,
    prior_w INTEGER NOT NULL, limit_cid INTEGER NOT NULL, restore_cid INTEGER,
    state TEXT NOT NULL, PRIMARY KEY (event, dev));
"""


def contract_of(doc: dict[str, Any]) -> tuple[DR.Contract, list[DR.Pref]]:
    """A contract of the chain's API (GET /v1/dr/fogs/{fog}/contracts) and its preferences."""
    accepted = doc.get("accepted")
    c = DR.Contract(bytes.fromhex(doc["meter"]), bytes.fromhex(doc["fog"]), doc["feeder"],
                    int(doc["threshold"]), int(doc["max_w"]), int(doc["floor_w"]),
                    tuple(DR.parse_windows(doc["windows"])), int(doc["tz_min"]),
                    int(doc["rate"]), int(doc["valid_from"]), int(doc["valid_to"]),
                    -1 if accepted is None else int(accepted), bytes.fromhex(doc["utility"]))
    prefs = [DR.Pref(int(p["t"]), p["op"], bytes.fromhex(p.get("event", "")),
                     int(p.get("from", 0)), int(p.get("to", 0))) for p in doc["prefs"]]
    return c, prefs


def event_of(doc: dict[str, Any]) -> DR.Event:
    """An event of the chain's API (GET /v1/dr/events)."""
    return DR.Event(bytes.fromhex(doc["event"]), int(doc["price"]), int(doc["start"]),
                    int(doc["end"]), tuple((bytes.fromhex(f), g) for f, g in doc["targets"]),
                    bytes.fromhex(doc["utility"]))


class DemandResponse:
    """The fog's side of DR events (module doc): `step()` syncs, acts, restores, reports."""

    def __init__(self, link: ChainLink, dispatcher: Dispatcher,
                 clock: Callable[[], float]) -> None:
        self.link = link
        self.node = link.node
        self.dispatcher = dispatcher
        self.clock = clock
        self.me = self.node.key.id
        self.counters: Counter[str] = Counter()
        self.chain_now = 0  # the chain's time at the last sync (reports wait for it)
        self._said: set[tuple[bytes, bytes, str]] = set()  # what was logged once
        self._down = False
        self._closed = False
        self._lock = threading.Lock()
        self.db = connect(link.db_path, wal=False)
        self.db.executescript(_SCHEMA)
        self.reads = Reads(self.node.config.data_dir)

    def close(self) -> None:
        """Wait for a step under way; later steps do nothing (the link may still run one
        after the dispatcher closed)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.reads.close()
                self.db.close()

    def _atomic(self) -> AbstractContextManager[None]:
        return atomic(self.db)

    def step(self) -> None:
        """One round: sync with the chain (if it answers), act, restore, report."""
        now = int(self.clock())
        with self._lock:
            if self._closed:
                return
            self.sync()
            self._act(now)
            self._restore(now)
            self._report(now)
            self._advance()

    # -- 1. sync -----------------------------------------------------------------------------
    def sync(self) -> bool:
        """Read the events naming this fog and the contracts of its meters that end after
        meta.dr_after; False when the chain did not answer (logged once per outage)."""
        after = str(int(meta(self.db, _AFTER) or 0))
        fog = self.me.hex()
        try:
            events, now = self._pages(lambda a: self.link.client.dr_events(fog, a), after,
                                      "events")
            contracts, _ = self._pages(lambda a: self.link.client.dr_fog_contracts(fog, a),
                                       after, "contracts")
        except ChainClientError as e:
            self.counters["sync_failed"] += 1
            if not self._down:
                log.warning("DR events and contracts not read from the chain: %s; acting on "
                            "what is kept", e)
            self._down = True
            return False
        self._down = False
        with self._atomic():
            for d in events:
                cur = self.db.execute(
                    'INSERT OR IGNORE INTO dr_events (event, start, "end", doc) VALUES '
                    "(?, ?, ?, ?)", (bytes.fromhex(d["event"]), int(d["start"]), int(d["end"]),
                                     json.dumps(d)))
                self.counters["events_seen"] += cur.rowcount
            self.db.executemany(
                "INSERT INTO dr_contracts (contract, valid_to, doc) VALUES (?, ?, ?) ON "
                "CONFLICT(contract) DO UPDATE SET doc = excluded.doc",
                [(bytes.fromhex(d["contract"]), int(d["valid_to"]), json.dumps(d))
                 for d in contracts])
        self.chain_now = max(self.chain_now, now)
        return True

    @staticmethod
    def _pages(read: Callable[[str], dict[str, Any]], after: str,
               key: str) -> tuple[list[dict[str, Any]], int]:
        out: list[dict[str, Any]] = []
        now, cursor = 0, after
        for _ in range(PAGES):
            doc = read(cursor)
            out += doc[key]
            now = int(doc["now"])
            if doc["next"] is None:
                break
            cursor = doc["next"]
        return out, now

    def _contracts(self) -> list[tuple[bytes, DR.Contract, list[DR.Pref]]]:
        out = []
        for cid, doc in self.db.execute("SELECT contract, doc FROM dr_contracts "
                                        "ORDER BY contract"):
            c, prefs = contract_of(json.loads(doc))
            out.append((cid, c, prefs))
        return out

    def _once(self, event: bytes, dev: bytes, why: str) -> None:
        """Log (and count) why a meter is left out of an event, once per reason."""
        if (event, dev, why) not in self._said:
            self._said.add((event, dev, why))
            self.counters[f"skipped_{why.split(':')[0]}"] += 1
            log.info("event %s: meter %s not curtailed: %s", event.hex(), dev.hex(), why)

    # -- 2. act ------------------------------------------------------------------------------
    def _act(self, now: int) -> None:
        rows = self.db.execute('SELECT event, doc FROM dr_events WHERE start <= ? AND ? < "end" '
                               "AND state IN ('pending', 'active') ORDER BY start, event",
                               (now, now)).fetchall()
        contracts = self._contracts() if rows else []
        for eid, doc in rows:
            e = event_of(json.loads(doc))
            for cid, c, prefs in contracts:
                self._act_on(e, cid, c, prefs, now)
            self.db.execute("UPDATE dr_events SET state = 'active' WHERE event = ?", (eid,))

    def _act_on(self, e: DR.Event, cid: bytes, c: DR.Contract, prefs: list[DR.Pref],
                now: int) -> None:
        row = self.db.execute("SELECT state, prior_w FROM dr_acts WHERE event = ? AND dev = ?",
                              (e.event, c.meter)).fetchone()
        why = DR.exclusion(c, e, prefs) if c.fog == self.me else DR.NOT_IN_EVENT
        if row is not None:
            if row[0] == LIMITED and why == DR.OPTED_OUT:  # the customer's override
                self._send_restore(e.event, c.meter, row[1], now + RESTORE_HOLD_S)
            return
        if why or (e.event, c.meter, DR.NO_BASELINE) in self._said:
            if why and why != DR.NOT_IN_EVENT:
                self._once(e.event, c.meter, why)
            return  # (a meter without a baseline day is not looked at again)
        with self.node.lock:
            device = self.node.registry.device(c.meter)
        busy = self.db.execute("SELECT event FROM dr_acts WHERE dev = ? AND state = ?",
                               (c.meter, LIMITED)).fetchone()
        if device is None or not device.active or busy is not None:
            self._once(e.event, c.meter, "not an active meter of this fog" if busy is None
                       else f"busy: limited for event {busy[0].hex()}")
            return
        days, wh = DR.baseline(e.start, e.end, self._usage(c.meter, e.start, e.end),
                               self._curtailed_windows(c.meter, e.start))
        if not days:
            self._once(e.event, c.meter, DR.NO_BASELINE)
            return
        cap, prior = DR.cap_w(c, wh, e.start, e.end), self._prior_limit(c.meter)
        try:
            limit_cid = self.dispatcher.command(c.meter, "limit", {1: cap}, e.end, e.event)
        except ValueError as err:
            self._once(e.event, c.meter, str(err))
            return
        with self._atomic():
            self.db.execute("INSERT INTO dr_acts (event, dev, contract, limit_w, prior_w, "
                            "limit_cid, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (e.event, c.meter, cid, cap, prior, limit_cid, LIMITED))
        self.counters["meters_limited"] += 1
        log.info("event %s: meter %s limited to %d W (baseline %d Wh over %d days; before: "
                 "%s)", e.event.hex(), c.meter.hex(), cap, wh, days, prior or "no limit")

    def _prior_limit(self, dev: bytes) -> int:
        """The limit the meter runs under before an event: its newest done `limit` command
        that no event sent (events' commands have the 8-byte event id as ref), else 0."""
        rows = self.db.execute(
            "SELECT msg FROM commands WHERE dev = ? AND state = 'answered' AND "
            "(result_status = ? OR replay = 1) ORDER BY cid DESC LIMIT ?",
            (dev, P.RESULT_DONE, PRIOR_SCAN)).fetchall()
        for (msg,) in rows:
            f = P.parse(msg, schema=False).fields
            if f[3] == "limit" and len(f[6]) != 8:
                return int(f[4][1])
        return 0

    def _curtailed_windows(self, dev: bytes, before: int) -> list[tuple[int, int]]:
        """The earlier events that limited the meter: no baseline day overlaps one."""
        rows = self.db.execute('SELECT e.start, e."end" FROM dr_acts a JOIN dr_events e ON '
                               "a.event = e.event WHERE a.dev = ? AND e.start < ?",
                               (dev, before)).fetchall()
        return [(int(a), int(b)) for a, b in rows]

    def _usage(self, dev: bytes, start: int, end: int, event: bool = False) -> list[BL.Usage]:
        """The meter's intervals (measured, or the fog's estimate) in the event's window on
        each of the LOOKBACK_DAYS days before it, and with `event` in the window itself:
        the fog's curve (GET /v1/curve's query), read on connections of our own."""
        shifts = range(0 if event else 1, DR.LOOKBACK_DAYS + 1)
        out: list[BL.Usage] = []
        with self.reads.snapshot() as s:
            for d in shifts:
                lo, hi = start - d * DR.DAY_S, end - d * DR.DAY_S
                page = Q.curve(s, dev, lo, (end - start) // 60 + 1)["points"]
                out += [BL.Usage(p["ivl"], p["ivl"] - p["start"], p["imp"],
                                 int(p["estimated"])) for p in page  # (it runs on past hi)
                        if p["imp"] is not None and lo <= p["start"] < p["ivl"] <= hi]
        return out

    # -- 3. restore ----------------------------------------------------------------------------
    def _send_restore(self, event: bytes, dev: bytes, prior: int, not_after: int) -> None:
        try:
            cid: int | None = self.dispatcher.command(dev, "limit", {1: prior}, not_after,
                                                      event)
        except ValueError as err:  # revoked meanwhile: nothing can be sent
            log.warning("event %s: meter %s not restored: %s", event.hex(), dev.hex(), err)
            cid = None
        with self._atomic():
            self.db.execute("UPDATE dr_acts SET state = ?, restore_cid = ? WHERE event = ? AND "
                            "dev = ?", (RESTORED, cid, event, dev))
        self.counters["meters_restored"] += 1
        log.info("event %s: meter %s restored to %s", event.hex(), dev.hex(),
                 f"{prior} W" if prior else "no limit")

    def _restore(self, now: int) -> None:
        rows = self.db.execute('SELECT a.event, a.dev, a.prior_w, e."end" FROM dr_acts a JOIN '
                               'dr_events e ON a.event = e.event WHERE a.state = ? AND '
                               'e."end" <= ? ORDER BY e."end", a.event, a.dev',
                               (LIMITED, now)).fetchall()
        for event, dev, prior, end in rows:
            self._send_restore(event, dev, prior, int(end) + RESTORE_HOLD_S)
        self.db.execute("UPDATE dr_events SET state = 'ended' WHERE \"end\" <= ? AND state IN "
                        "('pending', 'active')", (now,))

    # -- 4. report -----------------------------------------------------------------------------
    def _outcome(self, dev: bytes, cid: int | None) -> tuple[int, int | None] | None:
        """(the report's outcome, the result's log index) of a command; None while it
        waits for a result before its not_after (+ grace)."""
        if cid is None:
            return DR.FAILED, None
        row = self.db.execute("SELECT state, result_status, result_leaf, replay FROM "
                              "commands WHERE dev = ? AND cid = ?", (dev, cid)).fetchone()
        if row is None or row[0] == "open":
            return None
        state, status, leaf, replay = row
        if state != "answered":
            return DR.UNANSWERED, None
        outcome = DR.DONE if status == P.RESULT_DONE or replay else (
            DR.REJECTED if status == P.RESULT_REJECTED else DR.FAILED)
        return outcome, leaf

    def _report(self, now: int) -> None:
        rows = self.db.execute(
            'SELECT a.event, a.dev, a.contract, a.limit_w, a.limit_cid, a.restore_cid, e.start, '
            'e."end" FROM dr_acts a JOIN dr_events e ON a.event = e.event WHERE a.state = ? '
            'AND e."end" <= ? ORDER BY e."end", a.event, a.dev',
            (RESTORED, min(now, self.chain_now))).fetchall()
        for event, dev, contract, cap, limit_cid, restore_cid, start, end in rows:
            limit = self._outcome(dev, limit_cid)
            if limit is None:
                continue  # the limit's result may still come
            restore = self._outcome(dev, restore_cid)
            if restore is None and now < end + REPORT_WAIT_S:
                continue  # the restore's result may still come
            c = DR.curtailment(start, end, self._usage(dev, start, end, event=True),
                               self._curtailed_windows(dev, start))
            if c.missing_s and now < end + REPORT_WAIT_S:
                continue  # readings a meter spooled may still come
            commands = [(limit_cid, limit[0])]
            if restore_cid is not None:
                commands.append((restore_cid, DR.UNANSWERED if restore is None else restore[0]))
            entries = [x[1] for x in (limit, restore) if x is not None and x[1] is not None]
            body = DR.report_body(event, dev, contract, cap, commands, entries, c)
            if not self._queue(event, dev, body):
                return

    def _queue(self, event: bytes, dev: bytes, body: dict[int, Any]) -> bool:
        """Queue a report with its "reported" mark; False when the link cannot queue yet."""
        def mark(db: sqlite3.Connection) -> None:
            db.execute("UPDATE dr_acts SET state = ? WHERE event = ? AND dev = ?",
                       (REPORTED, event, dev))

        try:
            self.link.queue_tx(DR.DR_REPORT, body, also=mark)
        except AnchorError as e:  # no first contact with the chain yet
            self.counters["reports_deferred"] += 1
            log.info("DR report of meter %s for event %s waits: %s", dev.hex(), event.hex(), e)
            return False
        except ProtocolError as e:  # the chain would refuse it: resending cannot help
            log.error("DR report of meter %s for event %s dropped: %s", dev.hex(), event.hex(),
                      e)
            self.db.execute("UPDATE dr_acts SET state = ? WHERE event = ? AND dev = ?",
                            (DROPPED, event, dev))
            self.counters["reports_dropped"] += 1
            return True
        self.counters["reports_queued"] += 1
        log.info("DR report of meter %s for event %s queued: %d Wh curtailed (baseline %d, "
                 "measured %d)", dev.hex(), event.hex(), body[9], body[7], body[8])
        return True

    def _advance(self) -> None:
        """Events ended with nothing left to report are done; dr_after moves up to just
        below the earliest end still in work, and never past the chain's time at the last
        sync (an event the chain takes later starts after that time, so ends after it)."""
        self.db.execute(
            "UPDATE dr_events SET state = 'done' WHERE state = 'ended' AND NOT EXISTS "
            "(SELECT 1 FROM dr_acts a WHERE a.event = dr_events.event AND a.state IN (?, ?))",
            (LIMITED, RESTORED))
        (low,) = self.db.execute('SELECT MIN("end") FROM dr_events WHERE state != '
                                 "'done'").fetchone()
        bound = self.chain_now if low is None else min(int(low) - 1, self.chain_now)
        if bound > int(meta(self.db, _AFTER) or 0):
            with self._atomic():
                set_meta(self.db, _AFTER, bound)
                # contracts ending by then serve no event still in work
                self.db.execute("DELETE FROM dr_contracts WHERE valid_to <= ?", (bound,))

    def acts(self) -> Iterator[dict[str, Any]]:
        """What the fog did, oldest event first (for tests and the operator)."""
        cols = ("event", "dev", "contract", "limit_w", "prior_w", "limit_cid", "restore_cid",
                "state")
        with self._lock:
            rows = self.db.execute(f"SELECT {', '.join('a.' + c for c in cols)} FROM dr_acts a "
                                   "JOIN dr_events e ON a.event = e.event ORDER BY e.start, "
                                   "a.event, a.dev").fetchall()
        return (dict(zip(cols, r, strict=True)) for r in rows)
