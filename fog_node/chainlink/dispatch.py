"""Carrying out dispatch instructions: signed commands out, signed results in, a report back.

The chain link records instructions addressed to this fog (fog_node.chainlink.link). Each `tick`:
1. matches the command results (type 5) ingest logged since the last tick to the commands
   they answer, by (meter, cid);
2. turns each newly recorded instruction into one signed type-4 command per meter (its
   `ref` is the instruction id), each with the meter's next cid, persisted before anything
   is sent, and appended to the fog's log;
3. sends commands that have no result yet: at once, then again every `retry_s` until
   their not_after (the meter rejects a duplicate as a replay and acts only once);
4. reports an instruction to the chain (a type-12 `report` through the link's outbox) once
   every command has a result, or its not_after plus `grace_s` passed (the unanswered ones
   then count as failed).
`command()` does 2 and 3 for the fog's own local actions, which get no report.

All state lives in the dispatch chain link's database (`chain.db`) beside the outbox, on
a connection of its own, so a restart resumes where it stopped: cids never repeat, commands
keep being retried, and the report is queued together with the instruction's "reported"
mark (one SQLite transaction), so an instruction is reported once. Choices and limits: docs/PROTOCOL.md section 20.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from fog_node.chainlink.link import AnchorError, ChainLink
from fog_node.node import FogNode
from meterledger import wire as P
from meterledger.infra.sqlite import atomic, connect, meta
from meterledger.wire import chain as C
from meterledger.wire.cbor import ProtocolError

log = logging.getLogger("fog_node.chainlink.dispatch")

GRACE_S = 10.0  # after not_after, for results of commands accepted just before it
SCAN_MAX = 10_000  # log entries looked at per tick (bounds the time node.lock is held)
REPLAY = "(a replay of the accepted command)"  # firmware/core/meter.py accept_command
_STALE = re.compile(r"stale_cid: cid [0-9]{1,10} not greater than last accepted ([0-9]{1,10})")
# a meter's claim of the cids it took is believed only this far: a claim near the top of the
# cid range (SPEC cids are u32) would leave no cid for the next command
_CID_LEARN_MAX = P.SEQ_MAX - 2**16
NOT_ENROLLED = "not enrolled at this fog"
REVOKED = "revoked at this fog"
EXPIRED = "expired before it could be carried out"
OPEN, ANSWERED, UNANSWERED = "open", "answered", "unanswered"  # a command's state
_CURSOR = "dispatch_log_cursor"  # in chain.db's meta: log entries scanned for results

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    dev BLOB NOT NULL, cid INTEGER NOT NULL, instruction BLOB NOT NULL, msg BLOB NOT NULL,
    not_after INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'open',
    first_sent REAL, last_sent REAL, tries INTEGER NOT NULL DEFAULT 0, command_leaf INTEGER,
    result_status INTEGER, result_detail TEXT, result_leaf INTEGER,
    replay INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dev, cid));
CREATE INDEX IF NOT EXISTS commands_by_instruction ON commands (instruction);
CREATE INDEX IF NOT EXISTS commands_by_state ON commands (state);
CREATE TABLE IF NOT EXISTS cids (dev BLOB PRIMARY KEY, cid INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS uncommanded (
    instruction BLOB NOT NULL, dev BLOB NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (instruction, dev));
"""

Send = Callable[[bytes, bytes], None]  # (meter id, command message)


@dataclass(frozen=True)
class Outcome:
    """What became of one meter named by an instruction, for its report."""

    dev: bytes
    state: str  # OPEN, ANSWERED, UNANSWERED, or "uncommanded"
    status: int | None = None  # the result's status when answered
    detail: str = ""
    leaf: int | None = None  # log index of the result
    replay: bool = False  # answered by a replay rejection: the first result was lost


