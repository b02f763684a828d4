"""The side-chain: signed type-6 checkpoints over the log, hash-chained through prev.

A checkpoint is sealed when the log grew since the last one (at most every `period`
seconds, the service's timer) and at every interval close, where it also names the
interval end it fully covers (`ivl`). Checkpoints live in their own SQLite file; each one
refers to a log size that was committed before it was signed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fog_node.log.store import LogStore
from meterledger import errors
from meterledger import wire as P
from meterledger.infra.sqlite import connect


class CheckpointError(errors.StorageError, ValueError):
    pass


@dataclass(frozen=True)
class Checkpoint:
    height: int
    size: int
    root: bytes
    t: int
    msg: bytes

    @property
    def digest(self) -> bytes:
        return P.digest(self.msg)


class Checkpoints:
    def __init__(self, path: Path | str, key: P.SigningKey, log: LogStore) -> None:
        self.key = key
        self.log = log
        self.db = connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS checkpoints (height INTEGER PRIMARY KEY, "
                        "size INTEGER NOT NULL, root BLOB NOT NULL, t INTEGER NOT NULL, "
                        "msg BLOB NOT NULL)")

    def close(self) -> None:
        self.db.close()

    def _row(self, sql: str, args: tuple[int, ...] = ()) -> Checkpoint | None:
        row = self.db.execute(sql, args).fetchone()
        return Checkpoint(*row) if row else None

    def latest(self) -> Checkpoint | None:
        return self._row("SELECT height, size, root, t, msg FROM checkpoints "
                         "ORDER BY height DESC LIMIT 1")

    def at_height(self, height: int) -> Checkpoint | None:
        return self._row("SELECT height, size, root, t, msg FROM checkpoints WHERE height = ?",
                         (height,))

    def covering(self, size: int) -> Checkpoint | None:
        """The first checkpoint whose tree holds at least `size` entries."""
        return self._row("SELECT height, size, root, t, msg FROM checkpoints WHERE size >= ? "
                         "ORDER BY height LIMIT 1", (size,))

    def seal(self, now: int, ivl: int | None = None, agg: bytes | None = None,
             force: bool = False) -> Checkpoint | None:
        """Sign a checkpoint of the log as it is; None if nothing changed and not forced."""
        last = self.latest()
        size = self.log.size()
        if last is not None and size < last.size:
            raise CheckpointError(f"log shrank from {last.size} to {size} entries")
        if last is not None and size == last.size and not force and ivl is None:
            return None
        height = last.height + 1 if last else 1
        prev = last.digest if last else P.ZERO32
        root = self.log.root(size)
        t = max(now, last.t) if last else now  # checkpoint times never go backwards
        msg = P.sign1(self.key, P.checkpoint(self.key.id, height, size, root, prev, t, ivl, agg))
        self.db.execute("INSERT INTO checkpoints (height, size, root, t, msg) VALUES (?, ?, ?, ?, ?)",
                        (height, size, root, t, msg))
        return Checkpoint(height, size, root, t, msg)
