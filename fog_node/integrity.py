"""The startup check of a fog's data dir: a node that would serve proofs failing against its
own checkpoints must not start.

Two steps, both at every start (`FogNode` runs them):
1. `check_databases`, before any store is opened: SQLite's own `PRAGMA quick_check` on every
   database of the data dir (a damaged page header, a truncated file, a file that is no
   database), each through a connection of its own.
2. `check_log`, once the stores are open: the whole tree recomputed from the entries' bytes
   (every leaf hash and stored node, `SQLiteLogStore.verify`), and the latest signed
   checkpoint verified with the fog's key and matched against the log's root at its size.

A failure is a `CorruptDataError` naming the file, what is wrong, and the remedy for that
file: the log and its checkpoints are restored from a backup, the databases derived from
the log are moved aside and rebuilt from it at the next start.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fog_node.log.checkpoints import Checkpoints
from fog_node.log.store import LogStoreError, SQLiteLogStore
from meterledger import errors
from meterledger import wire as P

__all__ = ["REMEDIES", "CorruptDataError", "check_databases", "check_log"]

_RESTORE = ("restore the data dir's {name} from the latest backup (the dispatch chain's "
            "anchored checkpoints show which entries any copy must hold); never start with "
            "a rewritten log")
_REBUILD = ("move {name} aside (mv {name} {name}.damaged) and start again: it is derived from "
            "log.db and rebuilt from it at start ({lost})")
REMEDIES: dict[str, str] = {
    "log.db": _RESTORE,
    "checkpoints.db": _RESTORE,
    "chain.db": "restore {name} (the outbox of signed chain transactions) from the latest backup",
    "registry.db": _REBUILD.replace("{lost}", "quarantined readings and alerts are lost"),
    "cooked.db": _REBUILD.replace("{lost}", "what is lost: the fault history, outages still "
                                            "open and closed outage records not yet queued to "
                                            "the chain"),
}


class CorruptDataError(errors.StorageError):
    """A database of the data dir is damaged; the message names it and the remedy."""

    def __init__(self, path: Path, what: str) -> None:
        remedy = REMEDIES.get(path.name, "restore {name} from the latest backup")
        super().__init__(f"refusing to start: {path} is damaged ({what}); remedy: "
                         + remedy.format(name=path.name))
        self.path = path


def check_databases(data_dir: Path) -> None:
    """SQLite's quick_check on every database of the data dir that exists."""
    for name in REMEDIES:
        path = data_dir / name
        if not path.exists():
            continue
        try:
            db = sqlite3.connect(path, timeout=10)
        except sqlite3.Error as e:
            raise CorruptDataError(path, str(e)) from None
        try:
            rows = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as e:  # "file is not a database", "malformed"
            raise CorruptDataError(path, str(e)) from None
        finally:
            db.close()
        if rows != ["ok"]:
            raise CorruptDataError(path, "; ".join(str(r) for r in rows))


def check_log(data_dir: Path, log: SQLiteLogStore, checkpoints: Checkpoints,
              key: P.PublicKey) -> None:
    """The log's tree from its bytes, and the latest checkpoint against it."""
    try:
        size = log.verify()
    except LogStoreError as e:
        raise CorruptDataError(data_dir / "log.db", str(e)) from None
    latest = checkpoints.latest()
    if latest is None:
        return
    where = data_dir / "checkpoints.db"
    try:
        P.verify(latest.msg, key)
    except P.ProtocolError as e:
        raise CorruptDataError(where, f"checkpoint {latest.height} does not verify with the "
                                      f"fog's key: {e.reason}") from None
    if latest.size > size:
        raise CorruptDataError(data_dir / "log.db", f"checkpoint {latest.height} covers "
                                                    f"{latest.size} entries, the log holds {size}")
    if log.root(latest.size) != latest.root:
        raise CorruptDataError(data_dir / "log.db", f"the root of its first {latest.size} "
                                                    f"entries is not checkpoint "
                                                    f"{latest.height}'s")
