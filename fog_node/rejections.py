"""What the fog tells its operator about messages it refused: the first rejection of each
reason per meter, logged once with the reason, the detail and a hint at the usual cause,
then one summary line per meter and reason per `summary_s` while they go on.

Counters (/metrics) say how many; this says why, without drowning a log in 60,000 copies of
the same line when a meter's clock is a year ahead. Memory is bounded: at most
`_TRACKED` (meter, reason) pairs are remembered (the oldest forgotten), so strangers
spraying junk cannot grow it; their messages still count in ingest's counters.

`RejectionRecord` keeps what the dashboard shows (GET /v1/rejections, the per-meter counts
of GET /v1/meters) durably in registry.db, bounded the same way: counts by reason with the
last example of each, counts by meter, and counts per 15-minute bin of the node's clock.
"""

from __future__ import annotations

import logging
import sqlite3
import time as _time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

from meterledger.infra.sqlite import atomic

log = logging.getLogger("fog_node.rejections")

_TRACKED = 4096
SUMMARY_S = 60.0
FIRSTS_PER_WINDOW = 20  # new (meter, reason) first lines per summary window, at most

# why a reason usually happens, and what to do about it (the operator's next step)
HINTS = {
    "future_t": "the meter's clock is ahead of the fog's: a virtual meter on a simulated "
                "clock needs the fog's (run both with the same --sim-* settings, or give the "
                "meters --sim-clock DATA_DIR/sim-clock.json); a board needs NTP or a `time` "
                "command",
    "unknown_meter": "not enrolled: its messages are kept in quarantine until "
                     "`meterledger fog enroll --pub PUB` (see `meterledger fog devices`)",
    "revoked": "this meter was revoked; enroll it again to accept it",
    "wrong_fog": "the meter is configured for another fog (its --fog / config fog id)",
    "topic_mismatch": "a message signed by one meter arrived on another meter's topic",
    "equivocation": "the meter signed two different readings with one seq (a cloned key or "
                    "a restored flash image)",
    "prev_mismatch": "the reading does not chain to the meter's previous one (a restored or "
                     "wiped flash)",
    "bad_signature": "the signature does not verify with the enrolled key (a re-keyed meter "
                     "must be enrolled again)",
}


def hint(reason: str) -> str:
    return HINTS.get(reason, "see docs/PROTOCOL.md section 3 and 12 for this reason code")


_REFUSED = ("rejected", "quarantined")


class Refusal(Protocol):
    """What an ingest Outcome (fog_node.ingest) tells of a message."""

    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def dev(self) -> bytes | None: ...
    @property
    def detail(self) -> str: ...


@dataclass
class _Seen:
    since: float      # start of the current summary window
    more: int = 0     # rejections after the first one, in this window
    last_detail: str = ""


