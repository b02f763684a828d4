"""One contract for both log stores, checked against the naive RFC 9162 reference.

Every test taking `store` runs against MemoryLogStore and SQLiteLogStore; the tests after
them are about what only a file can do: reopen, refuse a foreign file, survive kill -9.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from fog_node.log.store import (
    LogClosedError,
    LogCorruptError,
    LogEntryError,
    LogRangeError,
    LogStore,
    LogStoreError,
    MemoryLogStore,
    SQLiteLogStore,
)
from meterledger.wire import merkle
from tests import merkle_reference as ref

ROOT = pathlib.Path(__file__).resolve().parents[2]
BATCHES = [1, 3, 0, 7, 16, 1, 5, 40]  # 73 entries, crossing several powers of two


def make_entries(n: int, start: int = 0) -> list[bytes]:
    return [b"reading %d " % i + bytes(i % 5) for i in range(start, start + n)]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[LogStore]:
    s: LogStore = (
        MemoryLogStore() if request.param == "memory" else SQLiteLogStore(tmp_path / "log.db")
    )
    yield s
    s.close()


def fill(store: LogStore) -> list[bytes]:
    logged: list[bytes] = []
    for n in BATCHES:
        batch = make_entries(n, len(logged))
        assert store.append_batch(batch) == len(logged)
        logged += batch
    return logged


def test_empty_store(store: LogStore) -> None:
    assert store.size() == 0
    assert store.root() == store.root(0) == merkle.EMPTY_ROOT
    assert store.consistency_proof(0, 0).path == ()
    assert store.append_batch([]) == 0
    with pytest.raises(LogRangeError, match="the empty tree has no leaves"):
        store.inclusion_proof(0)
    with pytest.raises(LogRangeError, match="outside the log's 0 entries"):
        store.entry(0)


def test_entries_leaf_hashes_and_roots_at_every_size(store: LogStore) -> None:
    logged = fill(store)
    assert store.size() == len(logged) == 73
    for i, e in enumerate(logged):
        assert store.entry(i) == e
        assert store.leaf_hash(i) == ref.leaf(e)
    for n in range(len(logged) + 1):
        assert store.root(n) == ref.mth(logged[:n]), n
    assert store.root() == ref.mth(logged)


def test_proofs_equal_the_reference_and_verify(store: LogStore) -> None:
    logged = fill(store)
    roots = [ref.mth(logged[:n]) for n in range(len(logged) + 1)]
    for size in (1, 2, 4, 11, 27, 28, 33, 73):
        for index in range(size):
            proof = store.inclusion_proof(index, size)
            assert (proof.leaf_index, proof.tree_size) == (index, size)
            assert list(proof.path) == ref.path(index, logged[:size])
            proof.verify(ref.leaf(logged[index]), roots[size])
            assert ref.verify_inclusion(
                ref.leaf(logged[index]), index, size, proof.path, roots[size]
            )
    assert store.inclusion_proof(5).tree_size == 73
    for second in range(len(logged) + 1):
        for first in range(second + 1):
            cproof = store.consistency_proof(first, second)
            assert list(cproof.path) == (ref.proof(first, logged[:second]) if first else [])
            cproof.verify(roots[first], roots[second])
    assert store.consistency_proof(10).second == 73


def test_subtree_hashes_equal_the_reference(store: LogStore) -> None:
    logged = fill(store)
    rng = random.Random(9162)
    ranges = [(0, 73), (0, 1), (72, 73), (1, 4), (3, 70), (64, 73)]
    ranges += [tuple(sorted(rng.sample(range(74), 2))) for _ in range(200)]  # type: ignore[misc]
    for lo, hi in ranges:
        assert store.subtree_hash(lo, hi) == ref.mth(logged[lo:hi]), (lo, hi)


def test_a_batch_with_a_bad_entry_appends_nothing(store: LogStore) -> None:
    store.append_batch(make_entries(5))
    root = store.root()
    bad: list[object] = [b"ok", b"fine", "not bytes", b"never"]
    with pytest.raises(LogEntryError, match="entry 2 of the batch is str, not bytes"):
        store.append_batch(bad)  # type: ignore[arg-type]
    with pytest.raises(LogEntryError, match="not a single bytes"):
        store.append_batch(b"one entry, not a batch")  # type: ignore[arg-type]
    with pytest.raises(LogEntryError, match="entry 0 of the batch is bytearray"):
        store.append_batch([bytearray(b"mutable")])  # type: ignore[list-item]
    assert store.size() == 5 and store.root() == root
    assert store.append_batch(make_entries(2, 5)) == 5
    assert store.root() == ref.mth(make_entries(7))


def test_range_errors_say_what_is_out_of_range(store: LogStore) -> None:
    store.append_batch(make_entries(6))
    cases = [
        (lambda: store.entry(6), "entry index 6 is outside the log's 6 entries \\(valid: 0..5\\)"),
        (lambda: store.entry(-1), "entry index -1"),
        (lambda: store.leaf_hash(6), "entry index 6"),
        (lambda: store.root(7), "tree size 7 is beyond the log's current size 6"),
        (lambda: store.root(-1), "tree size -1 is negative"),
        (lambda: store.subtree_hash(3, 3), r"subtree \[3, 3\) is not a non-empty range"),
        (lambda: store.subtree_hash(0, 7), r"subtree \[0, 7\)"),
        (lambda: store.inclusion_proof(6), "leaf index 6 is not in a tree of size 6"),
        (lambda: store.inclusion_proof(0, 7), "tree size 7 is beyond"),
        (
            lambda: store.consistency_proof(5, 3),
            "first size 5 is not between 0 and the second size 3",
        ),
        (lambda: store.consistency_proof(0, 7), "second size 7 is beyond"),
    ]
    for call, message in cases:
        with pytest.raises(LogRangeError, match=message):
            call()
    assert issubclass(LogRangeError, LogStoreError) and issubclass(LogRangeError, IndexError)


def test_closed_store_refuses_use(store: LogStore) -> None:
    store.append_batch([b"x"])
    store.close()
    store.close()  # idempotent
    for call in (
        store.size,
        store.root,
        lambda: store.entry(0),
        lambda: store.append_batch([b"y"]),
        lambda: store.inclusion_proof(0),
    ):
        with pytest.raises(LogClosedError, match="after close"):
            call()


# --- SQLite only --------------------------------------------------------------------------


def test_sqlite_reopens_and_continues_like_memory(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log.db"
    twin = MemoryLogStore()
    logged: list[bytes] = []
    for round_, n in enumerate([5, 0, 1, 13, 32, 2, 64]):
        with SQLiteLogStore(path) as store:
            assert store.size() == len(logged)
            assert store.root() == twin.root()
            batch = make_entries(n, len(logged))
            assert store.append_batch(batch) == twin.append_batch(batch) == len(logged)
            logged += batch
            if round_ % 2:
                store.append_batch([b"extra"])
                twin.append_batch([b"extra"])
                logged.append(b"extra")
    with SQLiteLogStore(path) as store:
        assert store.size() == twin.size() == len(logged)
        for n in range(len(logged) + 1):
            assert store.root(n) == twin.root(n) == ref.mth(logged[:n])
        for i in range(0, len(logged), 7):
            assert store.inclusion_proof(i) == twin.inclusion_proof(i)
            assert store.consistency_proof(i) == twin.consistency_proof(i)


def test_sqlite_file_settings(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log.db"
    with SQLiteLogStore(path) as store:
        store.append_batch(make_entries(9))
        db = store._conn()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    raw = sqlite3.connect(path)
    # nodes hold levels >= 1 (level 0 is entries.leaf): 9 leaves complete 4 + 2 + 1
    levels = raw.execute("SELECT level, COUNT(*) FROM nodes GROUP BY level").fetchall()
    assert levels == [(1, 4), (2, 2), (3, 1)]
    raw.close()


def test_a_failed_transaction_leaves_no_trace(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.db"
    store = SQLiteLogStore(path)
    store.append_batch(make_entries(3))
    real_write = SQLiteLogStore._write_batch

    def write_then_fail(self: SQLiteLogStore, *args: object) -> None:
        real_write(self, *args)  # type: ignore[arg-type]
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SQLiteLogStore, "_write_batch", write_then_fail)
    with pytest.raises(LogStoreError, match="appending 4 entries at index 3 failed, nothing"):
        store.append_batch(make_entries(4, 3))
    monkeypatch.undo()
    assert store.size() == 3
    assert store.append_batch(make_entries(4, 3)) == 3
    store.close()
    with SQLiteLogStore(path) as again:
        assert again.size() == 7 and again.root() == ref.mth(make_entries(7))


def test_a_second_writer_on_the_same_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log.db"
    with SQLiteLogStore(path) as a, SQLiteLogStore(path) as b:
        a.append_batch([b"from a"])
        with pytest.raises(LogCorruptError, match="holds 1 entries but this store expected 0"):
            b.append_batch([b"from b"])
        assert a.append_batch([b"a again"]) == 1


def test_refuses_files_that_are_not_logs(tmp_path: pathlib.Path) -> None:
    other = tmp_path / "other.db"
    raw = sqlite3.connect(other)
    raw.execute("CREATE TABLE readings(x)")
    raw.commit()
    raw.close()
    with pytest.raises(LogCorruptError, match=r"tables \['readings'\].*not a MeterLedger log"):
        SQLiteLogStore(other)

    newer = tmp_path / "newer.db"
    SQLiteLogStore(newer).close()
    raw = sqlite3.connect(newer)
    raw.execute("PRAGMA user_version=7")
    raw.close()
    with pytest.raises(LogCorruptError, match="log format 7"):
        SQLiteLogStore(newer)

    text = tmp_path / "text.db"
    text.write_bytes(b"this is not a database, it is a shopping list" * 100)
    with pytest.raises(LogStoreError, match="cannot open as a log"):
        SQLiteLogStore(text)


def test_refuses_a_file_missing_a_node(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log.db"
    with SQLiteLogStore(path) as store:
        store.append_batch(make_entries(6))
    raw = sqlite3.connect(path)
    raw.execute("DELETE FROM nodes WHERE level = 2")
    raw.commit()
    raw.close()
    with pytest.raises(LogCorruptError, match=r"leaves \[0, 4\) at level 2 is missing"):
        SQLiteLogStore(path)


CHILD = textwrap.dedent(
    """
    import sys
    from fog_node.log.store import SQLiteLogStore

    store = SQLiteLogStore(sys.argv[1])
    size = store.size()
    while True:
        n = 1 + size % 7
        store.append_batch([b"reading %d " % i + bytes(i % 5) for i in range(size, size + n)])
        size += n
        # printed only once append_batch returned: this much is promised durable
        print(size, store.root().hex(), flush=True)
    """
)


def test_sigkill_mid_append_loses_nothing_committed(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(6962)
    promised: dict[int, bytes] = {}
    for _ in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)],
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            text=True,
        )
        assert child.stdout is not None
        try:
            for _ in range(rng.randrange(5, 60)):
                printed_size, printed_root = child.stdout.readline().split()
                promised[int(printed_size)] = bytes.fromhex(printed_root)
        finally:  # killed however the reading went: no child left appending
            child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        for line in rest.splitlines():
            printed_size, printed_root = line.split()
            promised[int(printed_size)] = bytes.fromhex(printed_root)

        with SQLiteLogStore(path) as store:
            final = store.size()
            assert final >= max(promised)
            logged = make_entries(final)
            assert [store.entry(i) for i in range(final)] == logged
            assert store.root() == ref.mth(logged)
            for size, root in promised.items():
                assert store.root(size) == root
                store.consistency_proof(size).verify(root, store.root())
            for index in rng.sample(range(final), 10):
                store.inclusion_proof(index).verify(ref.leaf(logged[index]), store.root())
