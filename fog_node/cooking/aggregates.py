"""Type-11 feeder aggregates at every interval close, their revisions when late data
changes a closed interval, local faults, and the open outages each close follows to their
closed outage records (outages.py; docs/PROTOCOL.md section 18)."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import pairwise
from typing import Any

from fog_node.cooking import outages as OT
from fog_node.cooking import vee
from fog_node.cooking.estimates import Estimates
from fog_node.cooking.feeders import (
    ESTIMATED,
    MEASURED,
    MISSING,
    Fault,
    Group,
    MeterInterval,
    cook,
    groups,
    same_content,
)
from fog_node.cooking.index import (
    _COLS,
    AGGREGATES_PER_CHECKPOINT,
    FAULTS_KEPT,
    Closed,
    _reading_fields,
)
from meterledger import wire as P
from meterledger.infra.sqlite import atomic


class Aggregates(Estimates):
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
        ests: dict[bytes, list[tuple[int, int, int, int, bool, int]]] = {}
        for dev, start, method, ivls, leaf in self.db.execute(
                "SELECT dev, start, method, ivls, leaf FROM estimates WHERE superseded = 0 AND "
                "last_end > ? AND start < ?", (lo, ivl)):
            if dev not in devs:
                continue
            s = start
            for item in json.loads(ivls):
                known = method != vee.METHOD_NONE
                ests.setdefault(dev, []).append(
                    (s, item[0], item[1] if known else 0, item[2] if known else 0, known, leaf))
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
            segs: list[tuple[int, int, int, int, str, tuple[int, ...]]] = []  # ..., leaves
            good = [r for r in rows if r[11]]
            for b, a in pairwise(good):
                bf, af = _reading_fields(b), _reading_fields(a)
                if a[1] == b[1] + 1 and vee.gap_ends(bf, af) == [a[2]]:
                    e = vee.interval_energy(bf, af)
                    if e is not None:
                        segs.append((b[2], a[2], e[0], e[1], MEASURED, (b[10], a[10])))
            for s, e_, imp, exp, known, leaf in ests.get(dev, []):
                if s >= lo and e_ <= ivl and not any(x[0] < e_ and s < x[1] for x in segs):
                    segs.append((s, e_, imp, exp, ESTIMATED if known else MISSING, (leaf,)))
            segs.sort()
            pos, ok = lo, True
            for s, e_, _, _, kind, _ in segs:
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
                tuple(r[10] for r in inside), silent=not inside,
                used=tuple(sorted({x for seg in segs for x in seg[5]})) if ok else ())
        return out

    def _groups(self) -> tuple[list[Group], list[str]]:
        active = [d.dev for d in self.registry.devices() if d.active]
        return groups(self.config.feeders, active, self.config.rules.privacy_min_meters)

    def _joined(self, ivl: int) -> frozenset[bytes]:
        """Meters enrolled after the interval began: nobody expected a reading of theirs
        for it, so their silence is no outage (a fresh fog, a batch of new meters)."""
        start = ivl - self.config.interval_s
        return frozenset(d.dev for d in self.registry.devices() if d.active and d.since > start)

    def _latest(self, feeder: str, ivl: int) -> tuple[int, bytes, bytes] | None:
        row = self.db.execute("SELECT rev, digest, msg FROM aggregates WHERE feeder = ? AND "
                              "ivl = ? ORDER BY rev DESC LIMIT 1", (feeder, ivl)).fetchone()
        return (int(row[0]), row[1], row[2]) if row else None

    def _cook(self, ivl: int) -> tuple[list[tuple[Group, Any]], list[str]]:
        gs, suppressed = self._groups()
        devs = {d for g in gs for d in g.members} | {g.head for g in gs if g.head}
        data = self._meter_intervals(devs, ivl)
        joined = self._joined(ivl)
        return [(g, cook(g, ivl, self.config.interval_s, data, self.config.rules, joined))
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
        found = [flt for _, c in cooked for flt in c.faults]
        names = [g.name for g, _ in cooked]
        with atomic(self.db):
            self._set_meta("last_closed", ivl)
            faults = self._faults(found, names, now)
            outages = OT.track(self.db, found, names, ivl, self.config.interval_s, now)
        self.counters["aggregates_logged"] += len(msgs)
        self.counters["intervals_closed"] += 1
        self.counters["groups_suppressed"] += len(suppressed)
        self.counters["outage_records"] += len(outages)
        return Closed(ivl, P.digest(msgs[-1]) if msgs else None, msgs, faults, suppressed,
                      outages=outages)

    def _faults(self, found: list[Fault], feeders: list[str], now: int) -> list[Fault]:
        """The faults that start with this interval; faults that ended are closed. The
        faults table keeps their history (index.py) in the same transaction."""
        new: list[Fault] = []
        still = {(f.kind, f.feeder) for f in found}
        q = self.db.execute
        for kind, feeder in q("SELECT kind, feeder FROM open_faults").fetchall():
            if (kind, feeder) not in still and feeder in feeders:
                q("DELETE FROM open_faults WHERE kind = ? AND feeder = ?", (kind, feeder))
                q("UPDATE faults SET ended = ? WHERE kind = ? AND feeder = ? AND ended IS NULL",
                  (now, kind, feeder))
        for f in found:
            cur = q("INSERT OR IGNORE INTO open_faults VALUES (?, ?, ?)",
                    (f.kind, f.feeder, now))
            if cur.rowcount:
                new.append(f)
                self.counters[f"faults_{f.kind}"] += 1
                q("INSERT INTO faults (kind, feeder, first_ivl, last_ivl, dur, raised, detail, "
                  "meters) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (f.kind, f.feeder, f.ivl, f.ivl,
                                                           self.config.interval_s, now, f.detail,
                                                           len(f.devs)))
            else:  # still there: it lasts at least to this interval
                q("UPDATE faults SET last_ivl = MAX(last_ivl, ?) WHERE kind = ? AND feeder = ? "
                  "AND ended IS NULL", (f.ivl, f.kind, f.feeder))
        (top,) = q("SELECT MAX(id) FROM faults").fetchone()
        if top is not None and top > FAULTS_KEPT:
            n = q("DELETE FROM faults WHERE id <= ? AND ended IS NOT NULL",
                  (top - FAULTS_KEPT,)).rowcount
            if n:
                self._set_meta("faults_dropped", (self._meta("faults_dropped") or 0) + n)
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