class RejectionLog:
    """Feed it each group's outcomes (`note`); it logs what an operator needs to see."""

    def __init__(self, summary_s: float = SUMMARY_S, tracked: int = _TRACKED,
                 monotonic: Callable[[], float] | None = None) -> None:
        self.summary_s = summary_s
        self.tracked = tracked
        # real time paces the summaries, never the node's (possibly simulated) clock
        self.monotonic = monotonic or _time.monotonic
        self.seen: OrderedDict[tuple[bytes, str], _Seen] = OrderedDict()
        # first lines per window: strangers with fresh key ids must not flood the log
        self.firsts_max = FIRSTS_PER_WINDOW
        self._window = self.monotonic()
        self._firsts = 0
        self._held: Counter[str] = Counter()  # reason -> first lines held back
        self._scan_at = 0.0

    def note(self, outcomes: Iterable[Refusal]) -> None:
        """One ingest group's outcomes (on the ingest thread: a logged one costs a compare)."""
        now = self.monotonic()
        for o in outcomes:
            if o.status in _REFUSED:
                self._one(o.dev or b"", o.reason, o.detail, now)
        if now >= self._scan_at:  # the windows' ends, looked for once a second
            self._scan_at = now + 1.0
            self.flush(now)

    def _one(self, dev: bytes, reason: str, detail: str, now: float) -> None:
        key = (dev, reason)
        s = self.seen.get(key)
        if s is not None:
            s.more += 1
            s.last_detail = detail
            return
        self.seen[key] = _Seen(now)
        while len(self.seen) > self.tracked:
            self.seen.popitem(last=False)
        self._firsts += 1
        if self._firsts > self.firsts_max:
            self._held[reason] += 1
            return
        who = f"meter {dev.hex()}" if dev else "a sender with no valid key id"
        what = "quarantined" if reason == "unknown_meter" else "rejected"
        log.warning("%s: message %s (%s)%s; hint: %s", who, what, reason,
                    f": {detail}" if detail else "", hint(reason))

    def flush(self, now: float | None = None) -> None:
        """The summary lines of the windows that ended."""
        now = self.monotonic() if now is None else now
        if now - self._window >= self.summary_s:
            if self._held:
                log.warning("%d more meters' first refusals not logged in the last %.0f s "
                            "(%s): more than %d new ones", sum(self._held.values()),
                            now - self._window, ", ".join(f"{r} {n}" for r, n in
                                                         sorted(self._held.items())),
                            self.firsts_max)
            self._window, self._firsts, self._held = now, 0, Counter()
        for (dev, reason), s in self.seen.items():
            if now - s.since < self.summary_s:
                continue
            if s.more:
                who = f"meter {dev.hex()}" if dev else "senders with no valid key id"
                log.warning("%s: %d more %s rejection(s) in the last %.0f s (last: %s)", who,
                            s.more, reason, now - s.since, s.last_detail or "-")
            s.since, s.more = now, 0