def tally(outcomes: Sequence[Outcome]) -> tuple[int, int, int, list[int], str]:
    """(done, rejected, failed, result log indices, detail) of a report.

    A replay rejection counts as done: the meter persists the cid before it acts, so it
    had accepted the first copy, whose result was lost. Unanswered and uncommanded meters
    count as failed. The detail names how many of each, and rejection reasons by code."""
    done = rejected = failed = 0
    notes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    entries: list[int] = []
    for o in outcomes:
        if o.leaf is not None and o.state == ANSWERED:
            entries.append(o.leaf)
        if o.state == ANSWERED and (o.status == P.RESULT_DONE or o.replay):
            done += 1
            if o.replay:
                notes["done on a replay answer (the meter had accepted the command; "
                      "its result was lost)"] += 1
        elif o.state == ANSWERED and o.status == P.RESULT_REJECTED:
            rejected += 1
            reasons[o.detail.split(":", 1)[0]] += 1
        else:
            failed += 1
            notes["failed at the meter" if o.state == ANSWERED else
                  "unanswered by not_after" if o.state in (OPEN, UNANSWERED) else
                  o.detail] += 1
    parts = [f"{done} done, {rejected} rejected, {failed} failed"]
    if reasons:
        parts.append("rejected: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
    parts.extend(f"{n} {what}" for what, n in sorted(notes.items()))
    return done, rejected, failed, sorted(entries), "; ".join(parts)


class Dispatcher:
    """Instructions -> commands -> results -> reports (module doc). `send(dev, msg)` hands a
    command to the transports; it may raise, which only delays that command to the next
    tick. Do not call command() while holding node.lock (tick takes this dispatcher's lock,
    then node.lock)."""

    def __init__(self, node: FogNode, link: ChainLink, send: Send, clock: Callable[[], float],
                 retry_s: float = 30.0, grace_s: float = GRACE_S) -> None:
        self.node = node
        self.link = link
        self.send = send
        self.clock = clock
        self.retry_s = retry_s
        self.grace_s = grace_s
        if not link.instructions_on:
            raise ValueError(f"the link to the {link.label} takes no instructions: a "
                             "dispatcher goes with the dispatch chain's link")
        self.counters: Counter[str] = Counter()
        self._lock = threading.RLock()  # tick (ingest thread) and command() (any thread)
        # a connection of our own: the link thread's may be inside a transaction
        self.db = connect(link.db_path, wal=False)
        self.db.executescript(_SCHEMA)
        if self._meta(_CURSOR) is None:
            # no command of ours existed before now, so no result to look for before here
            with node.lock:
                size = node.log.size()
            self.db.execute("INSERT INTO meta (k, v) VALUES (?, ?)", (_CURSOR, size))

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def _atomic(self) -> AbstractContextManager[None]:
        return atomic(self.db)

    def _meta(self, k: str) -> Any:
        return meta(self.db, k)

    # -- public ------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """One round: match results, start new instructions, (re)send, report."""
        with self._lock:
            self._scan()
            self._start(now)
            self._send_due(now)
            self._expire(now)
            self._report()

    def command(self, dev: bytes, op: str, args: dict[int, Any], not_after: int,
                ref: bytes = b"") -> int:
        """Send a command of the fog's own (not from an instruction) to an enrolled meter,
        with the same persistence and retries, but no report; returns its cid."""
        err = P.command_args_error(op, args)
        if err:
            raise ValueError(f"command {op!r} for meter {dev.hex()}: {err}")
        with self.node.lock:
            device = self.node.registry.device(dev)
        if device is None or not device.active:
            raise ValueError(f"meter {dev.hex()} is not an active meter of this fog")
        with self._lock:
            with self._atomic():
                cid = self._new_command(dev, b"", op, args, not_after, ref)
            self.counters["local_commands"] += 1
            self._send_due(self.clock())
        return cid

    def commands(self, instruction: bytes | None = None) -> list[dict[str, Any]]:
        """The stored commands (of one instruction; b"" = local ones), oldest first."""
        cols = ("dev", "cid", "instruction", "msg", "not_after", "state", "first_sent",
                "last_sent", "tries", "command_leaf", "result_status", "result_detail",
                "result_leaf", "replay")
        where, args = ("WHERE instruction = ?", (instruction,)) if instruction is not None \
            else ("", ())
        with self._lock:
            rows = self.db.execute(f"SELECT {', '.join(cols)} FROM commands {where} "
                                   "ORDER BY rowid", args).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    # -- 1. results --------------------------------------------------------------------------
    def _scan(self) -> None:
        cursor = int(self._meta(_CURSOR))
        with self.node.lock:
            size = self.node.log.size()
        if size <= cursor:
            return
        waiting = self.db.execute("SELECT 1 FROM commands WHERE state = ? OR replay = 1 "
                                  "LIMIT 1", (OPEN,)).fetchone()
        end = min(size, cursor + SCAN_MAX) if waiting else size  # nothing to match: skip
        found: list[tuple[bytes, int, int, str, int]] = []
        if waiting:
            with self.node.lock:
                entries = [self.node.log.entry(i) for i in range(cursor, end)]
            for i, raw in enumerate(entries, cursor):
                try:
                    m = P.parse(raw, schema=False)
                except ProtocolError:
                    continue  # a type this process does not know: not a result
                if m.type == P.RESULT:  # ingest checked its signature and schema
                    found.append((m.kid, m.fields[2], m.fields[3], m.fields[4], i))
        with self._atomic():
            for r in found:
                self._match(*r)
            self.db.execute("UPDATE meta SET v = ? WHERE k = ?", (end, _CURSOR))

    def _match(self, dev: bytes, cid: int, status: int, detail: str, leaf: int) -> None:
        row = self.db.execute("SELECT state, replay FROM commands WHERE dev = ? AND cid = ?",
                              (dev, cid)).fetchone()
        if row is None:
            self.counters["results_unmatched"] += 1  # not ours (another fog, an old data dir)
            return
        state, had_replay = row
        replay = status == P.RESULT_REJECTED and REPLAY in detail
        # the first real result wins; a replay answer only stands in until one comes
        if state == ANSWERED and (not had_replay or replay):
            self.counters["results_duplicate"] += 1
            return
        self.counters["results_late" if state == UNANSWERED else "results_matched"] += 1
        self.counters["results_replay"] += replay
        self.db.execute("UPDATE commands SET state = ?, result_status = ?, result_detail = ?, "
                        "result_leaf = ?, replay = ? WHERE dev = ? AND cid = ?",
                        (ANSWERED, status, detail, leaf, int(replay), dev, cid))
        stale = _STALE.match(detail) if status == P.RESULT_REJECTED and not replay else None
        if stale and int(stale.group(1)) > _CID_LEARN_MAX:
            self.counters["cids_implausible"] += 1
            log.warning("meter %s claims cid %s was accepted: beyond %d, not believed",
                        dev.hex(), stale.group(1), _CID_LEARN_MAX)
            stale = None
        if stale:  # the meter took cids we do not know of (a restored data dir): skip them
            cur = self.db.execute("UPDATE cids SET cid = ? WHERE dev = ? AND cid < ?",
                                  (int(stale.group(1)), dev, int(stale.group(1))))
            self.counters["cids_learned"] += cur.rowcount

    # -- 2. instructions -> commands -------------------------------------------------------------
    def _start(self, now: float) -> None:
        rows = self.db.execute("SELECT digest, tx FROM instructions WHERE state = 'received' "
                               "ORDER BY height, idx").fetchall()
        for digest, tx in rows:
            self._expand(digest, tx, now)

    def _expand(self, digest: bytes, tx: bytes, now: float) -> None:
        body = P.parse(tx, schema=False).fields[4]  # checked by the link when recorded
        op, args, not_after, named = body[2], body[3], body[4], body[5]
        with self.node.lock:
            if named:
                devs = list(dict.fromkeys(named))  # a meter named twice gets one command
                records = {d: self.node.registry.device(d) for d in devs}
            else:
                active = [d for d in self.node.registry.devices() if d.active]
                devs, records = [d.dev for d in active], {d.dev: d for d in active}
        targets: list[bytes] = []
        skipped: list[tuple[bytes, bytes, str]] = []
        for dev in devs:
            d = records[dev]
            if now > not_after:
                skipped.append((digest, dev, EXPIRED))
            elif d is None:
                skipped.append((digest, dev, NOT_ENROLLED))
            elif not d.active:
                skipped.append((digest, dev, REVOKED))
            else:
                targets.append(dev)
        with self._atomic():
            for dev in targets:
                self._new_command(dev, digest, op, args, not_after, digest)
            self.db.executemany("INSERT OR IGNORE INTO uncommanded (instruction, dev, detail) "
                                "VALUES (?, ?, ?)", skipped)
            self.db.execute("UPDATE instructions SET state = 'executing' WHERE digest = ?",
                            (digest,))
        self.counters["instructions_expired" if now > not_after else "instructions_started"] += 1
        log.info("instruction %s: %s %r to %d meter(s), %d not commanded", digest.hex()[:16],
                 op, args, len(targets), len(skipped))

    def _new_command(self, dev: bytes, instruction: bytes, op: str, args: dict[int, Any],
                     not_after: int, ref: bytes) -> int:
        """Sign and store a command with the meter's next cid (inside a transaction: the cid
        is durable before the command can be sent, so no cid is ever used twice)."""
        row = self.db.execute("SELECT cid FROM cids WHERE dev = ?", (dev,)).fetchone()
        cid = (int(row[0]) if row else 0) + 1
        self.db.execute("INSERT INTO cids (dev, cid) VALUES (?, ?) ON CONFLICT(dev) DO UPDATE "
                        "SET cid = excluded.cid", (dev, cid))
        key = self.node.key
        msg = P.sign1(key, P.command(dev, cid, op, args, not_after, ref, key.id))
        self.db.execute("INSERT INTO commands (dev, cid, instruction, msg, not_after) "
                        "VALUES (?, ?, ?, ?, ?)", (dev, cid, instruction, msg, not_after))
        return cid

    # -- 3. sending -------------------------------------------------------------------------
    def _send_due(self, now: float) -> None:
        rows = self.db.execute(
            "SELECT dev, cid, msg, tries, command_leaf FROM commands WHERE state = ? AND "
            "? <= not_after AND (tries = 0 OR last_sent + ? <= ?) ORDER BY rowid",
            (OPEN, now, self.retry_s, now)).fetchall()
        if not rows:
            return
        unlogged = [(dev, cid, msg) for dev, cid, msg, _, leaf in rows if leaf is None]
        if unlogged:
            # the side-chain holds what the fog commanded (SPEC section 7), once per command
            with self.node.lock:
                first = self.node.log.append_batch([msg for _, _, msg in unlogged])
                self.node.registry.record_readings([], self.node.log.size())
            with self._atomic():
                self.db.executemany(
                    "UPDATE commands SET command_leaf = ? WHERE dev = ? AND cid = ?",
                    [(first + i, dev, cid) for i, (dev, cid, _) in enumerate(unlogged)])
        sent: list[tuple[float, float, bytes, int]] = []
        for dev, cid, msg, tries, _ in rows:
            try:
                self.send(dev, msg)
            except Exception as e:  # a transport hiccup: the next tick tries again
                self.counters["send_errors"] += 1
                log.warning("command %d for meter %s not sent: %s", cid, dev.hex(), e)
                continue
            self.counters["commands_resent" if tries else "commands_sent"] += 1
            sent.append((now, now, dev, cid))
        with self._atomic():
            self.db.executemany(
                "UPDATE commands SET tries = tries + 1, first_sent = COALESCE(first_sent, ?), "
                "last_sent = ? WHERE dev = ? AND cid = ?", sent)

    def _expire(self, now: float) -> None:
        cur = self.db.execute("UPDATE commands SET state = ? WHERE state = ? AND "
                              "not_after + ? < ?", (UNANSWERED, OPEN, self.grace_s, now))
        self.counters["commands_unanswered"] += cur.rowcount

    # -- 4. reports ---------------------------------------------------------------------------
    def _report(self) -> None:
        rows = self.db.execute("SELECT digest FROM instructions WHERE state = 'executing' "
                               "ORDER BY height, idx").fetchall()
        for (digest,) in rows:
            if self.db.execute("SELECT 1 FROM commands WHERE instruction = ? AND state = ? "
                               "LIMIT 1", (digest, OPEN)).fetchone():
                continue  # still waiting for a result, and not_after (+ grace) is ahead
            outcomes = [Outcome(r[0], r[1], r[2], r[3] or "", r[4], bool(r[5])) for r in
                        self.db.execute("SELECT dev, state, result_status, result_detail, "
                                        "result_leaf, replay FROM commands WHERE "
                                        "instruction = ? ORDER BY rowid", (digest,))]
            outcomes += [Outcome(dev, "uncommanded", detail=detail) for dev, detail in
                         self.db.execute("SELECT dev, detail FROM uncommanded WHERE "
                                         "instruction = ? ORDER BY rowid", (digest,))]
            try:
                n = self._queue_report(digest, outcomes, len(outcomes), True)
            except AnchorError as e:  # not synced with the chain yet: next tick
                self.counters["reports_deferred"] += 1
                log.info("report of instruction %s waits: %s", digest.hex()[:16], e)
                return
            self.counters["reports_queued"] += n
            log.info("instruction %s reported (%d transaction(s))", digest.hex()[:16], n)

    def _queue_report(self, digest: bytes, outcomes: list[Outcome], total: int,
                      last: bool) -> int:
        """Queue the report; one that does not fit 4096 bytes is split into several (the
        chain takes several reports per instruction), each counting its own meters. Only
        the last one marks the instruction reported."""
        done, rejected, failed, entries, detail = tally(outcomes)
        if len(outcomes) < total:
            detail = f"part report of {len(outcomes)} of {total} meters: {detail}"

        def mark(db: sqlite3.Connection) -> None:
            db.execute("UPDATE instructions SET state = 'reported' WHERE digest = ?", (digest,))

        body = C.report_body(digest, done, rejected, failed, entries, detail)
        try:
            self.link.queue_tx(C.REPORT, body, also=mark if last else None)
            return 1
        except ProtocolError as e:
            if e.reason != "too_large" or len(outcomes) < 2:
                raise
        half = len(outcomes) // 2
        return (self._queue_report(digest, outcomes[:half], total, False)
                + self._queue_report(digest, outcomes[half:], total, last))
