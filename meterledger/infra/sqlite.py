"""SQLite as every MeterLedger database uses it.

`connect` opens a file the one way the services want it: autocommit (isolation_level=None,
so statements that must be durable together are grouped explicitly with `atomic`), usable
from any thread (each owner serialises its use with its own lock), synchronous=FULL (a
commit is on disk when it returns) and, by default, the WAL journal (readers beside a
writer). `meta`/`set_meta` read and write the key-value table `meta (k TEXT PRIMARY KEY, v)`
the fog's state files (chain.db, cooked.db) have.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def connect(path: str | os.PathLike[str], *, wal: bool = True, uri: bool = False,
            timeout: float = 5.0) -> sqlite3.Connection:
    """A connection as described above. `wal=False` leaves the journal mode alone (a second
    connection to a file its owner set up, or an owner that checks what WAL answered)."""
    db = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False,
                         uri=uri, timeout=timeout)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


@contextmanager
def atomic(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: everything inside is committed together, or rolled back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        # SQLite has already rolled back after some errors (SQLITE_FULL, SQLITE_IOERR):
        # a second ROLLBACK would raise and hide the error that matters
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def meta(db: sqlite3.Connection, k: str) -> Any:
    row = db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
    return row[0] if row else None


def set_meta(db: sqlite3.Connection, k: str, v: Any) -> None:
    db.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
               (k, v))
