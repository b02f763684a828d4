"""The fog API's reads (fog_node.reads) and the registry's decisions by (meter, log index):
every lookup is keyed, nothing scans the log, reads never take the ingest lock and see a
consistent snapshot while the node writes; real SQLite files, real servers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from fog_node import reads
from fog_node.api import FogAPI
from fog_node.config import FogConfig
from fog_node.log.store import SQLiteLogStore
from fog_node.node import FogNode
from meterledger import wire as P
from tests import merkle_reference as R
from tests.fog_node.test_api import METER, STRANGER, T0, Clock, chain, make_node, reading


def auditor(node: FogNode) -> str:
    return (node.config.data_dir / "auditor.token").read_text().strip()


def get(api: FogAPI, target: str) -> tuple[int, Any]:
    status, _, body = api.handle(target, auditor(api.node))
    return status, json.loads(body)


@pytest.fixture
def fog(tmp_path: Path) -> Any:
    """Enrolled at 0, readings 1..3, revoked at 4, readings refused, enrolled again at 5,
    readings 6..7; sealed at size 8."""
    clock = Clock()
    node = make_node(tmp_path / "fog", clock)
    ing = node.ingest
    ing.decide(METER.public_key.raw, "active", "first")
    msgs = chain(METER, 5)
    ing.process(msgs[:3])
    ing.decide(METER.public_key.raw, "revoked", "lost")
    ing.decide(METER.public_key.raw, "active", "found")
    ing.process(msgs[3:])
    assert node.log.size() == 8
    assert node.checkpoints.seal(int(clock())) is not None
    api = FogAPI(node)
    yield node, api
    api.stop()
    node.close()


def test_the_enrollment_proof_is_the_decision_in_force_below_before(fog: Any) -> None:
    node, api = fog
    cp_root = node.checkpoints.latest().root
    for before, idx in [(1, 0), (4, 0), (5, 4), (6, 5), (8, 5), (None, 5), (99, 5)]:
        q = f"/v1/proof/enrollment?dev={METER.id.hex()}&size=8" + (
            f"&before={before}" if before is not None else "")
        status, doc = get(api, q)
        assert (status, doc["leaf_index"]) == (200, idx), before
        entry = bytes.fromhex(doc["entry"])
        assert entry == node.log.entry(idx) and P.parse(entry).type == P.ENROLLMENT
        path = [bytes.fromhex(h) for h in doc["path"]]
        assert R.verify_inclusion(R.leaf(entry), idx, 8, path, cp_root)
    status, doc = get(api, f"/v1/proof/enrollment?dev={METER.id.hex()}&size=8&before=0")
    assert (status, doc["error"]) == (404, f"meter {METER.id.hex()} has no enrollment "
                                           "decision in the first 0 entries")


def test_an_unknown_meter_costs_one_keyed_lookup_and_no_read_of_the_log(
        fog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    node, api = fog
    statements: list[tuple[str, str]] = []
    opened = reads._reader

    def traced(path: Path) -> sqlite3.Connection:
        db = opened(path)
        db.set_trace_callback(lambda sql: statements.append((path.name, sql)))
        return db

    entry_calls = []
    monkeypatch.setattr(reads, "_reader", traced)
    monkeypatch.setattr(SQLiteLogStore, "entry",
                        lambda self, i: entry_calls.append(i) or b"")  # type: ignore[func-returns-value]
    status, doc = get(api, f"/v1/proof/enrollment?dev={STRANGER.id.hex()}&size=8")
    assert (status, doc["error"]) == (404, f"meter {STRANGER.id.hex()} has no enrollment "
                                           "decision in the first 8 entries")
    assert entry_calls == []  # the node's log store: untouched
    on_log = [sql for name, sql in statements if name == "log.db"]
    assert on_log == ["BEGIN", "SELECT MAX(idx) FROM entries", "COMMIT"]  # the size only
    lookups = [sql for name, sql in statements if name == "registry.db" and "decisions" in sql]
    assert lookups == ["SELECT MAX(idx) FROM decisions WHERE dev = "
                       f"x'{STRANGER.id.hex()}' AND idx < 8"]
    # and that lookup is a search in the (dev, idx) key, never a scan
    plan = node.registry.db.execute("EXPLAIN QUERY PLAN " + lookups[0]).fetchall()
    detail = " ".join(row[-1] for row in plan)
    assert "SEARCH decisions USING PRIMARY KEY (dev=? AND idx<?)" in detail
    assert "SCAN" not in detail


def test_an_old_registry_learns_its_decisions_from_the_log_once(tmp_path: Path) -> None:
    clock = Clock()
    node = make_node(tmp_path / "fog", clock)
    node.ingest.decide(METER.public_key.raw, "active", "first")
    node.ingest.process(chain(METER, 2))
    node.ingest.decide(METER.public_key.raw, "revoked", "lost")
    node.close()
    db = sqlite3.connect(tmp_path / "fog" / "registry.db")  # as a registry made before it
    db.execute("DROP TABLE decisions")
    db.commit()
    db.close()
    node = FogNode(FogConfig(data_dir=tmp_path / "fog"), clock)  # backfills from the log
    try:
        assert [node.registry.decision_before(METER.id, b) for b in (1, 3, 4, 9)] == [
            0, 0, 3, 3]
        assert node.registry.db.execute(
            "SELECT COUNT(*) FROM meta WHERE k = 'decisions_from'").fetchone()[0] == 0
        assert node.registry.backfill_decisions(node.log.size(), node.log.entry) == 0  # done
    finally:
        node.close()


def test_recovery_rebuilds_the_decisions_the_registry_missed(tmp_path: Path) -> None:
    clock = Clock()
    node = make_node(tmp_path / "fog", clock)
    node.ingest.decide(METER.public_key.raw, "active", "first")
    # a crash between the log's commit and the registry's: the decision is only in the log
    decision = P.sign1(node.key, P.enrollment(STRANGER.id, STRANGER.public_key.raw, "active",
                                              "late", T0, node.key.id))
    node.log.append_batch([decision])
    assert node.registry.decision_before(STRANGER.id, 9) is None
    node.close()
    node = FogNode(FogConfig(data_dir=tmp_path / "fog"), clock)
    try:
        assert node.registry.decision_before(STRANGER.id, 9) == 1
    finally:
        node.close()


def test_reads_see_a_consistent_log_while_the_node_writes(fog: Any) -> None:
    node, api = fog
    clock: Clock = node.clock
    stop = threading.Event()
    prev = [P.digest(chain(METER, 5)[-1])]

    def ingest() -> None:  # the ingest thread: write and seal, under its lock
        seq = 6
        while not stop.is_set() and seq < 80:  # readings up to the clock's day
            m = reading(METER, seq, prev[0], T0 + 900 * (seq - 1))
            prev[0] = P.digest(m)
            with node.lock:
                node.ingest.process([m])
                clock.t += 1
                node.checkpoints.seal(int(clock()))
            seq += 1

    writer = threading.Thread(target=ingest)
    writer.start()
    checked = 0
    try:
        while writer.is_alive():
            status, cp = get(api, "/v1/checkpoint")
            assert status == 200 and cp["size"] >= 8
            status, doc = get(api, f"/v1/proof/inclusion?dev={METER.id.hex()}&seq=2")
            assert status == 200, doc
            signed = P.parse(bytes.fromhex(doc["checkpoint"])).fields
            path = [bytes.fromhex(h) for h in doc["path"]]
            assert (doc["tree_size"], doc["leaf_index"]) == (signed[3], 2)
            assert R.verify_inclusion(R.leaf(bytes.fromhex(doc["entry"])), 2, signed[3],
                                      path, signed[4])
            status, health = get(api, "/healthz")
            assert health["log_size"] >= health["checkpoint_height"] and status == 200
            checked += 1
    finally:
        stop.set()
        writer.join(60)
    assert checked > 0 and node.log.size() == 8 + 74
