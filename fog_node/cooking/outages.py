"""Open outages per feeder, and the closed outage records they become (docs/PROTOCOL.md
section 18): what outage compensation needs on the dispatch chain, for each outage, its
meters, its start and its end.

An outage of a group (a feeder, `other`, `all` or `merged`) opens at the first closed
interval with an "outage" fault (start = that interval's start, ivl - dur) and gathers the
union of the meters down in each of its intervals. It closes at the first later close that
cooks the group without one: its end is the end of the last interval in outage (the closing
interval's start when they follow each other). Closing writes the closed outage record(s),
split at OUTAGE_METERS_MAX meters (same start and end), which wait in cooked.db until the
fault reporter (fog_node.chainlink.faults) has queued their `fault` transactions.

All of it lives in cooked.db, written inside the interval close's transaction
(aggregates.py), so a restart resumes the open outages and the records not yet queued:

    open_outages    feeder -> start, last_ivl (the end of its latest interval in outage)
    outage_meters   (feeder, start, dev): the meters down in it so far
    outage_records  id, feeder, start, end, part (1..parts), parts, meters (ascending 8-byte
                    ids, concatenated), closed (fog time of the close that ended it), state
                    (NULL until reported, then "queued" or "dropped"); one per
                    (feeder, start, part), so an outage is recorded once whatever is cooked
                    again (revisions never touch these tables)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fog_node.cooking.feeders import Fault
from meterledger.wire import chain as C

OUTAGES_SCHEMA = """
CREATE TABLE IF NOT EXISTS open_outages (feeder TEXT PRIMARY KEY, start INTEGER NOT NULL,
    last_ivl INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outage_meters (feeder TEXT NOT NULL, start INTEGER NOT NULL,
    dev BLOB NOT NULL, PRIMARY KEY (feeder, start, dev));
CREATE TABLE IF NOT EXISTS outage_records (
    id INTEGER PRIMARY KEY, feeder TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
    part INTEGER NOT NULL, parts INTEGER NOT NULL, meters BLOB NOT NULL,
    closed INTEGER NOT NULL, state TEXT, UNIQUE (feeder, start, part));
CREATE INDEX IF NOT EXISTS outage_records_state ON outage_records (state, id);
"""
QUEUED, DROPPED = "queued", "dropped"  # outage_records.state once reported
RECORDS_KEPT = 10_000  # reported records kept for inspection; pending ones always stay
_COLS = "id, feeder, start, end, part, parts, meters, closed"


@dataclass(frozen=True)
class OutageRecord:
    """One closed outage record (one `fault` transaction with body keys 6-8)."""

    id: int
    feeder: str
    start: int
    end: int
    part: int  # 1..parts: an outage of more than OUTAGE_METERS_MAX meters has several
    parts: int
    meters: tuple[bytes, ...]  # ascending, distinct, 1..OUTAGE_METERS_MAX
    closed: int  # fog time of the close that found the feeder restored: the report's t

    @property
    def detail(self) -> str:
        more = f" (record {self.part} of {self.parts})" if self.parts > 1 else ""
        return (f"feeder {self.feeder} restored after {self.end - self.start} s: "
                f"{len(self.meters)} meter(s){more}")

    @property
    def identity(self) -> str:
        """What names the record across databases (the fault reporter's mark)."""
        return f"{self.feeder}/{self.start}/{self.part}"


@dataclass(frozen=True)
class OpenOutage:
    feeder: str
    start: int
    last_ivl: int
    meters: tuple[bytes, ...]


def track(db: sqlite3.Connection, found: Sequence[Fault], cooked: Iterable[str], ivl: int,
          dur: int, now: int) -> list[OutageRecord]:
    """Follow the open outages through the close of the interval ending at ivl: `found`
    are its faults, `cooked` the groups it cooked. Closes the outages of cooked groups
    without an outage fault (their records are returned, and wait in outage_records),
    opens or extends the others. Runs inside the close's transaction."""
    down: dict[str, set[bytes]] = {}
    for f in found:
        if f.kind == C.OUTAGE:
            down.setdefault(f.feeder, set()).update(f.devs)
    groups = set(cooked)
    closed: list[OutageRecord] = []
    for feeder, start, last in db.execute("SELECT feeder, start, last_ivl FROM open_outages "
                                          "ORDER BY feeder").fetchall():
        if feeder in groups and feeder not in down and ivl > last:
            closed += _close(db, feeder, start, last, now)
    for feeder, devs in sorted(down.items()):
        db.execute("INSERT OR IGNORE INTO open_outages VALUES (?, ?, ?)",
                   (feeder, ivl - dur, ivl))
        db.execute("UPDATE open_outages SET last_ivl = MAX(last_ivl, ?) WHERE feeder = ?",
                   (ivl, feeder))
        (start,) = db.execute("SELECT start FROM open_outages WHERE feeder = ?",
                              (feeder,)).fetchone()
        db.executemany("INSERT OR IGNORE INTO outage_meters VALUES (?, ?, ?)",
                       [(feeder, start, d) for d in sorted(devs)])
    return closed


def _close(db: sqlite3.Connection, feeder: str, start: int, end: int,
           now: int) -> list[OutageRecord]:
    """End the feeder's open outage at `end`: its records, one per OUTAGE_METERS_MAX
    meters; none if (feeder, start) was recorded already."""
    devs = [r[0] for r in db.execute("SELECT dev FROM outage_meters WHERE feeder = ? AND "
                                     "start = ? ORDER BY dev", (feeder, start))]
    db.execute("DELETE FROM outage_meters WHERE feeder = ? AND start = ?", (feeder, start))
    db.execute("DELETE FROM open_outages WHERE feeder = ?", (feeder,))
    n = C.OUTAGE_METERS_MAX
    chunks = [tuple(devs[i:i + n]) for i in range(0, len(devs), n)]
    out: list[OutageRecord] = []
    for part, chunk in enumerate(chunks, 1):
        cur = db.execute("INSERT OR IGNORE INTO outage_records (feeder, start, end, part, "
                         "parts, meters, closed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (feeder, start, end, part, len(chunks), b"".join(chunk), now))
        if cur.rowcount and cur.lastrowid is not None:
            out.append(OutageRecord(cur.lastrowid, feeder, start, end, part, len(chunks),
                                    chunk, now))
    return out


def _record(row: Sequence[Any]) -> OutageRecord:
    rid, feeder, start, end, part, parts, meters, closed = row
    ids = tuple(bytes(meters[i:i + 8]) for i in range(0, len(meters), 8))
    return OutageRecord(int(rid), str(feeder), int(start), int(end), int(part), int(parts),
                        ids, int(closed))


def pending(db: sqlite3.Connection, limit: int) -> list[OutageRecord]:
    """The oldest `limit` records not reported yet, in the order they were closed."""
    return [_record(r) for r in db.execute(f"SELECT {_COLS} FROM outage_records WHERE "
                                           "state IS NULL ORDER BY id LIMIT ?", (limit,))]


def records(db: sqlite3.Connection, feeder: str | None = None) -> list[OutageRecord]:
    """Every record kept (of one feeder), in the order they were closed."""
    rows = db.execute(f"SELECT {_COLS} FROM outage_records WHERE ? IS NULL OR feeder = ? "
                      "ORDER BY id", (feeder, feeder))
    return [_record(r) for r in rows]


def reported(db: sqlite3.Connection, rid: int, state: str) -> None:
    """Mark a record QUEUED (its transaction is in the chain outbox) or DROPPED (the chain
    would refuse it); keep the newest RECORDS_KEPT reported ones."""
    db.execute("UPDATE outage_records SET state = ? WHERE id = ?", (state, rid))
    db.execute("DELETE FROM outage_records WHERE state IS NOT NULL AND id <= "
               "(SELECT MAX(id) FROM outage_records) - ?", (RECORDS_KEPT,))


def open_outages(db: sqlite3.Connection) -> list[OpenOutage]:
    """The outages still open, by feeder, with the meters down in them so far."""
    out = []
    for feeder, start, last in db.execute("SELECT feeder, start, last_ivl FROM open_outages "
                                          "ORDER BY feeder").fetchall():
        devs = tuple(r[0] for r in db.execute("SELECT dev FROM outage_meters WHERE feeder = ? "
                                              "AND start = ? ORDER BY dev", (feeder, start)))
        out.append(OpenOutage(feeder, start, last, devs))
    return out
