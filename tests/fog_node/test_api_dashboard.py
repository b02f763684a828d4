"""The dashboard's read endpoints of the fog API (fog_node/dashboard.py): a real node on SQLite
files in tmp_path, cooked by its own Cooker, served on a free loopback port, read with the
FogClient the dashboard uses (and urllib where the status itself is the point).

The world: six meters (tests/fog_node/test_cooking.py's), one of whose readings stays in
transit (estimated), an outage and a tamper interval (faults, VEE findings), rejected
messages (a broken signature, a reading from the future, bytes that are no message),
births (a firmware version and a backlog; a stranger's, pending). The bundle and
checkpoint tests add a real dispatch chain (tests/kit/chainkit.py) and the node's chain link.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fog_node import dashboard_queries, reads
from fog_node import rejections as RJ
from fog_node.api import FogAPI
from fog_node.chainlink.link import ChainLink
from fog_node.config import FogConfig
from fog_node.cooking.feeders import Feeder
from fog_node.node import FogNode
from fog_node.transport.rs485.link import MemoryLink
from fog_node.transport.rs485.master import BusMaster
from meterledger import wire as P
from meterledger.clients.chain import ChainClient, ChainClientError
from meterledger.clients.fog import FogClient
from meterledger.wire import modbus as mb
from tests.fog_node.test_api import fetch
from tests.fog_node.test_cooking import IVL, T0, Fog
from tests.kit.chainkit import running_chain
from tests.kit.fogkit import wait
from tools import audit

STRANGER = P.SigningKey.from_int(0x5757)


def birth(key: P.SigningKey, fog: bytes, last_seq: int, fw: str = "1.2.3") -> bytes:
    return P.sign1(key, {0: P.BIRTH, 1: key.id, 10: key.public_key.raw, 11: fw, 12: 7,
                         13: last_seq, 14: "esp32", 15: "sim", 4: IVL, 16: fog})


@dataclass
class World:
    fog: Fog
    api: FogAPI
    url: str
    late: bytes  # meter 0's seq 2, held back: its intervals are estimated
    future: bytes  # rejected: from the future
    forged: bytes  # rejected: a broken signature

    @property
    def node(self) -> FogNode:
        return self.fog.node

    def token(self, name: str = "auditor") -> str:
        return (self.node.config.data_dir / f"{name}.token").read_text().strip()

    def client(self, token: str | None = "") -> FogClient:
        return FogClient(self.url, token=self.token() if token == "" else token)

    def status(self, path: str, token: str | None = "") -> tuple[int, Any]:
        status, _, body = fetch(self.url + path, token=self.token() if token == "" else token)
        return status, json.loads(body)

    def error(self, path: str, status: int) -> str:
        got, body = self.status(path)
        assert got == status and list(body) == ["error"], (path, got, body)
        text: str = body["error"]
        return text


def build(tmp_path: Path, **config: Any) -> tuple[Fog, bytes, bytes, bytes]:
    """The world's node and what happened to it (module doc)."""
    fog = Fog(tmp_path, 6, **config)
    node, m = fog.node, fog.meters
    fog.all_read(T0)
    late = m[0].reading(T0 + IVL, 400)  # seq 2 stays in transit
    fog.all_read(T0 + IVL, skip=(0,))
    fog.close(T0 + IVL)
    node.checkpoints.seal(fog.now)
    fog.all_read(T0 + 2 * IVL)  # meter 0's seq 3: seq 1..3 estimated, ivl 1 revised
    fog.tick()
    fog.close(T0 + 2 * IVL)
    fog.send(*[x.reading(T0 + 3 * IVL, 10, flags=P.POWER_FAIL) for x in m[:4]])
    fog.send(m[4].reading(T0 + 3 * IVL, flags=P.TAMPER), m[5].reading(T0 + 3 * IVL))
    fog.close(T0 + 3 * IVL)  # outage (4 of 6 lost supply) and tamper
    fog.all_read(T0 + 4 * IVL)
    fog.close(T0 + 4 * IVL)  # both end; meter 4's tampered interval is estimated
    fog.tick()  # and the interval revised with it
    node.checkpoints.seal(fog.now, ivl=T0 + 4 * IVL)
    # births: meter 1 connects with 3 readings its spool holds that the fog has not logged
    outcomes, _ = node.ingest.process([birth(m[1].key, node.key.id, m[1].seq + 3),
                                       birth(STRANGER, node.key.id, 12, "0.9.0")])
    assert sorted(o.status for o in outcomes) == ["logged", "quarantined"]
    future = P.sign1(m[5].key, P.reading(m[5].dev, m[5].seq + 1, T0 + 10**8 // IVL * IVL, IVL,
                                         m[5].imp, 0, 0, m[5].prev))
    good = m[5].reading(T0 + 5 * IVL)
    forged = good[:-1] + bytes([good[-1] ^ 1])
    outcomes, _ = node.ingest.process([future, forged, b"\x00no message"])
    assert [o.reason for o in outcomes] == ["future_t", "bad_signature", "trailing_bytes"]
    return fog, late, future, forged


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    fog, late, future, forged = build(tmp_path)
    api = FogAPI(fog.node, lambda: fog.now)
    port = api.start()
    try:
        yield World(fog, api, f"http://127.0.0.1:{port}", late, future, forged)
    finally:
        api.stop()
        fog.node.close()


