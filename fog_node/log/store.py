"""The fog node's append-only log: entries, their RFC 9162 tree, and proofs over it.

`LogStore` is the interface; `MemoryLogStore` keeps everything in lists (tests, tools) and
`SQLiteLogStore` keeps it in one SQLite file, durable once `append_batch` returns. Both
cache the hash of every complete perfect subtree ("node"), so roots, subtree hashes and
proofs cost O(log n) lookups instead of rehashing the log, and both behave identically:
one contract test suite runs against both.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

from meterledger import errors
from meterledger.infra.sqlite import atomic, connect
from meterledger.wire import merkle
from meterledger.wire.merkle import CompactRange, ConsistencyProof, InclusionProof


class LogStoreError(errors.StorageError):
    """Something the log store was asked to do, or found on disk, that it cannot accept."""


class LogRangeError(LogStoreError, IndexError):
    """An index, size or range beyond what the log holds."""


class LogEntryError(LogStoreError, TypeError):
    """An entry that cannot be logged; the batch holding it was appended in no part."""


class LogCorruptError(LogStoreError):
    """The store's file does not hold what a log written by this module would."""


class LogClosedError(LogStoreError):
    """The store was used after close()."""


class LogStore(Protocol):
    def size(self) -> int:
        """Number of entries; they have indices 0 .. size-1."""
        ...

    def append_batch(self, entries: Sequence[bytes]) -> int:
        """Append all entries or none; return the index of the first. Durable on return."""
        ...

    def entry(self, index: int) -> bytes: ...

    def leaf_hash(self, index: int) -> bytes: ...

    def subtree_hash(self, lo: int, hi: int) -> bytes:
        """MTH of entries [lo, hi), 0 <= lo < hi <= size."""
        ...

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` entries (default: all of them)."""
        ...

    def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof: ...

    def consistency_proof(self, first: int, second: int | None = None) -> ConsistencyProof: ...

    def close(self) -> None: ...


def _check_entries(entries: Sequence[bytes]) -> list[bytes]:
    # validate the whole batch before touching any state: a batch is all or nothing
    if isinstance(entries, bytes | bytearray | memoryview | str):
        raise LogEntryError(
            f"append_batch takes a sequence of entries, not a single {type(entries).__name__}"
        )
    batch = list(entries)
    for i, e in enumerate(batch):
        if not isinstance(e, bytes):
            raise LogEntryError(
                f"entry {i} of the batch is {type(e).__name__}, not bytes; nothing was appended"
            )
    return batch


def _frontier_nodes(size: int) -> list[tuple[int, int]]:
    """(level, index) of the perfect subtrees a CompactRange of `size` holds, largest first."""
    nodes = []
    start = 0
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            nodes.append((level, start >> level))
            start += 1 << level
    return nodes


class _CachedTreeLog(ABC):
    """Roots, subtree hashes and proofs for a log that can look up its perfect-subtree nodes."""

    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def _node(self, level: int, index: int) -> bytes:
        """Hash of the complete perfect subtree of leaves [index*2^level, (index+1)*2^level)."""

    @abstractmethod
    def _frontier(self) -> CompactRange: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_index(self, index: int, size: int) -> None:
        if not 0 <= index < size:
            raise LogRangeError(
                f"entry index {index} is outside the log's {size} entries"
                + (f" (valid: 0..{size - 1})" if size else "")
            )

    def _check_size(self, size: int, what: str = "tree size") -> None:
        current = self.size()
        if size < 0:
            raise LogRangeError(f"{what} {size} is negative")
        if size > current:
            raise LogRangeError(f"{what} {size} is beyond the log's current size {current}")

    def subtree_hash(self, lo: int, hi: int) -> bytes:
        size = self.size()
        if not 0 <= lo < hi <= size:
            raise LogRangeError(
                f"subtree [{lo}, {hi}) is not a non-empty range within the log's {size} entries"
            )
        return self._subtree(lo, hi)

    def _subtree(self, lo: int, hi: int) -> bytes:
        return merkle.subtree_root(lo, hi, self._node)

    def root(self, size: int | None = None) -> bytes:
        if size is None:
            return self._frontier().root()
        self._check_size(size)
        if size == 0:
            return merkle.EMPTY_ROOT
        return self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        tree_size = self.size() if size is None else size
        self._check_size(tree_size)
        if not 0 <= index < tree_size:
            raise LogRangeError(
                f"leaf index {index} is not in a tree of size {tree_size}"
                + ("" if tree_size else ": the empty tree has no leaves")
            )
        path = merkle.inclusion_path(index, tree_size, self._subtree)
        return InclusionProof(index, tree_size, tuple(path))

    def consistency_proof(self, first: int, second: int | None = None) -> ConsistencyProof:
        second_size = self.size() if second is None else second
        self._check_size(second_size, "second size")
        if not 0 <= first <= second_size:
            raise LogRangeError(
                f"first size {first} is not between 0 and the second size {second_size}"
            )
        path = merkle.consistency_path(first, second_size, self._subtree)
        return ConsistencyProof(first, second_size, tuple(path))


class MemoryLogStore(_CachedTreeLog):
    """The log in RAM: the in-memory twin of SQLiteLogStore, for tests and tools."""

    def __init__(self) -> None:
        self._entries: list[bytes] = []
        # _levels[l][j]: hash of leaves [j*2^l, (j+1)*2^l); _levels[0] are the leaf hashes
        self._levels: list[list[bytes]] = [[]]
        self._range = CompactRange()
        self._closed = False

    def _open(self) -> None:
        if self._closed:
            raise LogClosedError("the memory log store was used after close()")

    def size(self) -> int:
        self._open()
        return len(self._entries)

    def append_batch(self, entries: Sequence[bytes]) -> int:
        self._open()
        batch = _check_entries(entries)
        first = len(self._entries)
        frontier = self._range.copy()
        completed = [frontier.append(merkle.leaf_hash(e)) for e in batch]
        # nothing below can fail, so the store never holds part of a batch
        self._entries.extend(batch)
        for nodes in completed:
            for level, h in enumerate(nodes):
                if level == len(self._levels):
                    self._levels.append([])
                self._levels[level].append(h)
        self._range = frontier
        return first

    def entry(self, index: int) -> bytes:
        self._check_index(index, self.size())
        return self._entries[index]

    def leaf_hash(self, index: int) -> bytes:
        self._check_index(index, self.size())
        return self._levels[0][index]

    def _node(self, level: int, index: int) -> bytes:
        return self._levels[level][index]

    def _frontier(self) -> CompactRange:
        self._open()
        return self._range

    def close(self) -> None:
        self._closed = True


_SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries("
    "idx INTEGER PRIMARY KEY, leaf BLOB NOT NULL, data BLOB NOT NULL)",
    # level >= 1 only: the level-0 node of entry i is entries.leaf, not stored twice
    "CREATE TABLE IF NOT EXISTS nodes("
    "level INTEGER, idx INTEGER, hash BLOB, PRIMARY KEY(level, idx))",
)


class SQLiteLogStore(_CachedTreeLog):
    """The log in one SQLite file; an entry survives kill -9 and power loss once
    append_batch returns.

    WAL with synchronous=FULL fsyncs the WAL at every commit, and each batch is one
    transaction holding its entries and every perfect-subtree node they complete, so after
    a crash the file holds whole batches only, with their nodes. Opening an existing file
    continues where it left off. One connection, guarded by a lock, may be shared by
    threads.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        try:
            db = connect(self._path, wal=False)  # _setup asks for WAL and checks the answer
        except sqlite3.Error as e:  # e.g. a file that is no database at all
            raise LogStoreError(f"{self._path}: cannot open as a log: {e}") from e
        try:
            self._db = db
            self._setup(db)
            self._size = self._stored_size(db)
            self._range = CompactRange(
                self._size, [self._node(lvl, i) for lvl, i in _frontier_nodes(self._size)]
            )
        except BaseException:
            db.close()
            self._db = None
            raise

    def _setup(self, db: sqlite3.Connection) -> None:
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LogStoreError(
                    f"{self._path}: SQLite would not use WAL (journal mode is {mode!r}); "
                    "the log needs a file on a filesystem that supports it"
                )
            with atomic(db):
                version = db.execute("PRAGMA user_version").fetchone()[0]
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
                if version == 0 and tables:
                    raise LogCorruptError(
                        f"{self._path} is an SQLite file with tables {sorted(tables)} "
                        "that is not a MeterLedger log"
                    )
                if version not in (0, _SCHEMA_VERSION):
                    raise LogCorruptError(
                        f"{self._path} has log format {version}; this code reads "
                        f"format {_SCHEMA_VERSION}"
                    )
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise LogStoreError(f"{self._path}: cannot open as a log: {e}") from e

    def _stored_size(self, db: sqlite3.Connection) -> int:
        # O(log n): the rowid b-tree's last key. Gaps cannot arise (appends check the size
        # under the write lock); a missing frontier node is caught right after this.
        (last,) = db.execute("SELECT MAX(idx) FROM entries").fetchone()
        return 0 if last is None else int(last) + 1

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise LogClosedError(f"the log store {self._path} was used after close()")
        return self._db

    def _one(self, sql: str, args: tuple[int, ...]) -> bytes | None:
        with self._lock:
            try:
                row = self._conn().execute(sql, args).fetchone()
            except sqlite3.Error as e:
                raise LogStoreError(f"{self._path}: read failed: {e}") from e
        return None if row is None else bytes(row[0])

    def size(self) -> int:
        with self._lock:
            self._conn()
            return self._size

    def append_batch(self, entries: Sequence[bytes]) -> int:
        batch = _check_entries(entries)
        with self._lock:
            db = self._conn()
            first = self._size
            if not batch:
                return first
            frontier = self._range.copy()
            entry_rows: list[tuple[int, bytes, bytes]] = []
            node_rows: list[tuple[int, int, bytes]] = []
            for offset, data in enumerate(batch):
                index = first + offset
                completed = frontier.append(merkle.leaf_hash(data))
                entry_rows.append((index, completed[0], data))
                for level in range(1, len(completed)):
                    node_rows.append((level, ((index + 1) >> level) - 1, completed[level]))
            try:
                with atomic(db):
                    self._write_batch(db, first, entry_rows, node_rows)
            except sqlite3.Error as e:
                raise LogStoreError(
                    f"{self._path}: appending {len(batch)} entries at index {first} failed, "
                    f"nothing was appended: {e}"
                ) from e
            self._size = frontier.size
            self._range = frontier
            return first

    def _write_batch(
        self,
        db: sqlite3.Connection,
        first: int,
        entry_rows: list[tuple[int, bytes, bytes]],
        node_rows: list[tuple[int, int, bytes]],
    ) -> None:
        # under the write lock: if another connection appended to this file since we
        # read its size, our frontier is stale and the batch would fork the tree
        (last,) = db.execute("SELECT MAX(idx) FROM entries").fetchone()
        on_disk = 0 if last is None else int(last) + 1
        if on_disk != first:
            raise LogCorruptError(
                f"{self._path} holds {on_disk} entries but this store expected {first}: "
                "another writer appended to the file"
            )
        db.executemany("INSERT INTO entries(idx, leaf, data) VALUES (?, ?, ?)", entry_rows)
        db.executemany("INSERT INTO nodes(level, idx, hash) VALUES (?, ?, ?)", node_rows)

    def verify(self) -> int:
        """Recompute the whole tree from the entries' bytes and compare it with what is
        stored: every leaf hash and every perfect-subtree node (what proofs are made of).
        Raises LogCorruptError naming the first difference; returns the size checked. One
        pass over the file, O(size) hashing."""
        with self._lock:
            db = self._conn()
            try:
                nodes = {(int(lvl), int(i)): bytes(h) for lvl, i, h in
                         db.execute("SELECT level, idx, hash FROM nodes")}
                frontier = CompactRange(0, [])
                expect = 0
                for idx, leaf, data in db.execute("SELECT idx, leaf, data FROM entries "
                                                  "ORDER BY idx"):
                    if idx != expect:
                        raise LogCorruptError(f"{self._path}: entry {expect} is missing")
                    completed = frontier.append(merkle.leaf_hash(bytes(data)))
                    if bytes(leaf) != completed[0]:
                        raise LogCorruptError(f"{self._path}: entry {idx}'s bytes do not match "
                                              "its leaf hash")
                    for level in range(1, len(completed)):
                        at = ((idx + 1) >> level) - 1
                        if nodes.get((level, at)) != completed[level]:
                            raise LogCorruptError(
                                f"{self._path}: the stored node for leaves "
                                f"[{at << level}, {(at + 1) << level}) does not match them")
                    expect += 1
            except sqlite3.Error as e:
                raise LogCorruptError(f"{self._path}: unreadable: {e}") from e
            if expect != self._size:
                raise LogCorruptError(f"{self._path}: {expect} entries, expected {self._size}")
            return expect

    def entry(self, index: int) -> bytes:
        self._check_index(index, self.size())
        data = self._one("SELECT data FROM entries WHERE idx = ?", (index,))
        if data is None:
            raise LogCorruptError(f"{self._path}: entry {index} is missing")
        return data

    def leaf_hash(self, index: int) -> bytes:
        self._check_index(index, self.size())
        return self._node(0, index)

    def _node(self, level: int, index: int) -> bytes:
        if level == 0:
            h = self._one("SELECT leaf FROM entries WHERE idx = ?", (index,))
        else:
            h = self._one("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index))
        if h is None or len(h) != merkle.HASH_SIZE:
            raise LogCorruptError(
                f"{self._path}: the node for leaves [{index << level}, {(index + 1) << level})"
                f" at level {level} is {'missing' if h is None else 'not a SHA-256 hash'}"
            )
        return h

    def _frontier(self) -> CompactRange:
        with self._lock:
            self._conn()
            return self._range

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
