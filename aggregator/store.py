"""Block storage: the blocks, and the validation state derived from them, written together.

`BlockStore` is the interface; `SQLiteBlockStore` keeps a chain in one SQLite file (WAL,
synchronous=FULL: a block is durable once `append` returns, and a block with its derived
state is one transaction, so kill -9 leaves whole blocks only); `MemoryBlockStore` is its
in-memory twin for tests. One contract test suite runs against both.

The derived state (participants with their last nonce, anchors, instructions, anchored
aggregates, registered rule sets, the transaction index) is what the Validator reads; it is
a cache of the blocks, which verify-chain rebuilds by replaying them.

Format 2 added the aggregates and rules tables; a format-1 file is upgraded when opened for
writing (the aggregates its anchors carried are read back from the stored transactions).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aggregator.ledger import (
    INT64_MAX,
    AggregateView,
    AnchorView,
    CarriedAggregate,
    Effect,
    InstructionView,
    MemoryState,
    Participant,
    Receipt,
    RuleSetView,
    StorageError,
)
from meterledger import wire as P
from meterledger.wire import anchor as A
from meterledger.wire import chain as C
from meterledger.wire.cbor import ProtocolError

_SCHEMA_VERSION = 2
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
)


@dataclass(frozen=True)
class StoredBlock:
    height: int
    hash: bytes
    header: bytes
    txs: tuple[bytes, ...]


class BlockStore(Protocol):
    """Blocks 0..height() and the state derived from them (also a ledger.State)."""

    def height(self) -> int:
        """Height of the newest block; -1 while the store holds none (before genesis)."""
        ...

    def block(self, height: int) -> StoredBlock | None: ...

    def append(self, height: int, header: bytes, effects: Sequence[Effect]) -> None:
        """Add block `height` (= height() + 1) with the transactions of `effects`, in order,
        and their effects on the derived state: all or nothing, durable on return."""
        ...

    # ledger.State
    def participant(self, pid: bytes) -> Participant | None: ...

    def anchored(self, fog: bytes) -> A.AnchoredHead | None: ...

    def instruction_fog(self, digest: bytes) -> bytes | None: ...

    def receipt(self, digest: bytes) -> Receipt | None: ...

    def aggregate_fog(self, digest: bytes) -> bytes | None: ...

    def rules_version(self, name: str) -> int: ...

    def rules_name(self, digest: bytes) -> str | None: ...

    # queries
    def participants(self) -> list[Participant]:
        """In registration order."""
        ...

    def anchors(self, fog: bytes) -> list[AnchorView]: ...

    def instructions(self, fog: bytes, after_height: int) -> list[InstructionView]: ...

    def aggregates(self, fog: bytes | None, feeder: str | None,
                   after_height: int) -> list[AggregateView]:
        """In chain order, then the order the anchor carried them."""
        ...

    def rules(self) -> list[RuleSetView]:
        """In chain order."""
        ...

    def close(self) -> None: ...


def _check_append(store: BlockStore, height: int, effects: Sequence[Effect]) -> None:
    if height != store.height() + 1:
        raise StorageError(f"block {height} cannot follow block {store.height()}")
    for e in effects:
        h = e.anchor_head
        values = [e.nonce, *(v for a in e.aggregates for v in (a.ivl, a.rev))]
        if e.rules is not None:
            values.append(e.rules.version)
        if h is not None:
            values += [h.size, h.t]
        if max(values) > INT64_MAX:
            raise StorageError(f"transaction {e.digest.hex()} holds a value beyond 2^63-1")


class MemoryBlockStore:
    """BlockStore in memory (tests); behaves like SQLiteBlockStore but forgets on close."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._blocks: list[StoredBlock] | None = []
        self._state = MemoryState()
        self._anchors: dict[bytes, list[AnchorView]] = {}
        self._instructions: dict[bytes, list[InstructionView]] = {}

    def _live(self) -> list[StoredBlock]:
        if self._blocks is None:
            raise StorageError("the memory block store was used after close()")
        return self._blocks

    def height(self) -> int:
        with self._lock:
            return len(self._live()) - 1

    def block(self, height: int) -> StoredBlock | None:
        with self._lock:
            blocks = self._live()
            return blocks[height] if 0 <= height < len(blocks) else None

    def append(self, height: int, header: bytes, effects: Sequence[Effect]) -> None:
        with self._lock:
            blocks = self._live()
            _check_append(self, height, effects)
            stage = MemoryState(self._state)  # all or nothing: apply to a stage first
            for i, e in enumerate(effects):
                if self._state.receipt(e.digest) or e.digest in stage.receipts:
                    raise StorageError(f"transaction {e.digest.hex()} is stored already")
                stage.apply(e, Receipt(e.digest, height, i))
            self._state.absorb(stage)
            for i, e in enumerate(effects):
                if e.anchor_head is not None:
                    h = e.anchor_head
                    self._anchors.setdefault(e.sender, []).append(AnchorView(
                        height, i, e.digest, e.anchor_first, h.height, h.size, h.root))
                if e.instruction_fog is not None:
                    self._instructions.setdefault(e.instruction_fog, []).append(
                        InstructionView(height, i, e.digest, e.raw))
            blocks.append(StoredBlock(height, P.digest(header), header,
                                      tuple(e.raw for e in effects)))

    def participant(self, pid: bytes) -> Participant | None:
        with self._lock:
            self._live()
            return self._state.participant(pid)

    def anchored(self, fog: bytes) -> A.AnchoredHead | None:
        with self._lock:
            self._live()
            return self._state.anchored(fog)

    def instruction_fog(self, digest: bytes) -> bytes | None:
        with self._lock:
            self._live()
            return self._state.instruction_fog(digest)

    def receipt(self, digest: bytes) -> Receipt | None:
        with self._lock:
            self._live()
            return self._state.receipt(digest)

    def participants(self) -> list[Participant]:
        with self._lock:
            self._live()
            return list(self._state.participants.values())

    def anchors(self, fog: bytes) -> list[AnchorView]:
        with self._lock:
            self._live()
            return list(self._anchors.get(fog, []))

    def instructions(self, fog: bytes, after_height: int) -> list[InstructionView]:
        with self._lock:
            self._live()
            return [i for i in self._instructions.get(fog, []) if i.height > after_height]

    def aggregates(self, fog: bytes | None, feeder: str | None,
                   after_height: int) -> list[AggregateView]:
        with self._lock:
            self._live()
            return [a for a in self._state.aggregate_views
                    if (fog is None or a.fog == fog) and (feeder is None or a.feeder == feeder)
                    and a.height > after_height]

    def rules(self) -> list[RuleSetView]:
        with self._lock:
            self._live()
            return list(self._state.rule_views)

    def aggregate_fog(self, digest: bytes) -> bytes | None:
        with self._lock:
            self._live()
            return self._state.aggregate_fog(digest)

    def rules_version(self, name: str) -> int:
        with self._lock:
            self._live()
            return self._state.rules_version(name)

    def rules_name(self, digest: bytes) -> str | None:
        with self._lock:
            self._live()
            return self._state.rules_name(digest)

    def close(self) -> None:
        with self._lock:
            self._blocks = None


