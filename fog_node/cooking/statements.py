"""Type-14 energy statements of generator meters (docs/PROTOCOL.md section 25).

For every meter the config names as a generator (`CookConfig.generators`, enrolled and
active), the fog signs its energy in each closed interval (ivl - interval_s, ivl] with the
log indices it comes from, and anchors carry the statements to the chain
(`statements_in`, fog_node.chainlink.link). Household meters never get one: their own data
stays in the fog; only the feeder aggregates leave it.

A statement is logged once per (meter, ivl), kept in cooked.db's `statements` table (UNIQUE
(meter, ivl), filled from the log by `catch_up`, so a restart or a crash never logs one
twice). At the close a meter measured or estimated over the interval gets one, before the
close's aggregates; a meter missing then gets its statement later, when late data covers
the interval (the revision pass over dirty intervals, within `revision_intervals`), whatever
it turns out to be (a statement is never revised). Statements are logged in chunks with a
checkpoint sealed after each, so each checkpoint covers few enough to fit an anchor.
"""

from __future__ import annotations

from collections.abc import Callable

from fog_node.cooking.aggregates import Aggregates
from fog_node.cooking.feeders import ESTIMATED, MEASURED, MeterInterval
from fog_node.cooking.index import Closed
from meterledger import wire as P

# most statements logged between two checkpoints, and at most this many bytes of them, so
# that an anchor always fits one checkpoint's statements within 4096 bytes (a statement
# naming two readings is 130-170 bytes, one naming 64 entries below 2**32 about 480)
STATEMENTS_PER_CHECKPOINT = 10
STATEMENT_CHUNK_BYTES = 2048


class Statements(Aggregates):
    def _close_one(self, ivl: int, now: int, seal: Callable[[], object] | None) -> Closed:
        """The statements of the interval (those due), then its aggregates (aggregates.py)
        after a checkpoint of their own."""
        last = self.last_closed
        stated: list[bytes] = []
        if last is None or ivl > last:
            stated = self._log_statements(self._due(ivl), now, seal)
            if stated and seal is not None:
                seal()  # the close's aggregates follow in checkpoints of their own
        closed = super()._close_one(ivl, now, seal)
        closed.statements = stated
        return closed

    def revise(self, now: int, seal: Callable[[], object] | None = None) -> list[bytes]:
        """The statements that late data made due in closed intervals, then the revisions
        of their aggregates (aggregates.py)."""
        items: list[P.Fields] = []
        for (ivl,) in self.db.execute("SELECT ivl FROM dirty_ivls ORDER BY ivl").fetchall():
            items += self._due(ivl)
        stated = self._log_statements(items, now, seal)
        if stated and seal is not None:
            seal()
        return stated + super().revise(now, seal)

    def _due(self, ivl: int) -> list[P.Fields]:
        """The unsigned statements of the interval ending at ivl that no logged statement
        gives yet, for the generators measured or estimated over it (by meter id)."""
        if not self.config.generators:
            return []
        devs: set[bytes] = set()
        for dev in self.config.generators:
            if self.db.execute("SELECT 1 FROM statements WHERE meter = ? AND ivl = ?",
                               (dev, ivl)).fetchone():
                continue  # stated already (UNIQUE (meter, ivl) is its index)
            d = self.registry.device(dev)
            if d is not None and d.active:
                devs.add(dev)
        if not devs:
            return []
        data = self._meter_intervals(devs, ivl)
        out: list[P.Fields] = []
        for dev in sorted(devs):
            f = self._statement(data[dev], ivl)
            if f is not None:
                out.append(f)
        return out

    def _statement(self, mi: MeterInterval, ivl: int) -> P.Fields | None:
        """The statement of one meter's interval; None while it is missing, or (counted)
        when what it would name cannot be stated."""
        if mi.status not in (MEASURED, ESTIMATED):
            return None
        entries = list(mi.used)
        if len(entries) > P.MAX_STATEMENT_ENTRIES:
            self.counters["statements_skipped_entries"] += 1
            return None
        if mi.status == MEASURED and not self._measured_exactly(mi, ivl):
            self.counters["statements_skipped_registers"] += 1
            return None
        return {0: P.STATEMENT, 1: mi.dev, 2: ivl, 3: self.config.interval_s, 4: mi.imp,
                5: mi.exp, 6: 0 if mi.status == MEASURED else 1, 7: entries}

    def _measured_exactly(self, mi: MeterInterval, ivl: int) -> bool:
        """Whether the readings at mi.used are the meter's consecutive readings from the
        interval's start to its end, and its energy the register differences of the first
        and the last (what a verifier of the statement recomputes from the log)."""
        marks = ",".join("?" * len(mi.used))
        rows = self.db.execute(f"SELECT seq, t, imp, exp FROM readings WHERE dev = ? AND "
                               f"leaf IN ({marks}) ORDER BY seq", (mi.dev, *mi.used)).fetchall()
        if len(rows) < 2 or len(rows) != len(mi.used):
            return False
        first, last = rows[0], rows[-1]
        return (first[1] == ivl - self.config.interval_s and last[1] == ivl
                and last[0] - first[0] == len(rows) - 1
                and (last[2] - first[2], last[3] - first[3]) == (mi.imp, mi.exp))

    def _log_statements(self, items: list[P.Fields], now: int,
                        seal: Callable[[], object] | None) -> list[bytes]:
        """Sign and log statements in chunks (STATEMENTS_PER_CHECKPOINT, and
        STATEMENT_CHUNK_BYTES), sealing a checkpoint between chunks; indexed at once."""
        if not items:
            return []
        size = self.log.size()  # every entry they name is below it
        chunks: list[list[bytes]] = [[]]
        for f in items:
            f[8], f[17] = size, self.key.id
            raw = P.sign1(self.key, f)
            chunk = chunks[-1]
            if chunk and (len(chunk) == STATEMENTS_PER_CHECKPOINT
                          or sum(map(len, chunk)) + len(raw) > STATEMENT_CHUNK_BYTES):
                chunks.append(chunk := [])
            chunk.append(raw)
        msgs: list[bytes] = []
        for n, chunk in enumerate(chunks):
            if n and seal is not None:
                seal()
            self.log.append_batch(chunk)
            self.registry.record_readings([], self.log.size())
            msgs += chunk
        self.catch_up(now)
        self.counters["statements_logged"] += len(msgs)
        return msgs
