"""The cooked index of the log (cooked.db): every logged reading, estimate, aggregate and
energy statement, followed with a cursor (`catch_up`), with VEE run on each new reading; the
base the estimates (estimates.py), the aggregates (aggregates.py) and the statements
(statements.py) build on. See cooker.py."""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fog_node.cooking import vee
from fog_node.cooking.feeders import (
    Fault,
    Feeder,
    FeederRules,
)
from fog_node.cooking.outages import OUTAGES_SCHEMA, OutageRecord
from fog_node.log.store import LogStore
from fog_node.registry import Registry
from meterledger import wire as P
from meterledger.infra.sqlite import atomic, connect, meta, set_meta

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
CREATE INDEX IF NOT EXISTS aggregates_ivl ON aggregates (ivl);
CREATE INDEX IF NOT EXISTS estimates_leaf ON estimates (leaf);
CREATE INDEX IF NOT EXISTS readings_dev_t ON readings (dev, t);
CREATE TABLE IF NOT EXISTS vee_findings (
    id INTEGER PRIMARY KEY, dev BLOB NOT NULL, seq INTEGER NOT NULL, t INTEGER NOT NULL,
    rule TEXT NOT NULL, severity TEXT NOT NULL, detail TEXT NOT NULL, leaf INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS vee_findings_dev ON vee_findings (dev, id);
CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, feeder TEXT NOT NULL, first_ivl INTEGER NOT NULL,
    last_ivl INTEGER NOT NULL, dur INTEGER NOT NULL, raised INTEGER NOT NULL, ended INTEGER,
    detail TEXT NOT NULL, meters INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS faults_open ON faults (kind, feeder, ended);
CREATE TABLE IF NOT EXISTS statements (
    meter BLOB NOT NULL, ivl INTEGER NOT NULL, leaf INTEGER NOT NULL, digest BLOB NOT NULL,
    msg BLOB NOT NULL, UNIQUE (meter, ivl));
CREATE INDEX IF NOT EXISTS statements_leaf ON statements (leaf);
"""
# the dashboard's read side (fog_node.dashboard): aggregates by interval, a meter's readings
# by time; every VEE finding (info and warnings too: the registry's alerts hold the errors),
# the newest FINDINGS_KEPT kept; each local fault from the interval it was found in to the
# last one that still showed it, the newest FAULTS_KEPT ended ones kept (open ones stay)
FINDINGS_KEPT = 50_000
FAULTS_KEPT = 10_000

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
    generators: tuple[bytes, ...] = ()  # meters whose type-14 statements the fog logs


@dataclass
class Closed:
    """What closing one interval logged."""

    ivl: int
    agg: bytes | None  # digest of the last aggregate (the checkpoint's agg), None if none
    aggregates: list[bytes] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)  # newly raised (not still open)
    suppressed: list[str] = field(default_factory=list)
    statements: list[bytes] = field(default_factory=list)  # type 14, logged before aggregates
    # closed outage records this close wrote (they wait in cooked.db until reported)
    outages: list[OutageRecord] = field(default_factory=list)


def _reading_fields(row: Sequence[Any]) -> P.Fields:
    dev, seq, t, dur, imp, exp, flags = row[:7]
    return {0: P.READING, 1: dev, 2: seq, 3: t, 4: dur, 5: imp, 6: exp, 7: flags}


_COLS = "dev, seq, t, dur, imp, exp, flags, vmin, vmax, digest, leaf, bound"



class CookedIndex:
    def __init__(self, key: P.SigningKey, log: LogStore, registry: Registry, path: Path | str,
                 config: CookConfig) -> None:
        self.key = key
        self.log = log
        self.registry = registry
        self.config = config
        self.counters: Counter[str] = Counter()
        self.db = connect(path)
        self.db.executescript(_SCHEMA + OUTAGES_SCHEMA)
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
        try:
            with atomic(self.db):
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
                        self.db.execute("INSERT OR IGNORE INTO aggregates VALUES "
                                        "(?, ?, ?, ?, ?, ?)",
                                        (f[1], f[2], f[16], m.digest, idx, m.raw))
                    elif m.type == P.STATEMENT:  # one per (meter, ivl): statements.py
                        self.db.execute("INSERT OR IGNORE INTO statements VALUES "
                                        "(?, ?, ?, ?, ?)",
                                        (m.fields[1], m.fields[2], idx, m.digest, m.raw))
                self._flush_readings(rows)
                self._set_meta("cursor", size)
                self._trim_findings()
        except BaseException:  # nothing was indexed: the caches must not say otherwise
            self._last.clear()
            rows.clear()
            raise
        return size - start

    def _trim_findings(self) -> None:
        """Keep the newest FINDINGS_KEPT VEE findings; count what is dropped."""
        (top,) = self.db.execute("SELECT MAX(id) FROM vee_findings").fetchone()
        if top is not None and top > FINDINGS_KEPT:
            n = self.db.execute("DELETE FROM vee_findings WHERE id <= ?",
                                (top - FINDINGS_KEPT,)).rowcount
            if n:
                self._set_meta("vee_findings_dropped", (self._meta("vee_findings_dropped")
                                                        or 0) + n)

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
            self.db.execute("INSERT INTO vee_findings (dev, seq, t, rule, severity, detail, "
                            "leaf) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (dev, seq, f[3], finding.rule, str(finding.severity),
                             finding.detail, idx))
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

    def statements_in(self, lo_leaf: int, hi_leaf: int) -> list[bytes]:
        """Type-14 messages at log indices lo_leaf <= i < hi_leaf, in log order."""
        return [r[0] for r in self.db.execute(
            "SELECT msg FROM statements WHERE leaf >= ? AND leaf < ? ORDER BY leaf",
            (lo_leaf, hi_leaf))]
