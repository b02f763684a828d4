"""Type-11 aggregates anchored on the dispatch chain, through a real running aggregator (SQLite,
HTTP on loopback): accepted and listed by GET /v1/aggregates, known across anchors, each
anchor_* refusal for aggregates, replayed by verify-chain and compared as derived state, and
the upgrade of a format-1 chain file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.__main__ import verify_chain
from aggregator.chain.service.node import open_ledger
from aggregator.chain.store import SQLiteBlockStore
from aggregator.chain.verify import VerifyError
from meterledger import wire as P
from meterledger.wire import chain as C
from tests.kit.chainkit import T0, Chain, FogSide, aggregate_fields, running_chain

IVL = T0 - T0 % 900  # an interval end


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    with running_chain(tmp_path) as c:
        yield c


@pytest.fixture
def fog(chain: Chain, tmp_path: Path) -> Iterator[FogSide]:
    fs = FogSide(tmp_path)
    chain.register("fog", fs.key, name="fog-1")
    fs.grow(2, IVL - 10)
    yield fs
    fs.close()


def send(chain: Chain, fog: FogSide, body: dict[int, Any]) -> tuple[int, dict[str, Any]]:
    return chain.post(chain.sign(fog.key, "anchor", body))


def refused(chain: Chain, fog: FogSide, body: dict[int, Any], reason: str,
            fragment: str) -> None:
    status, doc = send(chain, fog, body)
    assert (status, doc["error"]) == (400, reason), doc
    assert fragment in doc["detail"], doc


FEEDERS = [{"feeder": "feeder-a", "imp": 12000}, {"feeder": "feeder-b", "imp": 3000, "exp": 7}]


def test_anchored_aggregates_are_listed(chain: Chain, fog: FogSide) -> None:
    close1 = fog.close_interval(IVL, FEEDERS)
    s1, r1 = send(chain, fog, fog.anchor())
    assert s1 == 200, r1
    # the next close, and a revision of feeder-a's first interval logged with it: its
    # chain starts at the next close's first entry, anchored in an earlier block
    close2 = fog.close_interval(IVL + 900, FEEDERS[:1])
    rev = aggregate_fields(fog.key.id, "feeder-a", IVL, 12500, rev=1,
                           replaces=P.digest(close1[0]), prev=P.digest(close2[0]))
    revised = fog.log_aggregates([rev])
    fog.grow(0, IVL + 901)
    s2, r2 = send(chain, fog, fog.anchor())
    assert s2 == 200, r2
    status, doc = chain.get(f"/v1/aggregates?fog={fog.key.id_hex}")
    assert status == 200
    rows = doc["aggregates"]
    assert [(a["feeder"], a["ivl"], a["rev"]) for a in rows] == [
        ("feeder-a", IVL, 0), ("feeder-b", IVL, 0), ("feeder-a", IVL + 900, 0),
        ("feeder-a", IVL, 1)]
    assert [a["msg"] for a in rows] == [m.hex() for m in close1 + close2 + revised]
    assert rows[0] == {"height": r1["height"], "index": r1["index"],
                       "digest": P.digest(close1[0]).hex(), "fog": fog.key.id_hex,
                       "feeder": "feeder-a", "ivl": IVL, "rev": 0, "msg": close1[0].hex()}
    assert rows[3]["height"] == r2["height"]
    status, doc = chain.get(f"/v1/aggregates?fog={fog.key.id_hex}&feeder=feeder-b")
    assert [a["digest"] for a in doc["aggregates"]] == [P.digest(close1[1]).hex()]
    status, doc = chain.get(f"/v1/aggregates?fog={fog.key.id_hex}&after={r1['height']}")
    assert len(doc["aggregates"]) == 2
    other = chain.register("fog")
    assert chain.get(f"/v1/aggregates?fog={other.id_hex}")[1] == {"aggregates": []}
    for bad in ("", "?fog=zz", f"?fog={fog.key.id_hex}&feeder=", f"?fog={fog.key.id_hex}&x=1",
                f"?fog={fog.key.id_hex}&after=-1"):
        status, doc = chain.get("/v1/aggregates" + bad)
        assert (status, doc["error"]) == (400, "bad_request"), (bad, doc)
    # a later checkpoint may repeat a close's agg anchored before (known across anchors)
    fog.checkpoints.seal(IVL + 902, ivl=IVL + 900, agg=P.digest(close2[0]), force=True)
    assert send(chain, fog, fog.anchor())[0] == 200


def test_bad_aggregates_are_refused(chain: Chain, fog: FogSide, tmp_path: Path) -> None:
    fog.close_interval(IVL, FEEDERS)
    good = fog.anchor()
    cases: list[tuple[list[Any], str]] = [
        ([b"not a message"], "aggregate 0: "),
        ([good[1][0]], "is a type 6 message, not type 11"),  # a checkpoint
        ([P.sign1(other := P.SigningKey.generate(),
                  aggregate_fields(other.id, "feeder-a", IVL, 1))],
         "not by the sending fog"),
        ([P.sign1(fog.key, {**aggregate_fields(fog.key.id, "x", IVL, 1),
                            13: ["tamper", "outage"]}, check=False)],
         "alerts must be sorted"),
        ([good[3][0], good[3][0], *good[3][1:]], "carried twice"),
    ]
    for items, fragment in cases:
        refused(chain, fog, {**good, 3: items}, "anchor_bad_aggregate", fragment)
    assert send(chain, fog, good)[0] == 200
    # carried again by a later anchor
    fog.grow(1, IVL + 5)
    again = fog.anchor()
    refused(chain, fog, {**again, 3: [good[3][0]]}, "anchor_bad_aggregate",
            "carried by an earlier anchor")


def test_broken_aggregate_chains_are_refused(chain: Chain, fog: FogSide) -> None:
    raws = fog.close_interval(IVL, FEEDERS)
    body = fog.anchor()
    # the second of a close without the first, and the two in the wrong order
    refused(chain, fog, {**body, 3: raws[1:]}, "anchor_aggregate_chain", "has prev")
    refused(chain, fog, {**body, 3: raws[::-1]}, "anchor_aggregate_chain", "has prev")
    # prev naming an aggregate no anchor carried
    loose = fog.log_aggregates([aggregate_fields(fog.key.id, "feeder-c", IVL, 5,
                                                 prev=b"\x07" * 32)])
    refused(chain, fog, {**body, 3: [*raws, *loose]}, "anchor_aggregate_chain",
            "neither carried before it")
    assert send(chain, fog, body)[0] == 200


def test_a_close_without_its_aggregates_is_refused(chain: Chain, fog: FogSide) -> None:
    fog.close_interval(IVL, FEEDERS)
    body = fog.anchor()
    del body[3]
    refused(chain, fog, body, "anchor_missing_aggregate", "commits to aggregate")
    refused(chain, fog, C.anchor_body(body[1], body[2], []), "anchor_missing_aggregate",
            "checkpoint 1 (height 2)")


def test_a_close_naming_another_intervals_aggregate_is_refused(chain: Chain,
                                                                fog: FogSide) -> None:
    raws = fog.log_aggregates([aggregate_fields(fog.key.id, "feeder-a", IVL, 100)])
    fog.checkpoints.seal(IVL, ivl=IVL + 900, agg=P.digest(raws[0]), force=True)
    refused(chain, fog, fog.anchor(), "anchor_aggregate_ivl",
            f"closes interval {IVL + 900} but its aggregate")


def test_verify_chain_replays_and_compares_aggregates(tmp_path: Path) -> None:
    with running_chain(tmp_path) as chain:
        fs = FogSide(tmp_path)
        try:
            chain.register("fog", fs.key)
            fs.close_interval(IVL, FEEDERS)
            assert send(chain, fs, fs.anchor())[0] == 200
            fs.close_interval(IVL + 900, FEEDERS)
            assert send(chain, fs, fs.anchor())[0] == 200
        finally:
            fs.close()
        d = chain.data_dir
    assert verify_chain(d, None, None).startswith(f"chain {chain.chain_id.hex()} ok")
    # reopened, the store still knows them (the next anchor's chain checks need that)
    ledger = open_ledger(d, lambda: T0)
    try:
        assert [a.rev for a in ledger.aggregates(fs.key.id)] == [0, 0, 0, 0]
    finally:
        ledger.close()
    db = sqlite3.connect(d / "chain.db")
    db.execute("DELETE FROM aggregates WHERE feeder = 'feeder-b' AND ivl = ?", (IVL + 900,))
    db.commit()
    db.close()
    with pytest.raises(VerifyError, match="derived_state: the anchored aggregates of fog"):
        verify_chain(d, None, None)


def test_a_format_1_chain_is_upgraded_with_its_aggregates(tmp_path: Path) -> None:
    with running_chain(tmp_path) as chain:
        fs = FogSide(tmp_path)
        try:
            chain.register("fog", fs.key)
            fs.close_interval(IVL, FEEDERS)
            assert send(chain, fs, fs.anchor())[0] == 200
        finally:
            fs.close()
        d = chain.data_dir
    db = sqlite3.connect(d / "chain.db")
    db.execute("DROP TABLE aggregates")
    db.execute("DROP TABLE rules")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    with pytest.raises(Exception, match="open it once with the aggregator to upgrade"):
        SQLiteBlockStore(d / "chain.db", readonly=True)
    store = SQLiteBlockStore(d / "chain.db")
    try:
        assert [a.feeder for a in store.aggregates(fs.key.id, None, -1)] == ["feeder-a",
                                                                           "feeder-b"]
    finally:
        store.close()
    assert "ok" in verify_chain(d, None, None)