NEW = ("/v1/meters", "/v1/rejections", "/v1/feeders", "/v1/alerts", "/v1/vee",
       "/v1/curve", "/v1/checkpoints", "/v1/bus", "/v1/bundle")
PUBLIC = ("/v1/feeders", "/v1/checkpoints")


# -- tiers, the OpenAPI document ----------------------------------------------------------------
def test_each_endpoint_answers_its_tier_and_is_documented(world: World) -> None:
    for path in NEW:
        status, body = world.status(path, token=None)
        if path in PUBLIC:
            assert status == 200, (path, body)
        else:
            assert status == 401, path
            assert world.status(path, token="w" * 64)[0] == 401, path
            assert world.status(path, token=world.token())[0] != 401, path
            assert world.status(path, token=world.token("operator"))[0] != 401, path
    ops = world.status("/openapi.json")[1]["paths"]
    for path in NEW:
        op = ops[path]["get"]
        assert op["x-tier"] == ("public" if path in PUBLIC else "auditor")
        assert op["summary"] and not op["summary"].startswith("/"), path
        assert all(p["description"] for p in op.get("parameters", [])), path
    assert {p["name"] for p in ops["/v1/feeders"]["get"]["parameters"]} == {
        "feeder", "after", "limit"}


@pytest.mark.parametrize("path, said", [
    ("/v1/meters?limit=0", "limit must be a decimal integer from 1 to 5000, not '0'"),
    ("/v1/meters?limit=5001", "limit must be a decimal integer from 1 to 5000"),
    ("/v1/meters?after=xyz", "after must be 16 hex characters"),
    ("/v1/meters?state=gone", "state must be active, revoked or pending, not 'gone'"),
    ("/v1/rejections?intervals=2881", "intervals must be a decimal integer from 1 to 2880"),
    ("/v1/rejections?intervals=-1", "intervals must be a decimal integer"),
    ("/v1/feeders?limit=2881", "limit must be a decimal integer from 1 to 2880, not '2881'"),
    ("/v1/feeders?limit=", "limit must be a decimal integer from 1 to 2880, not ''"),
    ("/v1/feeders?after=1e9", "after must be a decimal integer from 0 to"),
    ("/v1/feeders?after=99999999999999999999", "after must be a decimal integer from 0 to"),
    ("/v1/feeders?since=1", "unknown parameter 'since': this endpoint takes feeder, after, "
                            "limit"),
    ("/v1/feeders?feeder=", "feeder must be a feeder's name, 1 to 64 characters, not ''"),
    ("/v1/alerts?limit=1001", "limit must be a decimal integer from 1 to 1000"),
    ("/v1/alerts?before=x", "before must be a decimal integer"),
    ("/v1/vee?dev=12", "dev must be 16 hex characters"),
    ("/v1/vee?estimates_before=-3", "estimates_before must be a decimal integer"),
    ("/v1/curve", "missing parameter dev"),
    ("/v1/curve?dev=00&limit=5", "dev must be 16 hex characters"),
    ("/v1/curve?dev=0000000000000000&limit=0", "limit must be a decimal integer from 1"),
    ("/v1/checkpoints?limit=1001", "limit must be a decimal integer from 1 to 1000"),
    ("/v1/bundle?dev=0000000000000000", "missing parameter seq"),
    ("/v1/bundle?dev=0000000000000000&seq=0", "seq must be a decimal integer from 1 to"),
    ("/v1/bus?x=1", "unknown parameter 'x': this endpoint takes no parameters"),
])
def test_bad_query_values_are_a_400_saying_what_was_wrong(world: World, path: str,
                                                          said: str) -> None:
    assert world.error(path, 400).startswith(said)


