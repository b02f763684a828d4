"""The SQLite block store's application records (docs/PROTOCOL.md section 25): reads of the
`records` table, which the store's writer fills as blocks are appended."""

from __future__ import annotations

from typing import Any

from meterledger.wire.cbor import decode


class SQLiteRecords:
    """Reads of application records; the store gives `_rows` and `_has`."""

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError

    def _has(self, table: str) -> bool:
        raise NotImplementedError

    readonly: bool

    def _no_records(self) -> bool:
        # a writable store made the table when it opened; only a read-only open of a file
        # older than application records may lack it
        return self.readonly and not self._has("records")

    def record(self, table: str, key: bytes) -> Any:
        if self._no_records():  # a file of an older version opened read-only
            return None
        rows = self._rows("SELECT value FROM records WHERE tbl = ? AND key = ?", (table, key))
        return decode(bytes(rows[0][0])) if rows else None

    def next_record(self, table: str, after: bytes) -> tuple[bytes, Any] | None:
        if self._no_records():
            return None
        rows = self._rows("SELECT key, value FROM records WHERE tbl = ? AND key > ? "
                          "ORDER BY key LIMIT 1", (table, after))
        return (bytes(rows[0][0]), decode(bytes(rows[0][1]))) if rows else None

    def records(self, table: str, prefix: bytes = b"", after: bytes | None = None,
                limit: int | None = None) -> list[tuple[bytes, Any]]:
        if self._no_records():
            return []
        lo = prefix if after is None or after < prefix else after
        sql = "SELECT key, value FROM records WHERE tbl = ? AND key >= ?"
        args: list[Any] = [table, lo]
        if after is not None and after >= prefix:
            sql = "SELECT key, value FROM records WHERE tbl = ? AND key > ?"
        top = _prefix_end(prefix)
        if top is not None:
            sql += " AND key < ?"
            args.append(top)
        sql += " ORDER BY key" + (" LIMIT ?" if limit is not None else "")
        if limit is not None:
            args.append(max(0, limit))
        return [(bytes(k), decode(bytes(v))) for k, v in self._rows(sql, tuple(args))]



def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key starting with `prefix`; None if there is none."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)
