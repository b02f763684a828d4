"""The fog node's device registry (SQLite): enrolled meters, quarantine, evidence, alerts.

Enrollment and revocation themselves are log entries (signed type-8 messages); this
registry is the node's working state: who is active, the last verified reading of each
meter (for replay, prev-link and gap checks), readings from unknown meters waiting for
enrollment, and evidence of equivocation. The clock is passed in, never read here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterledger import errors
from meterledger import wire as P
from meterledger.infra.sqlite import atomic, connect

ACTIVE = "active"
REVOKED = "revoked"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    dev BLOB PRIMARY KEY, pub BLOB NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,
    since INTEGER NOT NULL, decision_index INTEGER,
    last_seq INTEGER NOT NULL DEFAULT 0, last_digest BLOB, last_t INTEGER NOT NULL DEFAULT 0,
    gaps INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS readings (
    dev BLOB NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL, leaf INTEGER NOT NULL,
    PRIMARY KEY (dev, seq));
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, dev BLOB NOT NULL, raw BLOB NOT NULL UNIQUE, received INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY, dev BLOB NOT NULL, seq INTEGER NOT NULL, logged BLOB NOT NULL,
    conflicting BLOB NOT NULL UNIQUE, received INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY, t INTEGER NOT NULL, kind TEXT NOT NULL, dev BLOB, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS quarantine_by_dev ON quarantine (dev, id);
CREATE INDEX IF NOT EXISTS evidence_by_dev ON evidence (dev, id);
CREATE INDEX IF NOT EXISTS alerts_by_dev ON alerts (dev, id);
"""
# what one meter (or a stranger) can make the registry keep: bounded, oldest dropped first
# and counted, so no participant can fill the disk for the others (issue 13)
QUARANTINE_PER_METER = 96  # a day of 15-minute readings; the meter keeps them anyway
QUARANTINE_TOTAL = 10_000
EVIDENCE_PER_METER = 100  # equivocations kept as evidence; a hundred prove the point
ALERTS_PER_METER = 1_000
ALERTS_TOTAL = 100_000
# each enrolled meter's last logged birth (type 2), written with the log batch that holds it:
# what the dashboard shows of a meter (firmware, boot count, its spool's backlog then)
_BIRTHS = """
CREATE TABLE IF NOT EXISTS births (
    dev BLOB PRIMARY KEY, received INTEGER NOT NULL, fw TEXT NOT NULL, boot INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, backlog INTEGER NOT NULL, hw TEXT NOT NULL, src TEXT NOT NULL,
    dur INTEGER NOT NULL, leaf INTEGER NOT NULL) WITHOUT ROWID;
"""
# every enrollment decision (type 8) by meter and log index, written with the devices row it
# updates; what the API's enrollment proofs look up (no scan of the log)
_DECISIONS = """
CREATE TABLE IF NOT EXISTS decisions (
    dev BLOB NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (dev, idx)) WITHOUT ROWID;
"""


class RegistryError(errors.MeterLedgerError, ValueError):
    pass


@contextmanager
def _together(db: sqlite3.Connection) -> Iterator[None]:
    """One transaction, or a part of the caller's if one is open."""
    if db.in_transaction:
        yield
        return
    with atomic(db):
        yield


@dataclass(frozen=True)
class Birth:
    """What a meter's birth said when the fog received it (fog time `received`): its
    firmware, boot counter, last seq issued, and `backlog`, the readings its spool held
    then that the fog had not logged (last_seq minus the meter's contiguous logged seq)."""

    dev: bytes
    received: int
    fw: str
    boot: int
    last_seq: int
    backlog: int
    hw: str
    src: str
    dur: int

    @classmethod
    def of(cls, f: P.Fields, received: int, contiguous: int) -> Birth:
        """From a birth's fields (type 2), the fog's time and the meter's contiguous seq."""
        return cls(f[1], received, f[11], f[12], f[13], max(0, f[13] - contiguous), f[14],
                   f[15], f[4])

    def as_json(self) -> dict[str, Any]:
        return {"received": self.received, "fw": self.fw, "boot": self.boot,
                "last_seq": self.last_seq, "backlog": self.backlog, "hw": self.hw,
                "src": self.src, "dur": self.dur}


@dataclass(frozen=True)
class Device:
    dev: bytes
    pub: bytes
    status: str
    reason: str
    since: int
    last_seq: int
    last_digest: bytes | None
    last_t: int
    gaps: int

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    def as_json(self) -> dict[str, Any]:
        """What GET /v1/devices and `fog devices --format json` show of a meter."""
        return {"dev": self.dev.hex(), "pub": self.pub.hex(), "status": self.status,
                "reason": self.reason, "since": self.since, "last_seq": self.last_seq,
                "last_t": self.last_t, "gaps": self.gaps}


