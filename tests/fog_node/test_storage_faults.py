"""A full disk stops acks, not the fog (issue 13): one log line with the reason, /healthz 503,
a counter; when space returns the node recovers by itself and nothing is logged twice.

The disk fills for real as far as SQLite can tell: `PRAGMA max_page_count` set to a
database's current size makes every write that needs a page fail with SQLITE_FULL ("database
or disk is full"), exactly the error a full filesystem gives; raising it is space returning.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from fog_node.api import FogAPI
from fog_node.config import FogConfig
from fog_node.metrics import render
from fog_node.node import FogNode, init_data_dir
from fog_node.service import FogService
from fog_node.storage import fault_kind
from meterledger import wire as P
from meterledger.infra.clock import ManualClock
from meterledger.infra.metrics import parse_metrics
from tests.kit.fogkit import logged_readings

T0 = 1_800_000_000
METER = P.SigningKey.from_int(0x5EED)


def readings(n: int) -> list[bytes]:
    out, prev = [], bytes(32)
    for seq in range(1, n + 1):
        raw = P.sign1(METER, P.reading(METER.id, seq, T0 + 900 * seq, 900, 10 * seq, 0, 0, prev))
        out.append(raw)
        prev = P.digest(raw)
    return out


def fill(db: sqlite3.Connection) -> None:
    """No room for one more page in this database (rows still fit where pages have space:
    the tests send enough at once that new pages are needed, as on a full disk)."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    assert free == 0
    db.execute(f"PRAGMA max_page_count = {pages}")


