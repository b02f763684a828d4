"""The node's storage health: what a failed disk write was, and whether the node is in a
storage fault now (a full disk, an I/O error, a read-only or damaged database).

A storage fault is not a bug: the ingest thread reports it once (one log line with the
reason, `/healthz` 503, a counter in /metrics), keeps nothing half done (ingest re-indexes
the log before it handles anything else, so appends and their index stay one unit), acks
nothing it could not store, and tries again; when a step succeeds the fault clears by
itself and an alert records how long it lasted. No operator action is needed.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass

__all__ = ["StorageHealth", "fault_kind"]

_ERRNO_KINDS = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EIO: "io_error",
                errno.EROFS: "read_only"}


def _sqlite_kind(e: sqlite3.Error) -> str:
    text = str(e).lower()
    if "full" in text:  # SQLITE_FULL: "database or disk is full"
        return "disk_full"
    if "readonly" in text or "read-only" in text:
        return "read_only"
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return "corrupt"
    if "i/o" in text:
        return "io_error"
    if "locked" in text or "busy" in text:
        return "busy"
    return "database"


def fault_kind(e: BaseException) -> str | None:
    """The storage fault behind `e` (its cause chain included): disk_full, io_error,
    read_only, corrupt, busy or database; None if `e` is no storage failure."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, sqlite3.Error):
            return _sqlite_kind(cur)
        if isinstance(cur, OSError) and cur.errno in _ERRNO_KINDS:
            return _ERRNO_KINDS[cur.errno]
        cur = cur.__cause__ or cur.__context__
    return None


@dataclass(frozen=True)
class Fault:
    kind: str
    detail: str
    since: float


class StorageHealth:
    """Whether the node is in a storage fault now, and failures by kind since it started.
    Written by the ingest thread, read by the API and metrics (a lock of its own: the API
    must answer /healthz while the ingest thread holds the node's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self.failures: Counter[str] = Counter()
        self.recoveries = 0

    @property
    def fault(self) -> Fault | None:
        with self._lock:
            return self._fault

    def count(self, kind: str) -> None:
        """Count a failed step that is no storage fault (kind "internal")."""
        with self._lock:
            self.failures[kind] += 1

    def failed(self, kind: str, detail: str, now: float) -> bool:
        """Count a failed step; True if it starts a fault (the one to log)."""
        with self._lock:
            self.failures[kind] += 1
            if self._fault is not None:
                return False
            self._fault = Fault(kind, detail, now)
            return True

    def failures_now(self) -> dict[str, int]:
        """Failed steps by kind so far (a copy: the ingest thread keeps counting)."""
        with self._lock:
            return dict(self.failures)

    def step_ok(self) -> Fault | None:
        """A step succeeded: the fault that ended with it, if there was one."""
        with self._lock:
            ended, self._fault = self._fault, None
            if ended is not None:
                self.recoveries += 1
            return ended
