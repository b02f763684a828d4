"""Type-10 estimates for missing and failed intervals: exact register differences split over
the gap, shaped by the feeder's own profile where known, and supersessions when a true
reading arrives (docs/VEE.md)."""

from __future__ import annotations

from itertools import pairwise

from fog_node.cooking import vee
from fog_node.cooking.index import (
    _COLS,
    CookedIndex,
    _reading_fields,
)
from meterledger import wire as P


class Estimates(CookedIndex):
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
            # a meter's seq and its clock disagree (t went back across a gap), or the gap
            # is longer than any estimate may cover: nothing to estimate, say so
            if af[3] <= bf[3]:
                self.counters["estimate_skipped_t_order"] += 1
                continue
            if af[3] - bf[3] > vee.MAX_GAP_S:
                self.counters["estimate_skipped_gap_too_long"] += 1
                continue
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