# -- the durable record (registry.db): what GET /v1/rejections and /v1/meters show ------------
INTERVAL_S = 900  # the record's bins: 15 minutes of the node's clock
INTERVALS_KEPT = 2880  # 30 days of bins; older ones are dropped
METERS_KEPT = 10_000  # meters (or strangers' key ids) with a count; the stalest dropped
REASONS_KEPT = 256  # reason codes with a count and a last example; far more than exist
DETAIL_KEPT = 300  # characters of a rejection's detail kept as its example
RAW_KEPT = 4096  # bytes of a rejected message kept as its example (a message's most)
_RECORD = """
CREATE TABLE IF NOT EXISTS rejection_reasons (
    reason TEXT PRIMARY KEY, n INTEGER NOT NULL, first_t INTEGER NOT NULL,
    last_t INTEGER NOT NULL, last_dev BLOB, last_detail TEXT NOT NULL, last_raw BLOB);
CREATE TABLE IF NOT EXISTS rejection_meters (
    dev BLOB PRIMARY KEY, n INTEGER NOT NULL, last_t INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rejection_meters_t ON rejection_meters (last_t);
CREATE TABLE IF NOT EXISTS rejection_series (start INTEGER PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""
# what each bound dropped, in the registry's meta table
DROPPED = {"meters": "rejections_dropped_meters", "reasons": "rejections_dropped_reasons",
           "intervals": "rejections_dropped_intervals"}


class Rejected(Refusal, Protocol):
    @property
    def raw(self) -> bytes: ...


FLUSH_S = 1.0  # the record is written at most this often (monotonic seconds)


@dataclass
class _Reason:
    n: int
    first_t: int
    last_t: int
    last: Rejected


class RejectionRecord:
    """Rejected messages counted durably in registry.db, bounded: per reason (with the last
    example: when, the meter, the detail, the message's bytes), per meter, and per
    INTERVAL_S bin. Quarantined messages are not rejections (the quarantine holds them).
    What a bound drops (oldest first) is counted in DROPPED.

    `note` only counts in memory (on the ingest thread, under the node's lock: no write,
    no fsync per group); the counts are written in one transaction at most every
    `every_s` (by `note` when it is due, by `tick` from the ingest thread's clockwork, and
    by `flush` at close), so the record lags the ingest by about a second. A write that
    fails (sqlite3.Error) never fails a group: it is counted in `errors`, logged once, and
    the counts are kept (bounded) for the next write."""

    def __init__(self, db: sqlite3.Connection, every_s: float = FLUSH_S,
                 monotonic: Callable[[], float] | None = None) -> None:
        self.db = db
        db.executescript(_RECORD)
        self.every_s = every_s
        self.monotonic = monotonic or _time.monotonic
        self._due = 0.0  # the first rejections are written at once
        self._reasons: dict[str, _Reason] = {}
        self._devs: dict[bytes, tuple[int, int]] = {}  # dev -> (n, last_t)
        self._bins: Counter[int] = Counter()  # bin start -> n
        self._lost_devs = 0  # meters beyond METERS_KEPT in one pending write: dropped
        self.errors = 0  # writes that failed
        self._logged = False

    @property
    def pending(self) -> bool:
        return bool(self._reasons)

    def note(self, now: int, outcomes: Iterable[Rejected]) -> None:
        """Count a group's rejections (memory only); write them when a write is due."""
        for o in outcomes:
            if o.status != "rejected":
                continue
            r = self._reasons.get(o.reason)
            if r is None:
                self._reasons[o.reason] = _Reason(1, now, now, o)
            else:
                r.n, r.last_t, r.last = r.n + 1, now, o
            if o.dev:
                have = self._devs.pop(o.dev, None)
                self._devs[o.dev] = ((have[0] if have else 0) + 1, now)  # newest last
                if len(self._devs) > METERS_KEPT:  # the table would drop the stalest anyway
                    del self._devs[next(iter(self._devs))]
                    self._lost_devs += 1
            self._bins[now // INTERVAL_S * INTERVAL_S] += 1
        self.tick()

    def tick(self) -> None:
        """Write the counts if there are any and a write is due (the ingest thread)."""
        if self._reasons and self.monotonic() >= self._due:
            self.flush()

    def flush(self) -> None:
        """Write the counts now (one transaction); a failure is counted, logged once."""
        if not self._reasons:
            return
        self._due = self.monotonic() + self.every_s
        try:
            # its own transaction, or a part of the caller's
            with nullcontext() if self.db.in_transaction else atomic(self.db):
                self._write()
        except sqlite3.Error as e:
            self.errors += 1
            if not self._logged:
                self._logged = True
                log.error("the rejection record (registry.db) cannot be written: %s; the "
                          "counts are kept in memory and written again (logged once)", e)
            return
        self._reasons, self._devs, self._bins = {}, {}, Counter()
        self._lost_devs = 0

    def _write(self) -> None:
        q = self.db.execute
        for reason, r in self._reasons.items():
            o = r.last
            q("INSERT INTO rejection_reasons VALUES (?, ?, ?, ?, ?, ?, ?) "
              "ON CONFLICT(reason) DO UPDATE SET n = n + excluded.n, last_t = excluded.last_t, "
              "last_dev = excluded.last_dev, last_detail = excluded.last_detail, "
              "last_raw = excluded.last_raw",
              (reason, r.n, r.first_t, r.last_t, o.dev or None, o.detail[:DETAIL_KEPT],
               o.raw[:RAW_KEPT] or None))
        self.db.executemany(
            "INSERT INTO rejection_meters VALUES (?, ?, ?) ON CONFLICT(dev) DO UPDATE SET "
            "n = n + excluded.n, last_t = excluded.last_t",
            [(dev, n, t) for dev, (n, t) in self._devs.items()])
        self._dropped("meters", self._lost_devs)
        self.db.executemany(
            "INSERT INTO rejection_series VALUES (?, ?) ON CONFLICT(start) DO UPDATE SET "
            "n = n + excluded.n", list(self._bins.items()))
        start = max(self._bins)
        self._dropped("intervals", q("DELETE FROM rejection_series WHERE start < ?", (
            start - (INTERVALS_KEPT - 1) * INTERVAL_S,)).rowcount)
        self._trim("meters", "rejection_meters", "dev", METERS_KEPT)
        self._trim("reasons", "rejection_reasons", "reason", REASONS_KEPT)

    def _trim(self, what: str, table: str, key: str, keep: int) -> None:
        """Drop the rows of `table` seen least recently beyond `keep`."""
        (n,) = self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        if n > keep:
            self._dropped(what, self.db.execute(
                f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "
                f"ORDER BY last_t, {key} LIMIT ?)", (n - keep,)).rowcount)

    def _dropped(self, what: str, n: int) -> None:
        if n:
            self.db.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE "
                            "SET v = v + excluded.v", (DROPPED[what], n))