# -- meters -------------------------------------------------------------------------------------
def test_meters_show_state_last_seen_birth_and_rejections_with_totals(world: World) -> None:
    m = world.fog.meters
    doc = world.client().meters()
    by = {x["dev"]: x for x in doc["meters"]}
    assert [x["dev"] for x in doc["meters"]] == sorted(by)
    assert doc["totals"] == {"active": 6, "revoked": 0, "pending": 1, "all": 7}
    assert doc["next_after"] is None and doc["quarantined"] == 0
    one = by[m[1].dev.hex()]
    assert (one["state"], one["last_seq"], one["last_t"], one["gaps"]) == (
        "active", 5, T0 + 4 * IVL, 0)
    assert one["birth"] == {"received": world.fog.now, "fw": "1.2.3", "boot": 7,
                            "last_seq": 8, "backlog": 3, "hw": "esp32", "src": "sim",
                            "dur": IVL}
    assert one["last_seen"] == max(one["last_t"], world.fog.now)
    assert one["rejected"] == 0 and by[m[5].dev.hex()]["rejected"] == 2
    zero = by[m[0].dev.hex()]
    assert zero["birth"] is None and zero["last_seen"] == zero["last_t"] == T0 + 4 * IVL
    assert zero["gaps"] == 1  # seq 2 never arrived
    stranger = by[STRANGER.id.hex()]
    assert stranger["state"] == "pending" and stranger["pub"] == STRANGER.public_key.raw.hex()
    assert stranger["birth"]["fw"] == "0.9.0" and stranger["birth"]["backlog"] == 12
    assert stranger["since"] is None and stranger["last_seen"] == world.fog.now
    # every field of /v1/devices is there too, with the same value (its status: state)
    for d in world.client().devices():
        assert {k: by[d["dev"]]["state" if k == "status" else k] for k in d} == d


def test_meters_page_in_id_order_and_filter_by_state(world: World) -> None:
    c = world.client()
    every = [x["dev"] for x in c.meters()["meters"]]
    seen, after = [], None
    while True:
        page = c.meters(after=after, limit=3)
        assert len(page["meters"]) <= 3
        seen += [x["dev"] for x in page["meters"]]
        if page["next_after"] is None:
            break
        after = bytes.fromhex(page["next_after"])
    assert seen == every
    assert [x["dev"] for x in c.meters(state="pending")["meters"]] == [STRANGER.id.hex()]
    active = c.meters(state="active")
    assert len(active["meters"]) == 6 and {x["state"] for x in active["meters"]} == {"active"}
    assert active["totals"]["all"] == 7  # totals are over every meter
    assert c.meters(state="revoked")["meters"] == []


def test_births_and_rejections_outlive_a_restart(world: World) -> None:
    world.api.stop()
    world.node.close()
    node = FogNode(FogConfig(data_dir=world.node.config.data_dir, skew_s=10**7),
                   lambda: world.fog.now)
    api = FogAPI(node, lambda: world.fog.now)
    c = FogClient(f"http://127.0.0.1:{api.start()}", token=world.token())
    try:
        by = {x["dev"]: x for x in c.meters()["meters"]}
        assert by[world.fog.meters[1].dev.hex()]["birth"]["fw"] == "1.2.3"
        assert by[world.fog.meters[5].dev.hex()]["rejected"] == 2
        assert STRANGER.id.hex() not in by  # pending meters are the running node's, as ever
        assert c.rejections()["total"] == 3
    finally:
        api.stop()
        world.fog.node = node  # the fixture closes this one


