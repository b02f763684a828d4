"""The fog's cooked data: VEE on every logged reading, type-10 estimates for missing and failed
intervals, and type-11 feeder aggregates at every interval close (docs/VEE.md,
docs/PROTOCOL.md section 18).

The log is the source of truth; the Cooker keeps an index of it (cooked.db) and follows it
with a cursor, so readings arriving over MQTT and RS485 and its own entries are seen the
same way, and a restart resumes where the index stopped. Each `tick` (the service's seal
timer) indexes what was logged since, validates new readings, and logs what the new data
calls for: supersessions of estimates a true reading made obsolete, new estimates (exact
register differences split over the gap), and revisions of aggregates of intervals closed
already. `close(ivl)` logs the aggregates of one interval and returns the digest the
checkpoint's `agg` carries. Nothing logged is ever changed: corrections are new entries.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from fog_node.cooking import vee
from fog_node.cooking.feeders import (
    ESTIMATED,
    MEASURED,
    MISSING,
    Fault,
    Feeder,
    FeederRules,
    Group,
    MeterInterval,
    cook,
    groups,
    same_content,
)
from fog_node.log.store import LogStore
from fog_node.registry import Registry
from meterledger import wire as P
from meterledger.infra.sqlite import atomic, meta, set_meta

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    dev BLOB NOT NULL, seq INTEGER NOT NULL, t INTEGER NOT NULL, dur INTEGER NOT NULL,
    imp INTEGER NOT NULL, exp INTEGER NOT NULL, flags INTEGER NOT NULL, vmin INTEGER,
    vmax INTEGER, digest BLOB NOT NULL, leaf INTEGER NOT NULL, bound INTEGER NOT NULL,
    PRIMARY KEY (dev, seq));
CREATE INDEX IF NOT EXISTS readings_t ON readings (t);
CREATE TABLE IF NOT EXISTS estimates (
    digest BLOB PRIMARY KEY, dev BLOB NOT NULL, from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL, start INTEGER NOT NULL, last_end INTEGER NOT NULL,
    method TEXT NOT NULL, ivls TEXT NOT NULL, leaf INTEGER NOT NULL, msg BLOB NOT NULL,
    superseded INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS estimates_dev ON estimates (dev, from_seq);
CREATE INDEX IF NOT EXISTS estimates_end ON estimates (last_end);
CREATE TABLE IF NOT EXISTS aggregates (
    feeder TEXT NOT NULL, ivl INTEGER NOT NULL, rev INTEGER NOT NULL, digest BLOB NOT NULL,
    leaf INTEGER NOT NULL, msg BLOB NOT NULL, PRIMARY KEY (feeder, ivl, rev));
CREATE INDEX IF NOT EXISTS aggregates_leaf ON aggregates (leaf);
CREATE TABLE IF NOT EXISTS dirty_devs (dev BLOB NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (dev, seq));
CREATE TABLE IF NOT EXISTS dirty_ivls (ivl INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS open_faults (kind TEXT NOT NULL, feeder TEXT NOT NULL,
    since INTEGER NOT NULL, PRIMARY KEY (kind, feeder));
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""

# the aggregates of one close are logged in chunks, each followed by a checkpoint, so that an
# anchor can always carry a checkpoint with the aggregates it covers within 4096 bytes
AGGREGATES_PER_CHECKPOINT = 10
# errors that keep a reading from bounding an estimate (a reset still starts a new register
# run, so register_reset and register_monotonic readings do bound one: method "none")
_UNUSABLE = frozenset((vee.RULE_FLAG_TAMPER, vee.RULE_FLAG_SOURCE_ERROR, vee.RULE_ON_GRID,
                       vee.RULE_TIME_ORDER, vee.RULE_ENERGY_WITHIN_RATING,
                       vee.RULE_IMPORT_EXPORT_BOTH))


@dataclass(frozen=True)
class CookConfig:
    interval_s: int = 900
    feeders: tuple[Feeder, ...] = ()
    rules: FeederRules = field(default_factory=FeederRules)
    rating: vee.MeterRating = vee.DEFAULT_RATING
    vee: vee.VeeConfig = vee.DEFAULT_CONFIG
    revision_intervals: int = 96  # late data revises aggregates up to a day back
    profile: bool = True  # shape estimates by the feeder's measured profile when known


@dataclass
class Closed:
    """What closing one interval logged."""

    ivl: int
    agg: bytes | None  # digest of the last aggregate (the checkpoint's agg), None if none
    aggregates: list[bytes] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)  # newly raised (not still open)
    suppressed: list[str] = field(default_factory=list)


def _reading_fields(row: Sequence[Any]) -> P.Fields:
    dev, seq, t, dur, imp, exp, flags = row[:7]
    return {0: P.READING, 1: dev, 2: seq, 3: t, 4: dur, 5: imp, 6: exp, 7: flags}


_COLS = "dev, seq, t, dur, imp, exp, flags, vmin, vmax, digest, leaf, bound"


class Cooker:
    def __init__(self, key: P.SigningKey, log: LogStore, registry: Registry, path: Path | str,
                 config: CookConfig) -> None:
        self.key = key
        self.log = log
        self.registry = registry
        self.config = config
        self.counters: Counter[str] = Counter()
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self._history: dict[bytes, deque[int]] = {}  # spike baselines, rebuilt as data comes
        self._last: dict[bytes, tuple[Any, ...]] = {}  # each meter's highest-seq reading row
        self._pending: list[tuple[Any, ...]] = []  # reading rows indexed, not yet written

    def close_db(self) -> None:
        self.db.close()

    def _meta(self, k: str) -> int | None:
        v = meta(self.db, k)
        return None if v is None else int(v)

    def _set_meta(self, k: str, v: int) -> None:
        set_meta(self.db, k, v)

    @property
    def last_closed(self) -> int | None:
        return self._meta("last_closed")

    # -- following the log ------------------------------------------------------------------
    def catch_up(self, now: int) -> int:
        """Index log entries since the cursor; returns how many were read."""
        start, size = self._meta("cursor") or 0, self.log.size()
        if start >= size:
            return 0
        last_closed = self.last_closed
        rows = self._pending
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for idx in range(start, size):
                m = P.parse(self.log.entry(idx), schema=False)
                if m.type == P.READING:
                    rows.append(self._index_reading(m, idx, now, last_closed))
                    continue
                self._flush_readings(rows)
                if m.type == P.ESTIMATE:
                    self._index_estimate(m, idx, last_closed)
                elif m.type == P.AGGREGATE:
                    f = m.fields
                    self.db.execute("INSERT OR IGNORE INTO aggregates VALUES (?, ?, ?, ?, ?, ?)",
                                    (f[1], f[2], f[16], m.digest, idx, m.raw))
            self._flush_readings(rows)
            self._set_meta("cursor", size)
        except BaseException:
            self.db.execute("ROLLBACK")
            self._last.clear()
            rows.clear()
            raise
        self.db.execute("COMMIT")
        return size - start

    def _flush_readings(self, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self.db.executemany(f"INSERT OR IGNORE INTO readings ({_COLS}) VALUES "
                                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.executemany("INSERT OR IGNORE INTO dirty_devs VALUES (?, ?)",
                                [(r[0], r[1]) for r in rows])
            rows.clear()

    def _previous(self, dev: bytes, seq: int) -> tuple[Any, ...] | None:
        """The meter's indexed reading with the highest seq below `seq`: from memory in the
        in-order case, else from the index (after writing the rows still in memory)."""
        last = self._last.get(dev)
        if last is not None and last[1] == seq - 1:
            return last
        self._flush_readings(self._pending)
        row = self.db.execute(f"SELECT {_COLS} FROM readings WHERE dev = ? AND seq < ? "
                              "ORDER BY seq DESC LIMIT 1", (dev, seq)).fetchone()
        return tuple(row) if row else None

    def _dirty_ivls(self, lo: int, hi: int, last_closed: int | None) -> None:
        """Mark closed intervals overlapping (lo, hi] for a revision check."""
        if last_closed is None:
            return
        i = self.config.interval_s
        first = max((lo // i + 1) * i, last_closed - self.config.revision_intervals * i)
        for ivl in range(first, min(-(-hi // i) * i, last_closed) + 1, i):
            self.db.execute("INSERT OR IGNORE INTO dirty_ivls VALUES (?)", (ivl,))

    def _index_reading(self, m: P.Message, idx: int, now: int, last_closed: int | None,
                       ) -> tuple[Any, ...]:
        f = m.fields
        dev, seq = f[1], f[2]
        row = self._previous(dev, seq)
        previous = _reading_fields(row) if row else None
        hist = self._history.setdefault(dev, deque(maxlen=self.config.vee.spike_history))
        findings = vee.validate(f, previous, hist, self.config.rating, self.config.vee)
        bound = True
        for finding in findings:
            self.counters[f"vee_{finding.rule}"] += 1
            if finding.severity is vee.Severity.ERROR:
                self.registry.alert(now, f"vee_{finding.rule}", dev,
                                    f"seq {seq}: {finding.detail}")
                if finding.rule in _UNUSABLE:
                    bound = False
        if previous is not None and previous[2] == seq - 1 and bound \
                and vee.gap_ends(previous, f) == [f[3]]:
            energy = vee.interval_energy(previous, f)
            if energy is not None:
                hist.append(energy[0])
        q = f.get(9, {})
        new = (dev, seq, f[3], f[4], f[5], f[6], f[7], q.get(1), q.get(2), m.digest, idx,
               int(bound))
        last = self._last.get(dev)
        if last is None or seq > last[1]:
            self._last[dev] = new
        self._dirty_ivls(f[3] - f[4], f[3] + f[4], last_closed)
        self.counters["readings_indexed"] += 1
        return new

    def _index_estimate(self, m: P.Message, idx: int, last_closed: int | None) -> None:
        f = m.fields
        if f[2] == vee.KIND_SUPERSEDE:
            row = self.db.execute("SELECT start, last_end FROM estimates WHERE digest = ?",
                                  (f[11],)).fetchone()
            self.db.execute("UPDATE estimates SET superseded = ? WHERE digest = ?", (idx, f[11]))
            if row:
                self._dirty_ivls(row[0], row[1], last_closed)
            return
        ivls = f[10]
        self.db.execute("INSERT OR IGNORE INTO estimates (digest, dev, from_seq, to_seq, start, "
                        "last_end, method, ivls, leaf, msg) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (m.digest, f[1], f[6], f[8], f[9], ivls[-1][0], f[4], json.dumps(ivls),
                         idx, m.raw))
        self._dirty_ivls(f[9], ivls[-1][0], last_closed)

    # -- estimation ---------------------------------------------------------------------------
    def _append(self, payloads: list[P.Fields]) -> list[bytes]:
        msgs = [P.sign1(self.key, p) for p in payloads]
        if msgs:
            self.log.append_batch(msgs)
            self.registry.record_readings([], self.log.size())
        return msgs

    def estimate(self, now: int) -> list[bytes]:
        """Supersede estimates that new true readings made obsolete and estimate the gaps
        around new readings; returns the type-10 messages logged."""
        dirty: dict[bytes, list[int]] = {}
        for dev, seq in self.db.execute("SELECT dev, seq FROM dirty_devs").fetchall():
            dirty.setdefault(dev, []).append(seq)
        if not dirty:
            return []
        out: list[P.Fields] = []
        for dev, seqs in dirty.items():
            out += self._estimate_meter(dev, min(seqs), max(seqs), now)
        msgs = self._append(out)
        self.db.execute("DELETE FROM dirty_devs")
        self.catch_up(now)
        self.counters["estimates_logged"] += sum(1 for p in out if p[2] == vee.KIND_ESTIMATE)
        self.counters["supersessions_logged"] += sum(1 for p in out
                                                     if p[2] == vee.KIND_SUPERSEDE)
        return msgs

    def _estimate_meter(self, dev: bytes, lo: int, hi: int, now: int) -> list[P.Fields]:
        q = self.db.execute
        # from the usable reading before the new ones to the usable reading after them
        below = q("SELECT MAX(seq) FROM readings WHERE dev = ? AND seq < ? AND bound = 1",
                  (dev, lo)).fetchone()[0]
        above = q("SELECT MIN(seq) FROM readings WHERE dev = ? AND seq > ? AND bound = 1",
                  (dev, hi)).fetchone()[0]
        first, last = (below if below is not None else lo), (above if above is not None else hi)
        rows = q(f"SELECT {_COLS} FROM readings WHERE dev = ? AND seq BETWEEN ? AND ? "
                 "AND bound = 1 ORDER BY seq", (dev, first, last)).fetchall()
        live = q("SELECT digest, from_seq, to_seq, msg FROM estimates WHERE dev = ? AND "
                 "superseded = 0 AND to_seq > ? AND from_seq < ?", (dev, first, last)).fetchall()
        out: list[P.Fields] = []
        have: set[tuple[int, int]] = set()
        for digest, from_seq, to_seq, msg in live:
            inside = [r for r in rows if from_seq < r[1] < to_seq]
            if inside:  # a true reading within the gap: the estimate is obsolete
                r = inside[0]
                est = P.parse(msg, schema=False).fields
                out.append(vee.supersession_payload(est, digest, _reading_fields(r), r[9], now,
                                                    self.key.id))
            else:
                have.add((from_seq, to_seq))
        for before, after in pairwise(rows):
            bf, af = _reading_fields(before), _reading_fields(after)
            ends = vee.gap_ends(bf, af)
            if (before[1], after[1]) in have:
                continue
            if vee.reset_in_gap(bf, af):
                if after[1] == before[1] + 1 and len(ends) == 1:
                    continue  # the reading's own interval: its REGISTER_RESET says it all
                start = bf[3]
                for chunk in vee.chunked(ends):
                    out.append(vee.unknown_gap_payload(bf, before[9], af, after[9], chunk, now,
                                                       self.key.id, start))
                    start = chunk[-1]
                continue
            if after[1] == before[1] + 1 and len(ends) == 1:
                continue  # measured
            profile = self._profile(dev, ends, af[4])
            ivls = vee.estimate_gap(bf, af, ends, profile[0] if profile else None,
                                    profile[1] if profile else None)
            method = vee.METHOD_PROFILE if profile else vee.METHOD_LINEAR
            for part in vee.chunked(ivls):
                out.append(vee.estimate_payload(bf, before[9], af, after[9], part, method, now,
                                                self.key.id))
        return out

    def _profile(self, dev: bytes, ends: list[int], dur: int) -> tuple[list[float], list[float]] | None:
        """The import and export shape of the meter's feeder over `ends`, from the feeder's
        latest aggregates of those intervals; None (linear) unless every one is known."""
        if not self.config.profile or dur != self.config.interval_s or len(ends) < 2:
            return None
        feeder = next((f.name for f in self.config.feeders if dev in f.meters), None)
        if feeder is None:
            return None
        imp: list[float] = []
        exp: list[float] = []
        for end in ends:
            row = self.db.execute("SELECT msg FROM aggregates WHERE feeder = ? AND ivl = ? "
                                  "ORDER BY rev DESC LIMIT 1", (feeder, end)).fetchone()
            if row is None:
                return None
            f = P.parse(row[0], schema=False).fields
            n = f[7] + f[8]
            if n == 0:
                return None
            imp.append(f[4] / n)
            exp.append(f[5] / n)
        return imp, exp

    # -- aggregates -------------------------------------------------------------------------------
    def _meter_intervals(self, devs: set[bytes], ivl: int) -> dict[bytes, MeterInterval]:
        """Each meter's energy in (ivl - interval_s, ivl]: measured pairs first, estimates for
        the rest; missing unless the interval is tiled exactly."""
        i = self.config.interval_s
        lo = ivl - i
        by_dev: dict[bytes, list[Any]] = {}
        for row in self.db.execute(f"SELECT {_COLS} FROM readings WHERE t BETWEEN ? AND ? "
                                   "ORDER BY dev, seq", (lo, ivl)):
            if row[0] in devs:
                by_dev.setdefault(row[0], []).append(row)
        ests: dict[bytes, list[tuple[int, int, int, int, bool]]] = {}
        for dev, start, method, ivls in self.db.execute(
                "SELECT dev, start, method, ivls FROM estimates WHERE superseded = 0 AND "
                "last_end > ? AND start < ?", (lo, ivl)):
            if dev not in devs:
                continue
            s = start
            for item in json.loads(ivls):
                known = method != vee.METHOD_NONE
                ests.setdefault(dev, []).append(
                    (s, item[0], item[1] if known else 0, item[2] if known else 0, known))
                s = item[0]
        out: dict[bytes, MeterInterval] = {}
        for dev in devs:
            rows = by_dev.get(dev, [])
            inside = [r for r in rows if r[2] > lo]
            flags = 0
            for r in inside:
                flags |= r[6]
            vmins = [r[7] for r in inside if r[7] is not None]
            vmaxs = [r[8] for r in inside if r[8] is not None]
            segs: list[tuple[int, int, int, int, str]] = []
            good = [r for r in rows if r[11]]
            for b, a in pairwise(good):
                bf, af = _reading_fields(b), _reading_fields(a)
                if a[1] == b[1] + 1 and vee.gap_ends(bf, af) == [a[2]]:
                    e = vee.interval_energy(bf, af)
                    if e is not None:
                        segs.append((b[2], a[2], e[0], e[1], MEASURED))
            for s, e_, imp, exp, known in ests.get(dev, []):
                if s >= lo and e_ <= ivl and not any(x[0] < e_ and s < x[1] for x in segs):
                    segs.append((s, e_, imp, exp, ESTIMATED if known else MISSING))
            segs.sort()
            pos, ok = lo, True
            for s, e_, _, _, kind in segs:
                if s != pos or kind == MISSING:
                    ok = False
                    break
                pos = e_
            ok = ok and pos == ivl and bool(segs)
            status = MISSING
            if ok:
                status = ESTIMATED if any(x[4] == ESTIMATED for x in segs) else MEASURED
            out[dev] = MeterInterval(
                dev, status, sum(x[2] for x in segs) if ok else 0,
                sum(x[3] for x in segs) if ok else 0, flags,
                min(vmins) if vmins else None, max(vmaxs) if vmaxs else None,
                tuple(r[10] for r in inside), silent=not inside)
        return out

    def _groups(self) -> tuple[list[Group], list[str]]:
        active = [d.dev for d in self.registry.devices() if d.active]
        return groups(self.config.feeders, active, self.config.rules.privacy_min_meters)

    def _latest(self, feeder: str, ivl: int) -> tuple[int, bytes, bytes] | None:
        row = self.db.execute("SELECT rev, digest, msg FROM aggregates WHERE feeder = ? AND "
                              "ivl = ? ORDER BY rev DESC LIMIT 1", (feeder, ivl)).fetchone()
        return (int(row[0]), row[1], row[2]) if row else None

    def _cook(self, ivl: int) -> tuple[list[tuple[Group, Any]], list[str]]:
        gs, suppressed = self._groups()
        devs = {d for g in gs for d in g.members} | {g.head for g in gs if g.head}
        data = self._meter_intervals(devs, ivl)
        return [(g, cook(g, ivl, self.config.interval_s, data, self.config.rules))
                for g in gs], suppressed

    def _log_aggregates(self, items: list[P.Fields], seal: Callable[[], object] | None,
                        ) -> list[bytes]:
        """Sign and log aggregates of one interval, chained through prev, in chunks."""
        msgs: list[bytes] = []
        prev = P.ZERO32
        size = self.log.size()  # every input of these aggregates is a log entry below it
        for n in range(0, len(items), AGGREGATES_PER_CHECKPOINT):
            chunk = []
            for f in items[n:n + AGGREGATES_PER_CHECKPOINT]:
                f[14], f[15], f[17] = size, prev, self.key.id
                raw = P.sign1(self.key, f)
                prev = P.digest(raw)
                chunk.append(raw)
            self.log.append_batch(chunk)
            self.registry.record_readings([], self.log.size())
            msgs += chunk
            if seal is not None and n + AGGREGATES_PER_CHECKPOINT < len(items):
                seal()
        return msgs

    def close(self, ivl: int, now: int, seal: Callable[[], object] | None = None) -> Closed:
        """Log the aggregates of the interval ending at ivl (once: a second call returns
        what the first logged). `seal` is called between chunks of aggregates."""
        self.catch_up(now)
        self.estimate(now)
        last, i = self.last_closed, self.config.interval_s
        if last is not None and ivl - last > i:  # closes missed while the node was down
            for missed in range(max(last + i, ivl - self.config.revision_intervals * i), ivl, i):
                if self._close_one(missed, now, seal).aggregates and seal is not None:
                    seal()  # so that each checkpoint covers one interval's aggregates
        return self._close_one(ivl, now, seal)

    def _close_one(self, ivl: int, now: int, seal: Callable[[], object] | None) -> Closed:
        last = self.last_closed
        rows = self.db.execute("SELECT digest, msg FROM aggregates WHERE ivl = ? AND rev = 0 "
                               "ORDER BY leaf", (ivl,)).fetchall()
        if rows or (last is not None and ivl <= last):  # closed already (maybe before a crash)
            if last is None or last < ivl:
                self._set_meta("last_closed", ivl)
            return Closed(ivl, rows[-1][0] if rows else None, [r[1] for r in rows])
        cooked, suppressed = self._cook(ivl)
        items = []
        for _, c in cooked:
            f = dict(c.fields)
            f[16] = 0
            items.append(f)
        msgs = self._log_aggregates(items, seal)
        self.catch_up(now)
        with atomic(self.db):
            self._set_meta("last_closed", ivl)
            faults = self._faults([flt for _, c in cooked for flt in c.faults],
                                  [g.name for g, _ in cooked], now)
        self.counters["aggregates_logged"] += len(msgs)
        self.counters["intervals_closed"] += 1
        self.counters["groups_suppressed"] += len(suppressed)
        return Closed(ivl, P.digest(msgs[-1]) if msgs else None, msgs, faults, suppressed)

    def _faults(self, found: list[Fault], feeders: list[str], now: int) -> list[Fault]:
        """The faults that start with this interval; faults that ended are closed."""
        new: list[Fault] = []
        still = {(f.kind, f.feeder) for f in found}
        for kind, feeder in self.db.execute("SELECT kind, feeder FROM open_faults").fetchall():
            if (kind, feeder) not in still and feeder in feeders:
                self.db.execute("DELETE FROM open_faults WHERE kind = ? AND feeder = ?",
                                (kind, feeder))
        for f in found:
            cur = self.db.execute("INSERT OR IGNORE INTO open_faults VALUES (?, ?, ?)",
                                  (f.kind, f.feeder, now))
            if cur.rowcount:
                new.append(f)
                self.counters[f"faults_{f.kind}"] += 1
        return new

    def revise(self, now: int, seal: Callable[[], object] | None = None) -> list[bytes]:
        """Log revisions of closed intervals whose cooked data changed with late data."""
        ivls = [r[0] for r in self.db.execute("SELECT ivl FROM dirty_ivls ORDER BY ivl")]
        if not ivls:
            return []
        msgs: list[bytes] = []
        for ivl in ivls:
            cooked, _ = self._cook(ivl)
            items = []
            for g, c in cooked:
                latest = self._latest(g.name, ivl)
                if latest is not None and same_content(
                        P.parse(latest[2], schema=False).fields, c.fields):
                    continue
                f = dict(c.fields)
                f[16] = latest[0] + 1 if latest else 0
                if latest:
                    f[18] = latest[1]
                items.append(f)
            if msgs and items and seal is not None:
                seal()  # each checkpoint covers at most one interval's chunk
            msgs += self._log_aggregates(items, seal)
            self.db.execute("DELETE FROM dirty_ivls WHERE ivl = ?", (ivl,))
        self.catch_up(now)
        self.counters["revisions_logged"] += len(msgs)
        return msgs

    def tick(self, now: int, seal: Callable[[], object] | None = None) -> list[bytes]:
        """Index, estimate and revise; returns the entries logged. `seal` is called between
        chunks of aggregates (see AGGREGATES_PER_CHECKPOINT)."""
        self.catch_up(now)
        return self.estimate(now) + self.revise(now, seal)

    def known_aggregate(self, digest: bytes, below: int) -> bool:
        """Whether an aggregate with this digest is logged at an index below `below`."""
        row = self.db.execute("SELECT 1 FROM aggregates WHERE digest = ? AND leaf < ?",
                              (digest, below)).fetchone()
        return row is not None

    def aggregates_in(self, lo_leaf: int, hi_leaf: int) -> list[bytes]:
        """Type-11 messages at log indices lo_leaf <= i < hi_leaf, in log order."""
        return [r[0] for r in self.db.execute(
            "SELECT msg FROM aggregates WHERE leaf >= ? AND leaf < ? ORDER BY leaf",
            (lo_leaf, hi_leaf))]