def make_room(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA max_page_count = 1073741823")


@pytest.fixture
def fog(tmp_path: Path) -> Any:
    init_data_dir(tmp_path / "fog")
    clock = ManualClock(T0 + 900 * 400)
    # a whole delivery in one group (inbox_share): the disk must fill inside it
    node = FogNode(FogConfig(data_dir=tmp_path / "fog", mqtt_security="lab",
                             inbox_share=1000), clock)
    svc = FogService(node, clock)
    sent: list[tuple[str, bytes, int, bool]] = []
    svc.link.publish = sent.extend  # type: ignore[method-assign,assignment]  # the broker's side
    with node.lock:
        node.ingest.decide(METER.public_key.raw, "active", "test")
    yield node, svc, sent, clock
    node.close()


def acked_seqs(sent: list[tuple[str, bytes, int, bool]]) -> list[int]:
    return [P.parse(payload).fields[2] for topic, payload, _, _ in sent if "/ack/" in topic]


def deliver(svc: FogService, msgs: list[bytes]) -> bool:
    topic = f"grid/d/{METER.id.hex()}/reading"
    for m in msgs:
        svc.inbox.put((topic, m))
    return svc.guarded_step()


@pytest.mark.parametrize("full", ["registry", "log"])
def test_a_full_disk_is_one_alert_and_recovery_duplicates_nothing(fog: Any, full: str,
                                                                  caplog: Any) -> None:
    node, svc, sent, clock = fog
    msgs = readings(300)
    assert deliver(svc, msgs[:2])
    assert acked_seqs(sent) == [2]
    # the disk fills: for the registry, after the log's commit (the index falls behind)
    db = node.registry.db if full == "registry" else node.log._conn()
    fill(db)
    caplog.set_level(logging.WARNING, logger="fog_node")
    for _ in range(3):  # the meter sends again and again while the disk is full
        assert deliver(svc, msgs[2:200]) is False
    assert acked_seqs(sent) == [2], "acked what was not stored"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "storage fault (disk_full)" in errors[0].getMessage()
    assert not any(r.exc_info for r in caplog.records), "a traceback for a full disk"
    fault = node.storage.fault
    assert fault is not None and fault.kind == "disk_full"
    # /healthz says so, /metrics counts it
    api = FogAPI(node, clock)
    health = api.http.call("GET", "/healthz")
    assert health.status == 503 and json.loads(health.body)["storage"]["fault"] == "disk_full"
    m = parse_metrics(render(node, clock()))
    assert m['meterledger_fog_step_failures_total{kind="disk_full"}'] == 3
    assert m["meterledger_fog_storage_ok"] == 0
    # space returns: the next delivery repairs the index first, then acks; no operator
    make_room(db)
    assert deliver(svc, msgs[2:])
    assert acked_seqs(sent) == [2, 300]
    assert node.storage.fault is None
    assert api.http.call("GET", "/healthz").status == 200
    counts = logged_readings(node.log)
    assert sorted(counts) == [(METER.id, s) for s in range(1, 301)]
    assert set(counts.values()) == {1}, "a reading was logged twice"
    kinds = [kind for _, kind, _, _ in node.registry.alerts()]
    assert kinds.count("storage_disk_full") == 1
    cleared = [r for r in caplog.records if "cleared" in r.getMessage()]
    assert len(cleared) == 1


def test_a_restart_during_the_fault_re_indexes_the_log(fog: Any, tmp_path: Path) -> None:
    node, svc, _sent, clock = fog
    msgs = readings(200)
    fill(node.registry.db)
    assert deliver(svc, msgs) is False  # logged, not indexed, not acked
    logged = node.log.size()
    node.close()
    node2 = FogNode(FogConfig(data_dir=tmp_path / "fog", mqtt_security="lab",
                              inbox_share=1000), clock)
    try:
        assert node2.log.size() == logged
        svc2 = FogService(node2, clock)
        sent2: list[tuple[str, bytes, int, bool]] = []
        svc2.link.publish = sent2.extend  # type: ignore[method-assign,assignment]
        assert deliver(svc2, msgs)
        assert acked_seqs(sent2) == [200]
        assert set(logged_readings(node2.log).values()) == {1}
    finally:
        node2.close()
    node.log = node2.log  # closed twice is harmless; keeps the fixture's close() simple


@pytest.mark.parametrize("exc,kind", [
    (sqlite3.OperationalError("database or disk is full"), "disk_full"),
    (sqlite3.OperationalError("disk I/O error"), "io_error"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "read_only"),
    (sqlite3.DatabaseError("database disk image is malformed"), "corrupt"),
    (OSError(28, "No space left on device"), "disk_full"),
    (ValueError("a bug"), None),
])
def test_fault_kinds(exc: BaseException, kind: str | None) -> None:
    assert fault_kind(exc) == kind
    try:  # through the cause chain, as the stores raise them
        raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert fault_kind(wrapped) == kind


def test_one_noisy_topic_cannot_starve_the_others(fog: Any) -> None:
    # issue 13: a flood on one topic is taken inbox_share at a time, round-robin; another
    # meter's reading goes into the very next group, and the flood's excess beyond its
    # backlog is dropped unacked (its meter sends again) and counted
    node, svc, sent, _clock = fog
    svc.config.inbox_share = 64
    other = P.SigningKey.from_int(0x07E4)
    with node.lock:
        node.ingest.decide(other.public_key.raw, "active", "test")
    noisy = f"grid/d/{METER.id.hex()}/reading"
    flood = [P.sign1(METER, P.reading(METER.id, 1, T0 + 900, 900, 1, 0, 0, bytes(32)))] * 3000
    for m in flood:
        svc.inbox.put((noisy, m))
    good = P.sign1(other, P.reading(other.id, 1, T0 + 900, 900, 1, 0, 0, bytes(32)))
    svc.inbox.put((f"grid/d/{other.id.hex()}/reading", good))
    assert svc.guarded_step()
    acked = {P.parse(payload).fields[1] for topic, payload, _, _ in sent if "/ack/" in topic}
    assert other.id in acked, "the quiet meter waited behind the flood"
    assert node.ingest.counters["inbox_dropped"] == 3000 - svc.config.inbox_backlog
    assert svc._waiting_n == svc.config.inbox_backlog - svc.config.inbox_share
