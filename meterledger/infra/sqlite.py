"""Small SQLite helpers shared by the fog's state files (chain.db, cooked.db).

The connections are opened in autocommit mode (isolation_level=None), so statements that
must be durable together are grouped explicitly with `atomic`; `meta`/`set_meta` read and
write the key-value table `meta (k TEXT PRIMARY KEY, v)` each of those files has.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def atomic(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: everything inside is committed together, or rolled back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def meta(db: sqlite3.Connection, k: str) -> Any:
    row = db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
    return row[0] if row else None


def set_meta(db: sqlite3.Connection, k: str, v: Any) -> None:
    db.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
               (k, v))