# -- rejections ---------------------------------------------------------------------------------
def test_rejections_by_reason_with_the_last_example_and_a_series(world: World) -> None:
    doc = world.client().rejections()
    assert doc["total"] == 3 and doc["since"] == world.fog.now
    by = {r["reason"]: r for r in doc["reasons"]}
    assert set(by) == {"future_t", "bad_signature", "trailing_bytes"}
    forged = by["bad_signature"]
    assert forged["count"] == 1 and forged["hint"] == RJ.hint("bad_signature")
    assert forged["last"] == {"t": world.fog.now, "dev": world.fog.meters[5].dev.hex(),
                              "detail": "ECDSA signature does not verify",
                              "raw": world.forged.hex()}
    assert by["future_t"]["last"]["raw"] == world.future.hex()
    assert by["trailing_bytes"]["last"]["dev"] is None
    assert by["trailing_bytes"]["last"]["raw"] == b"\x00no message".hex()
    series = doc["series"]
    assert series["interval_s"] == RJ.INTERVAL_S and len(series["counts"]) == 96
    assert series["counts"][-1] == 3 and sum(series["counts"]) == 3
    assert series["start"] == (world.fog.now // 900 - 95) * 900
    assert doc["dropped"] == {"meters": 0, "reasons": 0, "intervals": 0}
    assert len(world.client().rejections(intervals=1)["series"]["counts"]) == 1


def test_the_rejection_record_is_bounded_oldest_dropped_first_and_counted(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RJ, "METERS_KEPT", 3)
    monkeypatch.setattr(RJ, "INTERVALS_KEPT", 2)
    ingest, fog = world.node.ingest, world.fog
    keys = [P.SigningKey.from_int(0x9000 + i) for i in range(5)]
    for i, k in enumerate(keys):  # a stranger's reading on another meter's topic each
        fog.now += RJ.INTERVAL_S
        raw = P.sign1(k, P.reading(k.id, 1, T0, IVL, 1, 0, 0, P.ZERO32))
        outcomes, _ = ingest.process([raw], [fog.meters[0].dev])
        assert outcomes[0].reason == "topic_mismatch", i
    ingest.record.flush()  # written about once a second: now
    doc = world.client().rejections(intervals=4)
    assert doc["dropped"] == {"meters": 3, "reasons": 0, "intervals": 4}
    assert doc["series"]["counts"] == [0, 0, 1, 1]  # the last two bins kept
    kept = {x["dev"]: x["rejected"] for x in world.client().meters()["meters"]}
    assert kept[fog.meters[5].dev.hex()] == 0  # the stalest meters were dropped first
    assert [kept.get(k.id.hex()) for k in keys] == [None, None, None, None, None]
    db = world.node.registry.db
    assert [r[0] for r in db.execute("SELECT dev FROM rejection_meters ORDER BY last_t")] == [
        k.id for k in keys[2:]]


def test_rejections_are_counted_in_memory_and_written_at_most_once_a_second(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    ingest, record = world.node.ingest, world.node.ingest.record
    now = [1000.0]
    monkeypatch.setattr(record, "monotonic", lambda: now[0])
    record.flush()
    # a write just happened (the flush is a no-op when nothing is pending, and the real
    # monotonic clock of the last one may be anywhere: below 1000 s on a fresh machine)
    record._due = now[0] + record.every_s
    commits = []
    real = record._write

    def counted() -> None:
        commits.append(1)
        real()

    monkeypatch.setattr(record, "_write", counted)
    junk = [b"\x00junk %d" % i for i in range(3)]
    for raw in junk:  # three groups within the second: no write
        assert ingest.process([raw])[0][0].reason == "trailing_bytes"
    assert commits == [] and world.client().rejections()["total"] == 3
    record._due = 0.0  # a second later, the clockwork's tick writes them, in one transaction
    record.tick()
    assert commits == [1] and world.client().rejections()["total"] == 6

    # a write that fails never fails the group: counted, logged once, written later
    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(record, "_write", broken)
    record._due = 0.0
    outcomes, _ = ingest.process([junk[0]])
    assert outcomes[0].reason == "trailing_bytes" and record.errors == 1 and record.pending
    monkeypatch.setattr(record, "_write", real)
    record.flush()  # as the next due write (or the node's close) does
    assert not record.pending and world.client().rejections()["total"] == 7


# -- feeders ------------------------------------------------------------------------------------
def test_feeders_give_each_intervals_latest_aggregate_publicly(world: World) -> None:
    doc = FogClient(world.url).feeders()  # no token: public
    [feeder] = doc["feeders"]
    assert feeder["feeder"] == "all" and doc["next_after"] is None
    pts = feeder["points"]
    assert [p["ivl"] for p in pts] == [T0 + i * IVL for i in (1, 2, 3, 4)]
    first = pts[0]  # revised once meter 0's seq 3 came: its estimate is in it
    assert (first["rev"], first["imp"], first["measured"], first["estimated"]) == (1, 750, 5, 1)
    assert first["includes_estimates"] and first["estimated_wh"] == 250
    assert first["start"] == T0 and first["loss"] is None
    assert first["alerts"] == ["silent"]  # no reading of meter 0 in it
    # meter 4's tampered reading is not usable: its interval and the next are estimated
    assert [(p["rev"], p["imp"], p["includes_estimates"]) for p in pts[1:]] == [
        (0, 750, True), (1, 240, True), (0, 600, True)]
    assert pts[2]["alerts"] == ["outage", "tamper"]
    # paging: the newest `limit`, then forward from `after`
    assert [p["ivl"] for p in world.client().feeders(limit=2)["feeders"][0]["points"]] == [
        T0 + 3 * IVL, T0 + 4 * IVL]
    page = world.client().feeders(after=T0, limit=3)
    assert [p["ivl"] for p in page["feeders"][0]["points"]] == [T0 + IVL * i for i in (1, 2, 3)]
    assert page["next_after"] == T0 + 3 * IVL
    rest = world.client().feeders(after=page["next_after"], limit=3)
    assert [p["ivl"] for p in rest["feeders"][0]["points"]] == [T0 + 4 * IVL]
    assert rest["next_after"] is None
    assert world.client().feeders(after=T0 + 4 * IVL)["feeders"] == []
    one = world.client().feeders(feeder="all", after=T0, limit=2)
    assert [p["ivl"] for p in one["feeders"][0]["points"]] == [T0 + IVL, T0 + 2 * IVL]
    assert world.client().feeders(feeder="nobody")["feeders"] == []


def test_a_feeder_with_a_head_meter_has_its_loss_curve(tmp_path: Path) -> None:
    fog = Fog(tmp_path, 4, privacy_min_meters=3)
    head, *members = fog.meters
    cfg = fog.node.cooker.config
    fog.node.cooker.config = type(cfg)(IVL, (Feeder("north", tuple(m.dev for m in members),
                                                    head.dev),), cfg.rules)
    fog.all_read(T0)
    for i, lost in ((1, 20), (2, 35)):
        fog.send(head.reading(T0 + i * IVL, 3 * 100 + lost),
                 *[m.reading(T0 + i * IVL, 100) for m in members])
        fog.close(T0 + i * IVL)
    pool = reads.Reads(fog.node.config.data_dir)
    try:
        with pool.snapshot() as s:
            [north] = dashboard_queries.feeders(s, None, None, 96)["feeders"]
        assert north["feeder"] == "north"
        assert [(p["imp"], p["loss"], p["meters"]) for p in north["points"]] == [
            (300, 20, 3), (300, 35, 3)]
    finally:
        pool.close()
        fog.node.close()


# -- alerts and VEE -------------------------------------------------------------------------------
def test_alerts_list_faults_with_their_span_and_the_registry_alerts(world: World) -> None:
    doc = world.client().alerts()
    faults = {f["kind"]: f for f in doc["faults"]}
    assert set(faults) == {"outage", "tamper"} and doc["open_faults"] == 0
    out = faults["outage"]
    assert (out["feeder"], out["start"], out["end"], out["open"]) == (
        "all", T0 + 2 * IVL, T0 + 3 * IVL, False)
    assert out["meters"] == 4 and out["detail"] == "4 of 6 meters lost supply or went silent"
    assert out["raised"] == T0 + 3 * IVL + 60 and out["ended"] == T0 + 4 * IVL + 60
    kinds = [a["kind"] for a in doc["alerts"]]
    assert "vee_flag_tamper" in kinds
    tamper = next(a for a in doc["alerts"] if a["kind"] == "vee_flag_tamper")
    assert tamper["dev"] == world.fog.meters[4].dev.hex() and tamper["detail"].startswith(
        "seq 4: TAMPER")
    ids = [a["id"] for a in doc["alerts"]]
    assert ids == sorted(ids, reverse=True)
    one = world.client().alerts(limit=1)
    assert len(one["alerts"]) == len(one["faults"]) == 1
    assert one["faults"][0]["id"] == max(f["id"] for f in doc["faults"])
    nxt = world.client().alerts(limit=1, faults_before=one["next_faults_before"])
    assert [f["id"] for f in nxt["faults"]] == [min(f["id"] for f in doc["faults"])]
    assert nxt["next_faults_before"] is None


def test_an_open_fault_has_no_end_yet(tmp_path: Path) -> None:
    fog = Fog(tmp_path, 6)
    fog.all_read(T0)
    fog.send(*[x.reading(T0 + IVL, 10, flags=P.POWER_FAIL) for x in fog.meters])
    fog.close(T0 + IVL)
    fog.send(*[x.reading(T0 + 2 * IVL, 10, flags=P.POWER_FAIL) for x in fog.meters])
    fog.close(T0 + 2 * IVL)
    try:
        pool = reads.Reads(fog.node.config.data_dir)
        with pool.snapshot() as s:
            doc = dashboard_queries.alerts(s, 10, None, None)
        pool.close()
        [f] = doc["faults"]
        assert (f["kind"], f["open"], f["end"], f["start"], f["last_ivl"]) == (
            "outage", True, None, T0, T0 + 2 * IVL)
        assert doc["open_faults"] == 1
    finally:
        fog.node.close()


def test_vee_lists_findings_and_estimates_newest_first(world: World) -> None:
    c, m = world.client(), world.fog.meters
    doc = c.vee()
    rules = {(f["dev"], f["rule"], f["severity"]) for f in doc["findings"]}
    assert (m[4].dev.hex(), "flag_tamper", "error") in rules
    assert (m[0].dev.hex(), "flag_power_fail", "warning") in rules
    ids = [f["id"] for f in doc["findings"]]
    assert ids == sorted(ids, reverse=True)
    tamper = next(f for f in doc["findings"] if f["rule"] == "flag_tamper")
    assert (tamper["seq"], tamper["t"]) == (4, T0 + 3 * IVL)
    assert world.node.log.entry(tamper["leaf"]) == m[4].msgs[4]
    [tampered, est] = doc["estimates"]  # newest first
    assert (tampered["dev"], tampered["from_seq"], tampered["to_seq"]) == (m[4].dev.hex(), 3, 5)
    assert [i["imp"] for i in tampered["intervals"]] == [100, 100]
    assert (est["dev"], est["from_seq"], est["to_seq"], est["method"]) == (
        m[0].dev.hex(), 1, 3, "linear")
    assert est["intervals"] == [{"ivl": T0 + IVL, "start": T0, "imp": 250, "exp": 0},
                                {"ivl": T0 + 2 * IVL, "start": T0 + IVL, "imp": 250, "exp": 0}]
    assert (est["imp"], est["exp"], est["superseded_by"]) == (500, 0, None)
    mine = c.vee(dev=m[0].dev)
    assert {f["dev"] for f in mine["findings"]} == {m[0].dev.hex()}
    assert mine["estimates"] == [est]
    page = c.vee(limit=1)
    assert [f["id"] for f in page["findings"]] == ids[:1] and page["next_before"] == ids[0]
    assert [f["id"] for f in c.vee(limit=1, before=page["next_before"])["findings"]] == ids[1:2]
    # the late reading retires the estimate
    world.fog.send(world.late)
    world.fog.tick()
    [retired] = c.vee(dev=m[0].dev)["estimates"]
    assert retired["superseded_by"] is not None and retired["superseded_by"] > retired["leaf"]


# -- one meter's curve -------------------------------------------------------------------------------
def test_a_meters_curve_marks_estimated_intervals(world: World) -> None:
    c, m = world.client(), world.fog.meters
    doc = c.curve(m[0].dev)
    assert doc["dev"] == m[0].dev.hex() and doc["next_after"] is None
    assert [(p["ivl"], p["imp"], p["estimated"], p["method"]) for p in doc["points"]] == [
        (T0 + IVL, 250, True, "linear"), (T0 + 2 * IVL, 250, True, "linear"),
        (T0 + 3 * IVL, 10, False, "measured"), (T0 + 4 * IVL, 100, False, "measured")]
    assert doc["points"][0]["start"] == T0
    assert [p["ivl"] for p in c.curve(m[0].dev, limit=1)["points"]] == [T0 + 4 * IVL]
    page = c.curve(m[0].dev, after=T0 + IVL, limit=2)
    assert [p["ivl"] for p in page["points"]] == [T0 + 2 * IVL, T0 + 3 * IVL]
    assert page["next_after"] == T0 + 3 * IVL
    assert [p["ivl"] for p in c.curve(m[0].dev, after=T0 + 3 * IVL)["points"]] == [
        T0 + 4 * IVL]
    world.fog.send(world.late)  # the true reading: measured, the estimate superseded
    world.fog.tick()
    assert [(p["imp"], p["estimated"]) for p in c.curve(m[0].dev)["points"]] == [
        (400, False), (100, False), (10, False), (100, False)]
    assert world.error(f"/v1/curve?dev={STRANGER.id.hex()}", 404) == (
        f"meter {STRANGER.id.hex()} is not enrolled in this fog")


# -- checkpoints and anchors, bundles -----------------------------------------------------------------
@pytest.fixture
def anchored(tmp_path: Path) -> Iterator[tuple[World, Any, ChainLink]]:
    """The world on a node whose checkpoints a real chain anchored (chain_url configured)."""
    with running_chain(tmp_path / "chain") as chain:
        fog, late, future, forged = build(tmp_path, chain_url=chain.url)
        node = fog.node
        chain.register("fog", key=node.key)
        link = ChainLink(node, ChainClient(chain.url), lambda: fog.now)
        node.chain = link
        api = FogAPI(node, lambda: fog.now)
        port = api.start()
        try:
            link.step()
            yield World(fog, api, f"http://127.0.0.1:{port}", late, future, forged), chain, link
        finally:
            api.stop()
            link.close()
            node.close()


def test_checkpoints_newest_first_with_their_anchors(anchored: Any) -> None:
    world, chain, link = anchored
    doc = FogClient(world.url).checkpoints()  # no token: public
    cps = doc["checkpoints"]
    latest = world.node.checkpoints.latest()
    assert latest is not None and doc["latest"] == latest.height == len(cps)
    assert [c["height"] for c in cps] == list(range(latest.height, 0, -1))
    assert doc["anchored_height"] == latest.height and doc["next_before"] is None
    [landed] = chain.ledger.anchors(world.node.key.id)
    for c in cps:
        cp = world.node.checkpoints.at_height(c["height"])
        assert cp is not None and (c["size"], c["root"], c["t"]) == (cp.size, cp.root.hex(), cp.t)
        a = c["anchor"]
        assert (a["digest"], a["state"], a["block_height"]) == (
            landed.digest.hex(), "landed", landed.height)
        assert a["first"] <= c["height"] <= a["last"] and a["landed"] == world.fog.now
    assert cps[0]["ivl"] == T0 + 4 * IVL and cps[-1]["ivl"] is None
    # a new checkpoint: no anchor yet; paging with before
    world.fog.now += 5
    world.node.checkpoints.seal(world.fog.now, force=True)
    doc = world.client().checkpoints(limit=1)
    assert [c["height"] for c in doc["checkpoints"]] == [latest.height + 1]
    assert doc["checkpoints"][0]["anchor"] is None and doc["next_before"] == latest.height + 1
    more = world.client().checkpoints(before=doc["next_before"], limit=1)
    assert [c["height"] for c in more["checkpoints"]] == [latest.height]
    link.plan(force=True)  # not due yet by the clock: forced
    link.flush()
    doc = world.client().checkpoints(limit=1)
    assert doc["checkpoints"][0]["anchor"]["state"] == "landed"


def test_checkpoints_of_a_node_that_does_not_anchor(world: World) -> None:
    doc = world.client().checkpoints()
    assert doc["anchored_height"] is None
    assert {c["anchor"] is None for c in doc["checkpoints"]} == {True}


def test_a_bundle_from_the_fog_is_the_audit_tools_and_verifies(anchored: Any,
                                                                tmp_path: Path) -> None:
    world, chain, _ = anchored
    dev = world.fog.meters[2].dev
    got = world.client().bundle(dev, 2)
    want = audit.build_bundle(world.client(), ChainClient(chain.url), dev, 2)
    assert got == want
    r = audit.verify_bundle(got, [chain.key.public_key])
    assert (r.dev, r.seq) == (dev.hex(), 2)
    f = tmp_path / "b.json"  # and as the CLI writes it
    assert audit.main(["bundle", "--fog", world.url, "--chain", chain.url, "--dev", dev.hex(),
                       "--seq", "2", "-o", str(f), "--token", world.token()]) == 0
    assert json.loads(f.read_text()) == got
    # the operator's token passes too; the reading must be logged and anchored
    assert world.client(world.token("operator")).bundle(dev, 2) == got
    said = world.error(f"/v1/bundle?dev={dev.hex()}&seq=99", 404)
    assert said == f"no reading 99 of meter {dev.hex()} is logged"
    world.fog.send(world.fog.meters[2].reading(T0 + 5 * IVL))
    world.node.checkpoints.seal(world.fog.now, force=True)
    said = world.error(f"/v1/bundle?dev={dev.hex()}&seq=6", 404)
    assert said.endswith("is not anchored yet: no anchor of this fog covers it")
    chain.api.stop()  # the chain away: 503
    said = world.error(f"/v1/bundle?dev={dev.hex()}&seq=2", 503)
    assert said.startswith("the dispatch chain does not answer: ")


def test_a_node_without_a_chain_builds_no_bundle(world: World) -> None:
    dev = world.fog.meters[2].dev
    assert world.error(f"/v1/bundle?dev={dev.hex()}&seq=2", 404) == (
        "this fog anchors to no dispatch chain (chain_url is empty): a reading's proof "
        "bundle needs its anchor")
    with pytest.raises(ChainClientError, match="anchors to no dispatch chain"):
        world.client().bundle(dev, 2)


# -- the RS485 bus ----------------------------------------------------------------------------------
class Responder:
    """A meter at one address of an in-memory line: its birth to 0x44, no readings to 0x41;
    the other addresses never answer."""

    def __init__(self, link: MemoryLink, address: int, birth: bytes) -> None:
        self.link, self.address, self.birth = link, address, birth
        self.framer = mb.RtuFramer(requests=True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            self.link.wait(0.01)
            # the requests it gets say where they end: no silence needed to frame them
            for f in self.framer.feed(self.link.read(), time.monotonic_ns() // 1000):
                if f.address != self.address:
                    continue
                data = self.birth if f.fc == mb.FC_GET_BIRTH else b""
                self.link.write(mb.adu(self.address, f.fc, data))


def test_the_bus_shows_its_counters_and_each_address(world: World) -> None:
    assert world.client().bus() is None  # no bus: {"bus": null}
    assert world.status("/v1/bus")[1] == {"bus": None}
    fog_end, meter_end = MemoryLink.pair()
    responder = Responder(meter_end, 3, birth(STRANGER, world.node.key.id, 2))
    bus = BusMaster(world.node, "memory://", [3, 4], clock=lambda: world.fog.now,
                    timeout_s=0.05, slow_timeout_s=0.5, link=lambda: fog_end)
    world.node.rs485 = bus
    try:
        bus.poll_once()
        doc = world.client().bus()
        assert doc is not None
        assert (doc["port"], doc["baud"]) == ("memory://", 19200)
        assert doc["counters"] == dict(bus.counters)
        assert doc["counters"]["births"] == 1 and doc["counters"]["timeouts"] == 2
        [three, four] = doc["addresses"]
        assert three == {"address": 3, "dev": STRANGER.id.hex(), "state": "answering",
                         "missed_visits": 0, "silent_s": None}
        assert (four["address"], four["dev"], four["state"], four["missed_visits"]) == (
            4, None, "silent", 1)  # one visit: its request and the retry timed out
        assert four["silent_s"] >= 0
    finally:
        responder.stop.set()
        responder.thread.join(5)
        bus.close()
        world.node.rs485 = None


# -- keyed reads ------------------------------------------------------------------------------------
SMALL = ("sqlite_master", "rejection_reasons", "open_faults", "devices", "quarantine")
# scans that read one end of an integer key: the newest checkpoint (Checkpoints.latest)
ENDS = ("FROM checkpoints ORDER BY height DESC LIMIT 1",)


def test_every_query_is_keyed_and_none_waits_for_the_ingest_lock(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each endpoint's statements, planned on the node's own files: searches in a key or an
    index, no scan but of the small tables (SMALL: at most the meters, 256 reasons, the
    quarantine's count), all while the ingest thread holds the node's lock."""
    statements: list[tuple[str, str]] = []
    opened = reads._reader

    def traced(path: Path) -> sqlite3.Connection:
        db = opened(path)
        db.set_trace_callback(lambda sql: statements.append((path.name, sql)))
        return db

    monkeypatch.setattr(reads, "_reader", traced)
    world.api.stop()
    world.api.start()
    url = f"http://127.0.0.1:{world.api.port}"
    c = FogClient(url, token=world.token())
    dev = world.fog.meters[0].dev
    with world.node.lock:  # nothing here may need it
        c.meters(), c.rejections(), c.feeders(), c.feeders(after=T0), c.alerts()
        c.feeders(feeder="all"), c.feeders(feeder="all", after=T0)
        c.vee(), c.vee(dev=dev), c.curve(dev), c.curve(dev, after=T0), c.checkpoints()
        c.bus()
    own = {"cooked.db": world.node.cooker.db, "registry.db": world.node.registry.db,
           "checkpoints.db": world.node.checkpoints.db}
    planned = 0
    for name, sql in statements:
        if not sql.startswith("SELECT") or name not in own:
            continue
        plan = " | ".join(r[-1] for r in own[name].execute("EXPLAIN QUERY PLAN " + sql))
        scans = [p for p in plan.split(" | ") if p.startswith("SCAN ")]
        assert all(p.split()[1] in SMALL or " USING " in p for p in scans) \
            or sql.endswith(ENDS), (sql, plan)
        planned += 1
    assert planned > 20


def test_the_meters_read_is_one_query_however_many_meters(tmp_path: Path) -> None:
    fog = Fog(tmp_path, 40)
    try:
        pool = reads.Reads(fog.node.config.data_dir)
        with pool.snapshot() as s:
            seen: list[str] = []
            s.registry.db.set_trace_callback(seen.append)
            doc = dashboard_queries.meters(s, {}, {}, None, 1000, None)
            s.registry.db.set_trace_callback(None)
        pool.close()
        assert len(doc["meters"]) == 40
        assert sum(1 for sql in seen if "FROM devices d LEFT JOIN births" in sql) == 1
        assert len(seen) <= 4  # the page, the totals, the quarantine's count
    finally:
        fog.node.close()


def test_an_outbox_from_before_the_landed_column_is_read(anchored: Any) -> None:
    world, _, link = anchored
    wait(lambda: link.depth() == 0, 10, what="the outbox to drain")
    db = sqlite3.connect(world.node.config.data_dir / "chain.db")
    db.execute("ALTER TABLE outbox DROP COLUMN landed")
    db.commit()
    db.close()
    doc = world.client().checkpoints()
    assert doc["checkpoints"][0]["anchor"]["landed"] is None
    assert doc["checkpoints"][0]["anchor"]["state"] == "landed"