class Registry:
    def __init__(self, path: Path | str) -> None:
        # one connection, used from the ingest thread; WAL so the HTTP API can read alongside
        self.db = connect(path)
        self.db.executescript(_SCHEMA + _BIRTHS)
        self._index_decisions()

    def close(self) -> None:
        self.db.close()

    # -- devices ----------------------------------------------------------------------
    def device(self, dev: bytes) -> Device | None:
        row = self.db.execute(
            "SELECT dev, pub, status, reason, since, last_seq, last_digest, last_t, gaps "
            "FROM devices WHERE dev = ?", (dev,)).fetchone()
        return Device(*row) if row else None

    def decision_index(self, dev: bytes) -> int | None:
        """Log index of the meter's latest enrollment decision (type 8), if logged."""
        row = self.db.execute("SELECT decision_index FROM devices WHERE dev = ?",
                              (dev,)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    # -- enrollment decisions by (meter, log index) ------------------------------------------
    def _index_decisions(self) -> None:
        """Create the decisions table; in a registry made before it existed, note the log
        size below which the decisions are not in it yet (`backfill_decisions` adds them)."""
        with atomic(self.db):
            new = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'decisions'"
                                  ).fetchone() is None
            self.db.execute(_DECISIONS)
            if new and self.db.execute("SELECT 1 FROM devices LIMIT 1").fetchone():
                self.db.execute("INSERT INTO meta (k, v) VALUES ('decisions_from', ?) "
                                "ON CONFLICT(k) DO NOTHING", (self.indexed_upto(),))

    def backfill_decisions(self, size: int, entry: Callable[[int], bytes]) -> int:
        """Index the decisions of log entries [0, n) that a registry made before the
        decisions table never saw (n noted when the table was made); `entry(i)` reads the
        log. Once: a no-op afterwards. Returns how many decisions it added."""
        row = self.db.execute("SELECT v FROM meta WHERE k = 'decisions_from'").fetchone()
        if row is None:
            return 0
        found = []
        for i in range(min(int(row[0]), size)):
            try:
                m = P.parse(entry(i), schema=False)
            except P.ProtocolError:  # a type this code does not know: no decision
                continue
            if m.type == P.ENROLLMENT:
                found.append((m.fields[1], i))
        with atomic(self.db):
            self.db.executemany("INSERT OR IGNORE INTO decisions (dev, idx) VALUES (?, ?)",
                                found)
            self.db.execute("DELETE FROM meta WHERE k = 'decisions_from'")
        return len(found)

    def decision_before(self, dev: bytes, before: int) -> int | None:
        """Log index of the meter's last enrollment decision below `before`: one lookup in
        the (dev, idx) key, never a scan."""
        row = self.db.execute("SELECT MAX(idx) FROM decisions WHERE dev = ? AND idx < ?",
                              (dev, before)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def devices(self) -> list[Device]:
        rows = self.db.execute(
            "SELECT dev, pub, status, reason, since, last_seq, last_digest, last_t, gaps "
            "FROM devices ORDER BY dev").fetchall()
        return [Device(*r) for r in rows]

    def set_status(self, dev: bytes, pub: bytes, status: str, reason: str, t: int,
                   decision_index: int | None = None) -> None:
        if status not in (ACTIVE, REVOKED):
            raise RegistryError(f"status must be {ACTIVE!r} or {REVOKED!r}, not {status!r}")
        old = self.device(dev)
        if old is not None and old.pub != pub:
            raise RegistryError(f"meter {dev.hex()} is enrolled with another public key")
        with _together(self.db):
            self.db.execute(
                "INSERT INTO devices (dev, pub, status, reason, since, decision_index) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(dev) DO UPDATE SET "
                "status = excluded.status, reason = excluded.reason, since = excluded.since, "
                "decision_index = excluded.decision_index",
                (dev, pub, status, reason, t, decision_index))
            if decision_index is not None:
                self.db.execute("INSERT OR IGNORE INTO decisions (dev, idx) VALUES (?, ?)",
                                (dev, decision_index))

    # -- readings index (written with the log batch that holds them) -----------------
    def logged_digest(self, dev: bytes, seq: int) -> tuple[bytes, int] | None:
        row = self.db.execute("SELECT digest, leaf FROM readings WHERE dev = ? AND seq = ?",
                              (dev, seq)).fetchone()
        return (row[0], row[1]) if row else None

    def indexed_upto(self) -> int:
        """Log size this registry has indexed; the log may be ahead after a crash between
        the log's commit and the registry's, and startup re-indexes that tail."""
        row = self.db.execute("SELECT v FROM meta WHERE k = 'indexed_upto'").fetchone()
        return int(row[0]) if row else 0

    def record_readings(self, rows: list[tuple[bytes, int, bytes, int, int]],
                        log_size: int, births: Sequence[tuple[Birth, int]] = ()) -> None:
        """(dev, seq, digest, leaf index, t) of readings just committed to the log, which
        now holds log_size entries, and the births (with their leaf index) logged with
        them: one transaction."""
        with atomic(self.db):
            cur = self.db.cursor()
            # a re-indexed older birth never replaces a newer one
            cur.executemany(
                "INSERT INTO births (dev, received, fw, boot, last_seq, backlog, hw, src, dur, "
                "leaf) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(dev) DO UPDATE SET "
                "received = excluded.received, fw = excluded.fw, boot = excluded.boot, "
                "last_seq = excluded.last_seq, backlog = excluded.backlog, hw = excluded.hw, "
                "src = excluded.src, dur = excluded.dur, leaf = excluded.leaf "
                "WHERE excluded.leaf > births.leaf",
                [(b.dev, b.received, b.fw, b.boot, b.last_seq, b.backlog, b.hw, b.src, b.dur,
                  leaf) for b, leaf in births])
            cur.execute("INSERT INTO meta (k, v) VALUES ('indexed_upto', ?) "
                        "ON CONFLICT(k) DO UPDATE SET v = MAX(v, excluded.v)", (log_size,))
            cur.executemany("INSERT OR IGNORE INTO readings (dev, seq, digest, leaf) "
                            "VALUES (?, ?, ?, ?)", [r[:4] for r in rows])
            for dev, seq, digest, _leaf, t in rows:
                cur.execute(
                    "UPDATE devices SET gaps = gaps + (CASE WHEN ? > last_seq + 1 THEN ? - last_seq - 1 "
                    "ELSE 0 END), last_seq = ?, last_digest = ?, last_t = ? "
                    "WHERE dev = ? AND ? > last_seq", (seq, seq, seq, digest, t, dev, seq))

    def contiguous_seq(self, dev: bytes) -> int:
        """Highest seq such that every reading 1..seq of dev is logged (what an ack says)."""
        row = self.db.execute(
            "SELECT COUNT(*), MAX(seq) FROM readings WHERE dev = ?", (dev,)).fetchone()
        count, top = row[0], row[1] or 0
        if count == top:
            return int(top)
        # a hole: find the first missing seq
        seqs = [r[0] for r in self.db.execute(
            "SELECT seq FROM readings WHERE dev = ? ORDER BY seq", (dev,))]
        for expected, seq in enumerate(seqs, start=1):
            if seq != expected:
                return expected - 1
        return len(seqs)

    # -- quarantine ---------------------------------------------------------------------
    def quarantine(self, dev: bytes, raw: bytes, t: int, per_meter: int = QUARANTINE_PER_METER,
                   total: int = QUARANTINE_TOTAL) -> tuple[bool, int]:
        """Hold a message of an unknown meter; (whether it was new, how many older messages
        were dropped to stay within `per_meter` and `total`)."""
        cur = self.db.execute("INSERT OR IGNORE INTO quarantine (dev, raw, received) VALUES (?, ?, ?)",
                              (dev, raw, t))
        return cur.rowcount == 1, self._trim("quarantine", dev, per_meter, total)

    def _trim(self, table: str, dev: bytes | None, per_meter: int, total: int | None) -> int:
        """Drop the oldest rows of `table` beyond `per_meter` for dev and `total` in all."""
        dropped = 0
        if dev is not None:
            dropped += self.db.execute(
                f"DELETE FROM {table} WHERE dev = ? AND id <= (SELECT id FROM {table} "
                "WHERE dev = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (dev, dev, per_meter)).rowcount
        if total is not None:
            dropped += self.db.execute(
                f"DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id DESC "
                "LIMIT 1 OFFSET ?)", (total,)).rowcount
        return dropped

    def quarantine_size(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])

    def quarantined(self, dev: bytes | None = None) -> list[tuple[bytes, bytes, int]]:
        if dev is None:
            rows = self.db.execute("SELECT dev, raw, received FROM quarantine ORDER BY id")
        else:
            rows = self.db.execute("SELECT dev, raw, received FROM quarantine WHERE dev = ? "
                                   "ORDER BY id", (dev,))
        return [(r[0], r[1], r[2]) for r in rows]

    def release(self, dev: bytes) -> Iterator[bytes]:
        """Quarantined messages of dev, removed from quarantine (the caller reprocesses them)."""
        rows = self.quarantined(dev)
        self.db.execute("DELETE FROM quarantine WHERE dev = ?", (dev,))
        for _, raw, _ in rows:
            yield raw

    # -- evidence and alerts ----------------------------------------------------------------
    def add_evidence(self, dev: bytes, seq: int, logged: bytes, conflicting: bytes, t: int) -> bool:
        cur = self.db.execute(
            "INSERT OR IGNORE INTO evidence (dev, seq, logged, conflicting, received) "
            "VALUES (?, ?, ?, ?, ?)", (dev, seq, logged, conflicting, t))
        self._trim("evidence", dev, EVIDENCE_PER_METER, None)
        return cur.rowcount == 1

    def evidence(self) -> list[tuple[bytes, int, bytes, bytes]]:
        return [(r[0], r[1], r[2], r[3]) for r in self.db.execute(
            "SELECT dev, seq, logged, conflicting FROM evidence ORDER BY id")]

    def alert(self, t: int, kind: str, dev: bytes | None, detail: str) -> None:
        self.db.execute("INSERT INTO alerts (t, kind, dev, detail) VALUES (?, ?, ?, ?)",
                        (t, kind, dev, detail))
        self._trim("alerts", dev, ALERTS_PER_METER, ALERTS_TOTAL)

    def alerts(self) -> list[tuple[int, str, bytes | None, str]]:
        return [(r[0], r[1], r[2], r[3]) for r in self.db.execute(
            "SELECT t, kind, dev, detail FROM alerts ORDER BY id")]
