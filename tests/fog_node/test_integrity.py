"""A damaged data dir stops the fog at start, with the file and the remedy (issue 13): a byte
flipped in the log, a stored tree node that no longer matches, a checkpoint that is not the
log's, a damaged page header. Real SQLite files, damaged on disk between two starts."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fog_node.config import FogConfig
from fog_node.integrity import CorruptDataError
from fog_node.node import FogNode, init_data_dir
from meterledger import wire as P
from meterledger.infra.clock import ManualClock

T0 = 1_800_000_000
METER = P.SigningKey.from_int(0x5EED)
NOW = T0 + 900 * 20
ROOT = Path(__file__).parents[2]


def _cfg(d: Path) -> FogConfig:
    return FogConfig(data_dir=d, mqtt_security="lab")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fog with 10 readings and a sealed checkpoint, shut down cleanly."""
    d = tmp_path / "fog"
    init_data_dir(d)
    node = FogNode(_cfg(d), ManualClock(NOW))
    prev = bytes(32)
    msgs = []
    for seq in range(1, 11):
        raw = P.sign1(METER, P.reading(METER.id, seq, T0 + 900 * seq, 900, seq, 0, 0, prev))
        msgs.append(raw)
        prev = P.digest(raw)
    with node.lock:
        node.ingest.decide(METER.public_key.raw, "active", "test")
        node.ingest.process(msgs)
        node.checkpoints.seal(int(NOW))
    node.close()
    return d


def _starts(d: Path) -> None:
    FogNode(_cfg(d), ManualClock(NOW)).close()


def test_an_intact_data_dir_starts(data_dir: Path) -> None:
    _starts(data_dir)
    _starts(data_dir)


def _flip_in_file(path: Path, needle: bytes) -> None:
    raw = bytearray(path.read_bytes())
    at = raw.find(needle)
    assert at >= 0, "the bytes to damage are not in the file (still in the WAL?)"
    raw[at + len(needle) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_byte_flipped_in_an_entry_is_found(data_dir: Path) -> None:
    db = sqlite3.connect(data_dir / "log.db")
    entry = bytes(db.execute("SELECT data FROM entries WHERE idx = 5").fetchone()[0])
    db.close()
    _flip_in_file(data_dir / "log.db", entry[20:60])
    with pytest.raises(CorruptDataError) as e:
        _starts(data_dir)
    msg = str(e.value)
    assert str(data_dir / "log.db") in msg and "entry 5" in msg and "remedy: restore" in msg


def test_a_stored_node_that_does_not_match_is_found(data_dir: Path) -> None:
    db = sqlite3.connect(data_dir / "log.db")
    with db:
        db.execute("UPDATE nodes SET hash = ? WHERE level = 1 AND idx = 2", (bytes(32),))
    db.close()
    with pytest.raises(CorruptDataError, match=r"stored node for leaves \[4, 6\)"):
        _starts(data_dir)


def test_a_log_that_is_not_its_checkpoints_is_found(data_dir: Path) -> None:
    # the entries and tree agree with each other, but not with the signed checkpoint: the
    # last entry replaced by another, its leaf and nodes recomputed (a rewritten history)
    from fog_node.log.store import SQLiteLogStore

    db = sqlite3.connect(data_dir / "log.db")
    entries = [bytes(r[0]) for r in db.execute("SELECT data FROM entries ORDER BY idx")]
    with db:
        db.execute("DELETE FROM entries")
        db.execute("DELETE FROM nodes")
    db.close()
    entries[-1] = b"another entry"
    fresh = SQLiteLogStore(data_dir / "log.db")
    fresh.append_batch(entries)
    fresh.close()
    with pytest.raises(CorruptDataError, match="is not checkpoint 1's") as e:
        _starts(data_dir)
    assert str(data_dir / "log.db") in str(e.value)


def test_a_damaged_page_header_is_one_line_at_the_command_line(data_dir: Path) -> None:
    path = data_dir / "registry.db"
    raw = bytearray(path.read_bytes())
    page = int.from_bytes(raw[16:18], "big") or 65536
    raw[page:page + 12] = b"\xff" * 12  # page 2's b-tree header
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptDataError, match=r"registry\.db is damaged") as e:
        _starts(data_dir)
    assert "move registry.db aside" in str(e.value)
    out = subprocess.run([sys.executable, "-m", "fog_node", "run", "--data-dir", str(data_dir),
                          "--mqtt-security", "lab", "--http-port", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "registry.db is damaged" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_a_registry_moved_aside_is_rebuilt_from_the_log(data_dir: Path) -> None:
    (data_dir / "registry.db").rename(data_dir / "registry.db.damaged")
    for wal in data_dir.glob("registry.db-*"):
        wal.unlink()
    node = FogNode(_cfg(data_dir), ManualClock(NOW))
    try:
        dev = node.registry.device(METER.id)
        assert dev is not None and dev.last_seq == 10
        assert node.ingest.ack_for(METER.id, T0) is not None
    finally:
        node.close()
