"""What the fog's HTTP API reads, on connections of its own: an API request never takes the
ingest thread's lock (`FogNode.lock`).

The ingest thread writes log.db, registry.db and checkpoints.db through the node's
connections (SQLite WAL). An API request takes a `Snapshot` from a pool of read-only
connection sets (one set per request running at once, made when first needed) and opens a
read transaction on each file: the checkpoints, then the registry, then the log, the reverse
of the order the node commits them in. Everything the checkpoints and the registry it sees
refer to is therefore in the log it sees (the log commits first; a checkpoint is sealed
over a committed size; the registry indexes committed entries), and a proof is computed
over a log that cannot move under it. WAL readers need no lock beside the writer; a read
transaction holds back the WAL's checkpointing only while one request reads. The cooked
index (cooked.db) and the chain link's outbox (chain.db) are read the same way, begun
before the files whose entries they name.

Every lookup is one keyed query: a meter's reading by (dev, seq), its enrollment decisions
by (dev, log index) (`Registry.decision_before`), a checkpoint by size, an entry or a tree
node by index. Nothing here scans the log.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fog_node.log.checkpoints import Checkpoints
from fog_node.log.store import LogCorruptError
from fog_node.registry import Registry
from meterledger.infra.sqlite import connect
from meterledger.wire import merkle
from meterledger.wire.merkle import ConsistencyProof, InclusionProof

_IDLE = 8  # connection sets kept for the next requests; more are closed when returned


def read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection that never creates the file: for readers of a data dir whose
    node may not be running (`fog export`, `fog devices`, the republisher)."""
    db = connect(path.resolve().as_uri() + "?mode=ro", wal=False, uri=True)  # %-quoted
    db.execute("PRAGMA query_only = ON")
    return db


def _reader(path: Path) -> sqlite3.Connection:
    db = connect(path, wal=False)  # the node set up WAL; a reader leaves the mode alone
    db.execute("PRAGMA query_only = ON")
    return db


class RegistryView(Registry):
    """The registry's read methods over a snapshot's connection (the node made the schema)."""

    def __init__(self, db: sqlite3.Connection) -> None:  # no super(): nothing to create
        self.db = db


class CheckpointsView(Checkpoints):
    """The checkpoints' read methods (latest, covering, at_height) over a snapshot's
    connection; it seals nothing."""

    def __init__(self, db: sqlite3.Connection) -> None:  # no super(): nothing to create
        self.db = db


class LogView:
    """The log as a snapshot holds it: `size` entries, their bytes, and proofs over them
    from the stored perfect-subtree nodes (fog_node.log.store's tables)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db, self.path = db, path
        (last,) = db.execute("SELECT MAX(idx) FROM entries").fetchone()
        self.size = 0 if last is None else int(last) + 1

    def _one(self, sql: str, args: tuple[int, ...]) -> bytes:
        row = self.db.execute(sql, args).fetchone()
        if row is None:
            raise LogCorruptError(f"{self.path}: {sql.split()[1]} {args} is missing")
        return bytes(row[0])

    def entry(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise merkle.TreeRangeError(f"entry {index} is outside the log's {self.size}")
        return self._one("SELECT data FROM entries WHERE idx = ?", (index,))

    def _node(self, level: int, index: int) -> bytes:
        if level == 0:
            return self._one("SELECT leaf FROM entries WHERE idx = ?", (index,))
        return self._one("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index))

    def _subtree(self, lo: int, hi: int) -> bytes:
        return merkle.subtree_root(lo, hi, self._node)

    def inclusion_proof(self, index: int, size: int) -> InclusionProof:
        if size > self.size:
            raise merkle.TreeRangeError(f"tree size {size} is beyond the log's {self.size}")
        return InclusionProof(index, size, tuple(merkle.inclusion_path(index, size,
                                                                       self._subtree)))

    def consistency_proof(self, first: int, second: int) -> ConsistencyProof:
        if second > self.size:
            raise merkle.TreeRangeError(f"tree size {second} is beyond the log's {self.size}")
        return ConsistencyProof(first, second, tuple(merkle.consistency_path(
            first, second, self._subtree)))


class _Connections:
    """One set of read-only connections to the node's files: the three of the log, and
    the cooked index and the chain link's outbox the dashboard's endpoints read
    (fog_node.dashboard); chain.db only once the node made it (a node that anchors)."""

    def __init__(self, data_dir: Path) -> None:
        self.log_path = data_dir / "log.db"
        self.chain_path = data_dir / "chain.db"
        self.chain: sqlite3.Connection | None = None
        self.attach_chain()
        self.checkpoints = _reader(data_dir / "checkpoints.db")
        self.cooked = _reader(data_dir / "cooked.db")
        self.registry = _reader(data_dir / "registry.db")
        self.log = _reader(self.log_path)

    def attach_chain(self) -> None:
        """Open chain.db if the node has made it since (never creates it)."""
        if self.chain is None and self.chain_path.is_file():
            self.chain = _reader(self.chain_path)

    def all(self) -> tuple[sqlite3.Connection, ...]:
        # the order snapshots begin in: the outbox refers to checkpoints, checkpoints and
        # the cooked index to log entries (each committed after what it refers to)
        first = (self.chain,) if self.chain is not None else ()
        return (*first, self.checkpoints, self.cooked, self.registry, self.log)

    def close(self) -> None:
        for db in self.all():
            db.close()


class Snapshot:
    """One request's consistent view: `checkpoints`, `registry`, `log` (see the module),
    and the raw connections `cooked` (cooked.db) and `chain` (chain.db, None when the node
    does not anchor) for the dashboard's queries."""

    def __init__(self, c: _Connections) -> None:
        for db in c.all():  # BEGIN defers the snapshot to the first read: read in order
            db.execute("BEGIN")
        self.chain = c.chain
        if self.chain is not None:
            self.chain.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        self.checkpoints = CheckpointsView(c.checkpoints)
        self.checkpoints.latest()
        self.cooked = c.cooked
        self.cooked.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        self.registry = RegistryView(c.registry)
        self.registry.indexed_upto()
        self.log = LogView(c.log, c.log_path)


class Reads:
    """The pool of connection sets an API reads through (thread-safe)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._free: list[_Connections] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        with self._lock:
            c = self._free.pop() if self._free else None
        if c is None:
            c = _Connections(self.data_dir)
        else:
            c.attach_chain()
        try:
            yield Snapshot(c)
        finally:
            for db in c.all():
                if db.in_transaction:
                    db.execute("COMMIT")  # ends the read transaction
            with self._lock:
                keep = not self._closed and len(self._free) < _IDLE
                if keep:
                    self._free.append(c)
            if not keep:
                c.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for c in free:
            c.close()