class SQLiteBlockStore:
    """BlockStore in one SQLite file. Two connections: the writer (append) and a reader, so
    the validator and the API read committed blocks while a block is being written.
    `readonly` opens an existing file for reading only (verify-chain beside a running node)."""

    def __init__(self, path: str | os.PathLike[str], readonly: bool = False) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self._wlock, self._rlock = threading.Lock(), threading.Lock()
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
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
        except sqlite3.Error as e:
            self.close()
            raise StorageError(f"{self.path}: cannot open as a chain: {e}") from e
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(target, isolation_level=None, check_same_thread=False, uri=uri,
                             timeout=30)
        db.execute("PRAGMA synchronous=FULL")
        return db

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
        db.execute("BEGIN IMMEDIATE")
        try:
            version = self._check_version(db)
            for statement in _SCHEMA:
                db.execute(statement)
            if version == 1:
                self._upgrade_from_1(db)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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

    def append(self, height: int, header: bytes, effects: Sequence[Effect]) -> None:
        if self._w is None:
            raise StorageError(f"the chain store {self.path} is "
                               + ("read-only" if self.readonly else "closed"))
        with self._wlock:
            _check_append(self, height, effects)
            db = self._w
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    self._write(db, height, header, effects)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StorageError(f"{self.path}: writing block {height} failed: {e}") from e

    @staticmethod
    def _write(db: sqlite3.Connection, height: int, header: bytes,
               effects: Sequence[Effect]) -> None:
        db.execute("INSERT INTO blocks (height, hash, header) VALUES (?, ?, ?)",
                   (height, P.digest(header), header))
        for i, e in enumerate(effects):
            db.execute("INSERT INTO txs (height, idx, digest, raw) VALUES (?, ?, ?, ?)",
                       (height, i, e.digest, e.raw))
            if e.registers is not None:
                r = e.registers
                db.execute("INSERT INTO participants (id, role, pub, name, nonce) "
                           "VALUES (?, ?, ?, ?, ?)", (r.id, r.role, r.pub, r.name, r.nonce))
            cur = db.execute("UPDATE participants SET nonce = ? WHERE id = ?",
                             (e.nonce, e.sender))
            if cur.rowcount != 1:
                raise StorageError(f"effect of {e.digest.hex()} names sender "
                                   f"{e.sender.hex()}, who is not registered")
            if e.anchor_head is not None:
                h = e.anchor_head
                db.execute("INSERT INTO anchors (fog, height, idx, digest, first, last, size, "
                           "root, head, t) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (e.sender, height, i, e.digest, e.anchor_first, h.height, h.size,
                            h.root, h.digest, h.t))
            if e.instruction_fog is not None:
                db.execute("INSERT INTO instructions (digest, fog, height, idx) "
                           "VALUES (?, ?, ?, ?)", (e.digest, e.instruction_fog, height, i))
            for pos, a in enumerate(e.aggregates):
                db.execute("INSERT INTO aggregates (digest, fog, feeder, ivl, rev, height, idx, "
                           "pos, msg) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (a.digest, e.sender, a.feeder, a.ivl, a.rev, height, i, pos, a.msg))
            if e.rules is not None:
                rs = e.rules
                db.execute("INSERT INTO rules (digest, name, version, height, idx, text) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (rs.digest, rs.name, rs.version, height, i, rs.text))

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

    def anchors(self, fog: bytes) -> list[AnchorView]:
        return [AnchorView(h, i, bytes(d), first, last, size, bytes(root))
                for h, i, d, first, last, size, root in self._rows(
                    "SELECT height, idx, digest, first, last, size, root FROM anchors "
                    "WHERE fog = ? ORDER BY height, idx", (fog,))]

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
        for lock, name in ((self._wlock, "_w"), (self._rlock, "_r")):
            with lock:
                db = getattr(self, name)
                setattr(self, name, None)
                if db is not None:
                    db.close()


def _participant(row: Any) -> Participant:
    pid, role, pub, name, nonce = row
    return Participant(bytes(pid), role, bytes(pub), name, nonce)
