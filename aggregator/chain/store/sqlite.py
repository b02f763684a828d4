"""`SQLiteBlockStore`: a chain in one SQLite file (WAL, synchronous=FULL: a block is durable
once `append` returns, and a block with its derived state and state root is one transaction,
so kill -9 leaves whole blocks only). The interface is aggregator.chain.store.base.

The state_roots table came after format 2 and is created when missing (an older reader
ignores it); the ledger fills in the roots of blocks written before it by replaying them.

Format 2 added the aggregates and rules tables; a format-1 file is upgraded when opened for
writing (the aggregates its anchors carried are read back from the stored transactions).

Two read indexes came later and are created when missing (an older reader ignores them):
`reports` (each report by the instruction it answers, for GET /v1/dispatch) and
`anchor_counts` (anchors per fog, for GET /v1/fogs). Both are written with each block;
for a file written before them, the anchor counts are filled in when it is opened for
writing and the reports of its blocks by a background thread, a bounded chunk of blocks per
write transaction (`reports_backfill`), so a block being appended never waits for long.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

from aggregator.chain.app.state import INT64_MAX, Effect, apply_effect
from aggregator.chain.ledger import (
    AggregateView,
    AnchorView,
    CarriedAggregate,
    InstructionView,
    Participant,
    Receipt,
    RuleSet,
    RuleSetView,
    StorageError,
    TxRecord,
)
from aggregator.chain.store.base import StoredBlock, check_append, header_time
from aggregator.chain.store.records import SQLiteRecords
from meterledger import wire as P
from meterledger.errors import ProtocolError
from meterledger.infra.sqlite import atomic, connect
from meterledger.wire import anchor as A
from meterledger.wire import chain as C
from meterledger.wire.cbor import encode

log = logging.getLogger("aggregator.chain.store")

_SCHEMA_VERSION = 2
BACKFILL_BLOCKS = 64  # blocks read per write transaction when indexing an older file's reports
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, hash BLOB NOT NULL, "
    "header BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS txs (height INTEGER NOT NULL, idx INTEGER NOT NULL, "
    "digest BLOB NOT NULL UNIQUE, raw BLOB NOT NULL, PRIMARY KEY (height, idx))",
    "CREATE TABLE IF NOT EXISTS participants (id BLOB PRIMARY KEY, role TEXT NOT NULL, "
    "pub BLOB NOT NULL, name TEXT NOT NULL, nonce INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS anchors (fog BLOB NOT NULL, height INTEGER NOT NULL, "
    "idx INTEGER NOT NULL, digest BLOB NOT NULL, first INTEGER NOT NULL, "
    "last INTEGER NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL, head BLOB NOT NULL, "
    "t INTEGER NOT NULL, PRIMARY KEY (fog, height, idx))",
    "CREATE TABLE IF NOT EXISTS instructions (digest BLOB PRIMARY KEY, fog BLOB NOT NULL, "
    "height INTEGER NOT NULL, idx INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS instructions_by_fog ON instructions (fog, height, idx)",
    # format 2
    "CREATE TABLE IF NOT EXISTS aggregates (digest BLOB PRIMARY KEY, fog BLOB NOT NULL, "
    "feeder TEXT NOT NULL, ivl INTEGER NOT NULL, rev INTEGER NOT NULL, height INTEGER NOT NULL, "
    "idx INTEGER NOT NULL, pos INTEGER NOT NULL, msg BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS aggregates_by_fog ON aggregates (fog, feeder, height, idx, pos)",
    "CREATE INDEX IF NOT EXISTS aggregates_by_height ON aggregates (height, idx, pos)",
    "CREATE TABLE IF NOT EXISTS rules (digest BLOB PRIMARY KEY, name TEXT NOT NULL, "
    "version INTEGER NOT NULL, height INTEGER NOT NULL, idx INTEGER NOT NULL, "
    "text TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rules_by_name ON rules (name, version)",
    # the state root after each block (aggregator.chain.app.state)
    # the applications' state (certificates, carbon, ...): CBOR values by (table, key)
    "CREATE TABLE IF NOT EXISTS records (tbl TEXT NOT NULL, key BLOB NOT NULL, "
    "value BLOB NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS state_roots (height INTEGER PRIMARY KEY, root BLOB NOT NULL)",
)
# read indexes for the dashboard (created when missing; see the module doc)
_READ_INDEXES = (
    "CREATE TABLE IF NOT EXISTS reports (instruction BLOB NOT NULL, height INTEGER NOT NULL, "
    "idx INTEGER NOT NULL, PRIMARY KEY (instruction, height, idx)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS anchor_counts (fog BLOB PRIMARY KEY, n INTEGER NOT NULL)",
    # the reports of blocks up to `upto` are still to be indexed (an older file's)
    "CREATE TABLE IF NOT EXISTS reports_backfill (done INTEGER NOT NULL, upto INTEGER NOT NULL)",
)


class SQLiteBlockStore(SQLiteRecords):
    """BlockStore in one SQLite file. Two connections: the writer (append) and a reader, so
    the validator and the API read committed blocks while a block is being written.
    `readonly` opens an existing file for reading only (verify-chain beside a running node)."""

    def __init__(self, path: str | os.PathLike[str], readonly: bool = False) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self._wlock, self._rlock = threading.Lock(), threading.Lock()
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        self._backfilling: threading.Thread | None = None
        try:
            if readonly:
                if not os.path.exists(self.path):
                    raise StorageError(f"{self.path}: no such chain file")
                self._r = self._connect(f"file:{self.path}?mode=ro", uri=True)
                self._check_version(self._r)
            else:
                self._w = self._connect(self.path)
                self._setup(self._w)
                self._r = self._connect(self.path)
                if self._rows("SELECT 1 FROM reports_backfill"):
                    self._backfilling = threading.Thread(
                        target=self._backfill_reports, name="chain-reports-backfill",
                        daemon=True)
                    self._backfilling.start()
        except sqlite3.Error as e:
            self.close()
            raise StorageError(f"{self.path}: cannot open as a chain: {e}") from e
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
        return connect(target, wal=False, uri=uri, timeout=30)  # _setup asks for WAL

    def _check_version(self, db: sqlite3.Connection) -> int:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        if version == 0 and tables:
            raise StorageError(f"{self.path} is an SQLite file with tables {sorted(tables)} "
                               "that is not a MeterLedger chain")
        upgradable = version in (0, 1) and not self.readonly
        if version != _SCHEMA_VERSION and not upgradable:
            raise StorageError(f"{self.path} has chain format {version}; this code reads "
                               f"format {_SCHEMA_VERSION}"
                               + (" (open it once with the aggregator to upgrade it)"
                                  if version == 1 else ""))
        return version

    def _setup(self, db: sqlite3.Connection) -> None:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"{self.path}: SQLite would not use WAL (journal mode {mode!r})")
        with atomic(db):
            version = self._check_version(db)
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            for statement in _SCHEMA + _READ_INDEXES:
                db.execute(statement)
            if version == 1:
                self._upgrade_from_1(db)
            if "anchor_counts" not in tables:  # an older file: count once (the PK's order)
                db.execute("INSERT INTO anchor_counts (fog, n) SELECT fog, COUNT(*) FROM "
                           "anchors GROUP BY fog ORDER BY MIN(rowid)")
            if "reports" not in tables:  # an older file: its blocks' reports, in the background
                (top,) = db.execute("SELECT MAX(height) FROM blocks").fetchone()
                if top is not None:
                    db.execute("INSERT INTO reports_backfill (done, upto) VALUES (-1, ?)",
                               (top,))
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    @staticmethod
    def _upgrade_from_1(db: sqlite3.Connection) -> None:
        """Fill the aggregates table from the anchors a format-1 chain holds. Format-1 code
        did not check aggregates, so one that does not parse is left out; verify-chain then
        names the anchor that carried it."""
        rows = db.execute("SELECT height, idx, raw FROM txs ORDER BY height, idx").fetchall()
        for height, idx, raw in rows:
            try:
                f = P.parse(bytes(raw), schema=False).fields
                items = f[4].get(3, []) if f.get(3) == C.ANCHOR else []
                aggs = [CarriedAggregate.of(P.parse(a)) for a in items]
            except (ProtocolError, AttributeError, KeyError, TypeError):
                continue
            for pos, a in enumerate(aggs):
                db.execute("INSERT OR IGNORE INTO aggregates (digest, fog, feeder, ivl, rev, "
                           "height, idx, pos, msg) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (a.digest, f[1], a.feeder, a.ivl, a.rev, height, idx, pos, a.msg))

    def _backfill_reports(self, chunk: int | None = None) -> None:
        """Index the reports of the blocks written before the reports table existed, a chunk
        of blocks per write transaction: an append waits at most for one chunk."""
        step = chunk or BACKFILL_BLOCKS
        pattern = P.encode(C.REPORT)
        while True:
            with self._wlock:
                db = self._w
                if db is None:
                    return  # closed
                try:
                    with atomic(db):
                        row = db.execute("SELECT done, upto FROM reports_backfill").fetchone()
                        if row is None:
                            return
                        done, upto = row
                        hi = min(upto, done + step)
                        for h, i, raw in db.execute(
                                "SELECT height, idx, raw FROM txs WHERE height > ? AND "
                                "height <= ? AND instr(raw, ?) > 0", (done, hi, pattern)
                        ).fetchall():
                            answered = _answered(bytes(raw))
                            if answered is not None:
                                db.execute("INSERT OR IGNORE INTO reports (instruction, "
                                           "height, idx) VALUES (?, ?, ?)", (answered, h, i))
                        if hi >= upto:
                            db.execute("DELETE FROM reports_backfill")
                        else:
                            db.execute("UPDATE reports_backfill SET done = ?", (hi,))
                except sqlite3.Error as e:
                    log.warning("%s: indexing the reports of older blocks stopped: %s; it "
                                "resumes when the chain is opened again", self.path, e)
                    return
                if hi >= upto:
                    return

    def _reader(self) -> sqlite3.Connection:
        if self._r is None:
            raise StorageError(f"the chain store {self.path} was used after close()")
        return self._r

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._rlock:
            try:
                return self._reader().execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StorageError(f"{self.path}: read failed: {e}") from e

    def height(self) -> int:
        (h,) = self._rows("SELECT MAX(height) FROM blocks")[0]
        return -1 if h is None else int(h)

    def chain_time(self) -> int:
        rows = self._rows("SELECT header FROM blocks ORDER BY height DESC LIMIT 1")
        return header_time(bytes(rows[0][0])) if rows else 0

    def block(self, height: int) -> StoredBlock | None:
        if not 0 <= height <= INT64_MAX:
            return None
        with self._rlock:  # one read transaction: the header and its transactions
            db = self._reader()
            try:
                db.execute("BEGIN")
                try:
                    row = db.execute("SELECT hash, header FROM blocks WHERE height = ?",
                                     (height,)).fetchone()
                    txs = db.execute("SELECT raw FROM txs WHERE height = ? ORDER BY idx",
                                     (height,)).fetchall()
                finally:
                    db.execute("COMMIT")
            except sqlite3.Error as e:
                raise StorageError(f"{self.path}: read failed: {e}") from e
        if row is None:
            return None
        return StoredBlock(height, bytes(row[0]), bytes(row[1]), tuple(bytes(t[0]) for t in txs))

    def append(self, height: int, header: bytes, effects: Sequence[Effect],
               state_root: bytes, block_hash: bytes | None = None) -> None:
        with self._wlock:
            check_append(self, height, effects)

            def write(db: sqlite3.Connection) -> None:
                db.execute("INSERT INTO blocks (height, hash, header) VALUES (?, ?, ?)",
                           (height, block_hash or P.digest(header), header))
                w = _Writer(db)
                for i, e in enumerate(effects):
                    apply_effect(w, e, Receipt(e.digest, height, i))
                db.execute("INSERT INTO state_roots (height, root) VALUES (?, ?)",
                           (height, state_root))

            self._transaction(f"writing block {height}", write)

    def put_state_roots(self, roots: Sequence[tuple[int, bytes]]) -> None:
        with self._wlock:
            self._transaction("writing state roots", lambda db: db.executemany(
                "INSERT OR REPLACE INTO state_roots (height, root) VALUES (?, ?)", roots))

    def _transaction(self, what: str, fn: Callable[[sqlite3.Connection], object]) -> None:
        if self._w is None:
            raise StorageError(f"the chain store {self.path} is "
                               + ("read-only" if self.readonly else "closed"))
        db = self._w
        try:
            with atomic(db):
                fn(db)
        except sqlite3.Error as e:
            raise StorageError(f"{self.path}: {what} failed: {e}") from e

    def state_root(self, height: int) -> bytes | None:
        if not 0 <= height <= INT64_MAX:
            return None
        try:
            rows = self._rows("SELECT root FROM state_roots WHERE height = ?", (height,))
        except StorageError:
            if self._has_roots():
                raise
            return None  # a read-only file written before state roots existed
        return bytes(rows[0][0]) if rows else None

    def _has_roots(self) -> bool:
        return bool(self._rows("SELECT 1 FROM sqlite_master WHERE name = 'state_roots'"))

    def participant(self, pid: bytes) -> Participant | None:
        rows = self._rows("SELECT id, role, pub, name, nonce FROM participants WHERE id = ?",
                          (pid,))
        return _participant(rows[0]) if rows else None

    def anchored(self, fog: bytes) -> A.AnchoredHead | None:
        rows = self._rows("SELECT last, size, root, head, t FROM anchors WHERE fog = ? "
                          "ORDER BY height DESC, idx DESC LIMIT 1", (fog,))
        if not rows:
            return None
        last, size, root, head, t = rows[0]
        return A.AnchoredHead(last, size, bytes(root), bytes(head), t)

    def instruction_fog(self, digest: bytes) -> bytes | None:
        rows = self._rows("SELECT fog FROM instructions WHERE digest = ?", (digest,))
        return bytes(rows[0][0]) if rows else None

    def receipt(self, digest: bytes) -> Receipt | None:
        rows = self._rows("SELECT height, idx FROM txs WHERE digest = ?", (digest,))
        return Receipt(digest, rows[0][0], rows[0][1]) if rows else None

    def aggregate_fog(self, digest: bytes) -> bytes | None:
        rows = self._rows("SELECT fog FROM aggregates WHERE digest = ?", (digest,))
        return bytes(rows[0][0]) if rows else None

    def rules_version(self, name: str) -> int:
        (v,) = self._rows("SELECT MAX(version) FROM rules WHERE name = ?", (name,))[0]
        return 0 if v is None else int(v)

    def rules_name(self, digest: bytes) -> str | None:
        rows = self._rows("SELECT name FROM rules WHERE digest = ?", (digest,))
        return str(rows[0][0]) if rows else None

    def participants(self) -> list[Participant]:
        return [_participant(r) for r in self._rows(
            "SELECT id, role, pub, name, nonce FROM participants ORDER BY rowid")]

    def anchors(self, fog: bytes, last: int | None = None) -> list[AnchorView]:
        newest = "" if last is None else " DESC"
        rows = self._rows(
            "SELECT height, idx, digest, first, last, size, root, t FROM anchors WHERE fog = ? "
            f"ORDER BY height{newest}, idx{newest} LIMIT ?",
            (fog, -1 if last is None else max(0, min(last, INT64_MAX))))
        views = [AnchorView(h, i, bytes(d), first, last_, size, bytes(root), t)
                 for h, i, d, first, last_, size, root, t in rows]
        return views if last is None else views[::-1]

    def anchor_counts(self) -> dict[bytes, int]:
        if self.readonly and not self._has("anchor_counts"):  # an older file, not upgraded
            return {bytes(fog): n for fog, n in self._rows(
                "SELECT fog, COUNT(*) FROM anchors GROUP BY fog ORDER BY MIN(rowid)")}
        return {bytes(fog): n for fog, n in self._rows(
            "SELECT fog, n FROM anchor_counts ORDER BY rowid")}

    def _has(self, table: str) -> bool:
        return bool(self._rows("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)))

    def reports(self, instructions: Sequence[bytes]) -> dict[bytes, list[TxRecord]]:
        if not instructions or (self.readonly and not self._has("reports")):
            return {}
        out: dict[bytes, list[TxRecord]] = {}
        for k in range(0, len(instructions), 500):
            part = list(instructions[k:k + 500])
            for ins, h, i, d, raw in self._rows(
                    "SELECT r.instruction, r.height, r.idx, t.digest, t.raw FROM reports r "
                    "JOIN txs t ON t.height = r.height AND t.idx = r.idx WHERE r.instruction "
                    f"IN ({', '.join('?' * len(part))}) ORDER BY r.height, r.idx",
                    tuple(part)):
                out.setdefault(bytes(ins), []).append(TxRecord(h, i, bytes(d), bytes(raw)))
        return out

    def instruction_page(self, fog: bytes | None, after_height: int,
                         before_height: int | None, limit: int | None) -> list[TxRecord]:
        after = max(-1, min(after_height, INT64_MAX))
        before = INT64_MAX if before_height is None else max(0, min(before_height, INT64_MAX))
        where = "i.height > ? AND i.height < ?"
        args: list[Any] = [after, before]
        if fog is not None:
            where, args = "i.fog = ? AND " + where, [fog, *args]
        return [TxRecord(h, i, bytes(d), bytes(raw)) for h, i, d, raw in self._rows(
            "SELECT i.height, i.idx, i.digest, t.raw FROM instructions i JOIN txs t "
            f"ON t.height = i.height AND t.idx = i.idx WHERE {where} "
            "ORDER BY i.height DESC, i.idx DESC LIMIT ?",
            (*args, -1 if limit is None else max(0, limit)))]

    def txs_of_kind(self, kind: str, after_height: int, before_height: int | None,
                    limit: int | None) -> list[TxRecord]:
        after = max(-1, min(after_height, INT64_MAX))
        before = INT64_MAX if before_height is None else max(0, min(before_height, INT64_MAX))
        if kind == C.INSTRUCTION:  # indexed already
            return self.instruction_page(None, after, before, limit)
        # the kind is in every such transaction's bytes as its CBOR text; a match is
        # parsed to be sure (the same text may sit in a body)
        pattern = P.encode(kind)
        out: list[TxRecord] = []
        with self._rlock:
            try:
                cur = self._reader().execute(
                    "SELECT height, idx, digest, raw FROM txs WHERE height > ? AND height < ? "
                    "AND instr(raw, ?) > 0 ORDER BY height DESC, idx DESC",
                    (after, before, pattern))
                while limit is None or len(out) < limit:
                    rows = cur.fetchmany(256)
                    if not rows:
                        break
                    for h, i, d, raw in rows:
                        if _kind(bytes(raw)) == kind and (limit is None or len(out) < limit):
                            out.append(TxRecord(h, i, bytes(d), bytes(raw)))
                cur.close()
            except sqlite3.Error as e:
                raise StorageError(f"{self.path}: read failed: {e}") from e
        return out

    def instructions(self, fog: bytes, after_height: int) -> list[InstructionView]:
        after = max(-1, min(after_height, INT64_MAX))
        return [InstructionView(h, i, bytes(d), bytes(raw)) for h, i, d, raw in self._rows(
            "SELECT i.height, i.idx, i.digest, t.raw FROM instructions i JOIN txs t "
            "ON t.height = i.height AND t.idx = i.idx WHERE i.fog = ? AND i.height > ? "
            "ORDER BY i.height, i.idx", (fog, after))]

    def aggregates(self, fog: bytes | None, feeder: str | None,
                   after_height: int) -> list[AggregateView]:
        where = ["height > ?"]
        args: list[Any] = [max(-1, min(after_height, INT64_MAX))]
        if fog is not None:
            where.append("fog = ?")
            args.append(fog)
        if feeder is not None:
            where.append("feeder = ?")
            args.append(feeder)
        return [AggregateView(h, i, bytes(d), bytes(f), feeder_, ivl, rev, bytes(msg))
                for h, i, d, f, feeder_, ivl, rev, msg in self._rows(
                    "SELECT height, idx, digest, fog, feeder, ivl, rev, msg FROM aggregates "
                    f"WHERE {' AND '.join(where)} ORDER BY height, idx, pos", tuple(args))]

    def rules(self) -> list[RuleSetView]:
        return [RuleSetView(h, i, name, version, bytes(d), text)
                for h, i, name, version, d, text in self._rows(
                    "SELECT height, idx, name, version, digest, text FROM rules "
                    "ORDER BY height, idx")]

    def close(self) -> None:
        thread = self._backfilling
        for lock, name in ((self._wlock, "_w"), (self._rlock, "_r")):
            with lock:
                db = getattr(self, name)
                setattr(self, name, None)
                if db is not None:
                    db.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)  # it stops at its next chunk: the writer is gone


def _answered(raw: bytes) -> bytes | None:
    """The instruction a report transaction answers (None for any other transaction)."""
    try:
        f = P.parse(raw, schema=False).fields
    except ProtocolError:
        return None
    body = f.get(4)
    if f.get(3) != C.REPORT or not isinstance(body, dict):
        return None
    answered = body.get(1)
    return answered if isinstance(answered, bytes) else None


def _kind(raw: bytes) -> str | None:
    try:
        kind = P.parse(raw, schema=False).fields.get(3)
    except ProtocolError:
        return None
    return kind if isinstance(kind, str) else None


def _participant(row: Any) -> Participant:
    pid, role, pub, name, nonce = row
    return Participant(bytes(pid), role, bytes(pub), name, nonce)


class _Writer:
    """The StateWriter of one block's SQLite transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def put_tx(self, digest: bytes, at: Receipt | None, raw: bytes) -> None:
        assert at is not None
        self.db.execute("INSERT INTO txs (height, idx, digest, raw) VALUES (?, ?, ?, ?)",
                        (at.height, at.index, digest, raw))
        answered = _answered(raw)
        if answered is not None:
            self.db.execute("INSERT OR IGNORE INTO reports (instruction, height, idx) "
                            "VALUES (?, ?, ?)", (answered, at.height, at.index))

    def put_participant(self, p: Participant) -> None:
        self.db.execute("INSERT INTO participants (id, role, pub, name, nonce) "
                        "VALUES (?, ?, ?, ?, ?)", (p.id, p.role, p.pub, p.name, p.nonce))

    def put_nonce(self, pid: bytes, nonce: int) -> None:
        cur = self.db.execute("UPDATE participants SET nonce = ? WHERE id = ?", (nonce, pid))
        if cur.rowcount != 1:
            raise StorageError(f"an effect names sender {pid.hex()}, who is not registered")

    def put_anchor(self, fog: bytes, at: Receipt | None, digest: bytes, first: int,
                   head: A.AnchoredHead) -> None:
        assert at is not None
        self.db.execute("INSERT INTO anchors (fog, height, idx, digest, first, last, size, "
                        "root, head, t) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (fog, at.height, at.index, digest, first, head.height, head.size,
                         head.root, head.digest, head.t))
        self.db.execute("INSERT INTO anchor_counts (fog, n) VALUES (?, 1) "
                        "ON CONFLICT(fog) DO UPDATE SET n = n + 1", (fog,))

    def put_instruction(self, digest: bytes, fog: bytes, at: Receipt | None,
                        raw: bytes) -> None:
        assert at is not None
        self.db.execute("INSERT INTO instructions (digest, fog, height, idx) "
                        "VALUES (?, ?, ?, ?)", (digest, fog, at.height, at.index))

    def put_aggregate(self, fog: bytes, at: Receipt | None, pos: int,
                      a: CarriedAggregate) -> None:
        assert at is not None
        self.db.execute("INSERT INTO aggregates (digest, fog, feeder, ivl, rev, height, idx, "
                        "pos, msg) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (a.digest, fog, a.feeder, a.ivl, a.rev, at.height, at.index, pos,
                         a.msg))

    def put_record(self, table: str, key: bytes, value: Any) -> None:
        if value is None:
            self.db.execute("DELETE FROM records WHERE tbl = ? AND key = ?", (table, key))
            return
        self.db.execute("INSERT INTO records (tbl, key, value) VALUES (?, ?, ?) "
                        "ON CONFLICT(tbl, key) DO UPDATE SET value = excluded.value",
                        (table, key, encode(value)))

    def put_rules(self, rules: RuleSet, at: Receipt | None) -> None:
        assert at is not None
        self.db.execute("INSERT INTO rules (digest, name, version, height, idx, text) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (rules.digest, rules.name, rules.version, at.height, at.index,
                         rules.text))
