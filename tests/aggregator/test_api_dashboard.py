"""The chain API's reads for the dashboard (docs/PROTOCOL.md section 15): the block list,
decoded blocks and transactions, anchor lag per fog, instructions with their reports,
suggestions with the aggregates that triggered them, the sealer, commit latencies; each
bounded, each bad query a 400 in the envelope. The consortium's /v1/validators:
tests/aggregator/test_consortium_dashboard.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.ledger import LatencyRing
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.wire import chain as C
from tests.aggregator.test_rules import EXAMPLE, IVL, anchor_peak, post_rules
from tests.kit.chainkit import T0, Chain, FogSide, http, running_chain
from tests.kit.fogkit import wait

START = T0 + 10_000  # the chain's clock when the test begins


class Clock:
    def __init__(self) -> None:
        self.t = float(START)

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def chain(tmp_path: Path, clock: Clock) -> Iterator[Chain]:
    with running_chain(tmp_path, clock) as c:
        yield c


def ok(chain: Chain, path: str) -> dict[str, Any]:
    status, doc = chain.get(path)
    assert status == 200, (path, doc)
    return doc


def fault() -> dict[int, Any]:
    return C.fault_body("rs485", "meter silent", T0, "retry", [3, 4])


# -- the block list ----------------------------------------------------------------------------
def test_blocks_newest_first_with_kinds_times_and_sealer_and_pages(chain: Chain,
                                                                   clock: Clock) -> None:
    fog = chain.register("fog", name="north")  # block 1
    clock.t += 60
    assert chain.post(chain.sign(fog, C.FAULT, fault()))[0] == 200  # block 2
    clock.t += 60
    assert chain.post(chain.sign(fog, C.FAULT, fault()))[0] == 200  # block 3
    doc = ok(chain, "/v1/blocks")
    assert doc["head"] == 3 and doc["next"] is None
    assert [b["height"] for b in doc["blocks"]] == [3, 2, 1, 0]
    head = ok(chain, "/v1/head")
    three = doc["blocks"][0]
    assert three == {"height": 3, "hash": head["hash"], "time": START + 120, "ntx": 1,
                     "kinds": {"fault": 1}, "proposer": chain.chain_id.hex(),
                     "proposer_name": "dispatch"}
    assert doc["blocks"][2]["kinds"] == {"register": 1} and doc["blocks"][2]["time"] == START
    assert doc["blocks"][3]["kinds"] == {"register": 1}  # genesis: the dispatch key
    # pages: `next` is the following page's `before`
    page = ok(chain, "/v1/blocks?limit=2")
    assert [b["height"] for b in page["blocks"]] == [3, 2] and page["next"] == 2
    page = ok(chain, f"/v1/blocks?limit=2&before={page['next']}")
    assert [b["height"] for b in page["blocks"]] == [1, 0] and page["next"] is None
    assert ok(chain, "/v1/blocks?before=0") == {"head": 3, "blocks": [], "next": None}
    assert [b["height"] for b in ok(chain, "/v1/blocks?before=99")["blocks"]] == [3, 2, 1, 0]
    # the same answer again (kept in memory), and through the client
    client = ChainClient(chain.url)
    assert client.blocks() == doc
    assert client.blocks(before=2, limit=1)["blocks"] == [doc["blocks"][2]]


def test_the_block_list_is_bounded(chain: Chain) -> None:
    raws = [chain.sign(chain.key, C.REGISTER, C.register_body(
        "fog", P.SigningKey.generate().public_key.raw), nonce=chain.next_nonce(chain.key) + i)
        for i in range(3)]
    for raw in raws:
        assert chain.post(raw)[0] == 200
    assert len(ok(chain, "/v1/blocks?limit=1")["blocks"]) == 1
    assert len(ok(chain, "/v1/blocks?limit=500")["blocks"]) == 4


@pytest.mark.parametrize("query,fragment", [
    ("/v1/blocks?limit=0", "limit must be an integer from 1 to 500, not '0'"),
    ("/v1/blocks?limit=501", "from 1 to 500"),
    ("/v1/blocks?limit=ten", "from 1 to 500"),
    ("/v1/blocks?before=-1", "before must be a non-negative decimal integer"),
    ("/v1/blocks?after=1", "unknown parameter 'after'"),
    ("/v1/fogs?limit=0", "from 1 to 2880"),
    ("/v1/fogs?limit=2881", "from 1 to 2880"),
    ("/v1/fogs?fog=xyz", "fog must be 16 hex characters"),
    ("/v1/dispatch?limit=501", "from 1 to 500"),
    ("/v1/dispatch?before=x", "before must be a non-negative decimal integer"),
    ("/v1/dispatch?fog=00", "fog must be 16 hex characters"),
    ("/v1/validators?commits=0", "commits must be an integer from 1 to 100"),
    ("/v1/validators?commits=101", "from 1 to 100"),
    ("/v1/latency?limit=1025", "limit must be an integer from 1 to 1024"),
    ("/v1/latency?limit=", "from 1 to 1024, not ''"),
    ("/v1/latency?limit=1&limit=2", "more than once"),
    ("/v1/suggestions?limit=0", "limit must be an integer from 1 to 500"),
    ("/v1/suggestions?limit=501", "from 1 to 500"),
    ("/v1/suggestions?before=x", "before must be a non-negative decimal integer"),
])
def test_bad_queries_are_400_in_the_envelope(chain: Chain, query: str, fragment: str) -> None:
    status, doc = http(chain.url + query)
    assert (status, doc["error"]) == (400, "bad_request"), doc
    assert fragment in doc["detail"], doc


# -- decoded blocks and transactions -----------------------------------------------------------
def test_blocks_and_transactions_are_decoded_by_name(chain: Chain, tmp_path: Path,
                                                     clock: Clock) -> None:
    fs = FogSide(tmp_path)
    try:
        chain.register("fog", fs.key, name="north")
        fs.close_interval(IVL, [{"feeder": "feeder-a", "imp": 1234}])
        raw = chain.sign(fs.key, C.ANCHOR, fs.anchor())
        status, r = chain.post(raw)
        assert status == 200, r
        doc = ok(chain, f"/v1/tx/{r['digest']}")
        assert {"digest", "height", "index", "tx", "path", "header"} <= set(doc)  # kept
        d = doc["decoded"]
        assert (d["digest"], d["type"], d["type_name"], d["kind"], d["from"], d["nonce"],
                d["t"], d["chain"]) == (r["digest"], 12, "transaction", "anchor",
                                        fs.key.id_hex, 1, T0, chain.chain_id.hex())
        (cp,) = d["body"]["checkpoints"]
        assert (cp["type_name"], cp["fog"], cp["height"], cp["t"], cp["ivl"]) == (
            "checkpoint", fs.key.id_hex, 1, IVL, IVL)
        (agg,) = d["body"]["aggregates"]
        assert (agg["type_name"], agg["feeder"], agg["ivl"], agg["imp"]) == (
            "aggregate", "feeder-a", IVL, 1234)
        (listed,) = ok(chain, f"/v1/aggregates?fog={fs.key.id_hex}")["aggregates"]
        assert agg["digest"] == listed["digest"]
        assert d["body"]["proof"] == []  # the fog's first anchor: nothing to be consistent with
        body = C.instruction_body(fs.key.id, "limit", {1: 1500}, T0 + 900, [b"\x01" * 8],
                                  "peak")
        status, i = chain.post(chain.sign(chain.key, C.INSTRUCTION, body))
        assert status == 200, i
        assert ok(chain, f"/v1/tx/{i['digest']}")["decoded"]["body"] == {
            "fog": fs.key.id_hex, "op": "limit", "args": {"1": 1500}, "not_after": T0 + 900,
            "devs": ["01" * 8], "why": "peak"}
        block = ok(chain, f"/v1/blocks/{r['height']}")
        assert {"height", "hash", "header", "txs"} <= set(block)
        head = block["decoded"]["header"]
        assert head == {"hash": block["hash"], "type_name": "block", "type": 13,
                        "sealer": chain.chain_id.hex(), "height": r["height"],
                        "prev": ok(chain, f"/v1/blocks/{r['height'] - 1}")["hash"],
                        "txroot": C.tx_root([raw]).hex(), "ntx": 1, "t": int(clock()),
                        "chain": chain.chain_id.hex()}
        assert block["decoded"]["time"] == int(clock())
        assert (block["decoded"]["proposer"], block["decoded"]["proposer_name"]) == (
            chain.chain_id.hex(), "dispatch")
        assert block["decoded"]["txs"] == [d]
        genesis = ok(chain, "/v1/blocks/0")["decoded"]["txs"][0]
        assert genesis["kind"] == "register" and genesis["body"] == {
            "role": "dispatch", "pub": chain.key.public_key.raw.hex(), "name": "dispatch"}
        assert ChainClient(chain.url).block(0)["decoded"]["txs"] == [genesis]
    finally:
        fs.close()


# -- fogs and anchor lag -----------------------------------------------------------------------
def test_fogs_list_every_fog_that_anchored_with_its_anchor_lag(chain: Chain, tmp_path: Path,
                                                               clock: Clock) -> None:
    north, south = FogSide(tmp_path, name="north"), FogSide(tmp_path, name="south")
    try:
        chain.register("fog", north.key, name="north")
        chain.register("fog", south.key, name="south")
        chain.register("fog", name="silent")  # registered, never anchored: not listed
        sent = []
        for i, (fs, checkpoint_t) in enumerate([(north, T0), (south, T0 + 5), (north, T0 + 900),
                                                (north, T0 + 1000)]):
            clock.t = START + 1000 * i
            fs.grow(2, checkpoint_t)
            status, r = chain.post(chain.sign(fs.key, C.ANCHOR, fs.anchor()))
            assert status == 200, r
            sent.append((r, START + 1000 * i, checkpoint_t))
        doc = ok(chain, "/v1/fogs")
        assert [(f["id"], f["name"], f["anchors"]) for f in doc["fogs"]] == [
            (north.key.id_hex, "north", 3), (south.key.id_hex, "south", 1)]
        series = doc["fogs"][0]["series"]
        expected = [{"height": r["height"], "index": 0, "digest": r["digest"], "time": t,
                     "checkpoint_t": cp_t, "lag": t - cp_t, "last": last, "size": 2 * last}
                    for (r, t, cp_t), last in zip([sent[0], sent[2], sent[3]], [1, 2, 3],
                                                  strict=True)]
        assert series == expected  # oldest first, for a plot
        assert [a["lag"] for a in series] == [10_000, 11_100, 12_000]
        assert doc["fogs"][0]["newest"] == expected[-1]
        assert doc["fogs"][1]["series"][0]["lag"] == START + 1000 - (T0 + 5)
        # the last N only, one fog only
        assert ok(chain, "/v1/fogs?limit=2")["fogs"][0]["series"] == expected[1:]
        only = ok(chain, f"/v1/fogs?fog={south.key.id_hex}&limit=1")["fogs"]
        assert [f["id"] for f in only] == [south.key.id_hex]
        assert ok(chain, "/v1/fogs?fog=0011223344556677") == {"fogs": []}
        assert ChainClient(chain.url).fogs(limit=2) == ok(chain, "/v1/fogs?limit=2")["fogs"]
    finally:
        north.close()
        south.close()


# -- instructions with their reports -----------------------------------------------------------
def _hold_seals(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the next block's write wait for the event, so what arrives meanwhile is sealed
    together into the block after it."""
    release, store = threading.Event(), chain.ledger._store
    append = store.append

    def held(*args: Any, **kwargs: Any) -> None:
        release.wait(60)
        append(*args, **kwargs)

    monkeypatch.setattr(store, "append", held)
    return release


def test_dispatch_lists_instructions_newest_first_with_their_reports_never_splitting_a_block(
        chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    fogs = [chain.register("fog", name=f"fog-{i}") for i in range(2)]

    def instruction(fog: P.SigningKey, watts: int, nonce: int) -> bytes:
        return chain.sign(chain.key, C.INSTRUCTION, C.instruction_body(
            fog.id, "limit", {1: watts}, T0 + 900, why=f"{watts} W"), nonce=nonce)

    n = chain.next_nonce(chain.key)
    raws = {"i1": instruction(fogs[0], 1000, n), "i2": instruction(fogs[1], 2000, n + 1),
            "i3": instruction(fogs[0], 3000, n + 2), "f": chain.sign(fogs[1], C.FAULT, fault())}
    status, i1 = chain.post(raws["i1"])
    assert status == 200, i1
    # i2 and i3 in one block: the block before it (a fault) is held while they gather
    release = _hold_seals(chain, monkeypatch)
    answers: dict[str, dict[str, Any]] = {}

    def send(name: str) -> None:
        answers[name] = chain.post(raws[name])[1]

    threads = {name: threading.Thread(target=send, args=(name,)) for name in ("f", "i2", "i3")}
    threads["f"].start()
    wait(lambda: chain.ledger._sealing and chain.ledger.stats().pending == 0,
         what="the fault's block being written")
    threads["i2"].start()
    wait(lambda: chain.ledger.stats().pending == 1, what="i2 in the pool")
    threads["i3"].start()
    wait(lambda: chain.ledger.stats().pending == 2, what="i3 in the pool")
    release.set()
    for t in threads.values():
        t.join(60)
    i2, i3 = answers["i2"], answers["i3"]
    assert i2["height"] == i3["height"] == answers["f"]["height"] + 1, answers
    assert (i2["index"], i3["index"]) == (0, 1)
    monkeypatch.undo()
    n = chain.next_nonce(chain.key)
    status, i4 = chain.post(instruction(fogs[1], 4000, n))
    assert status == 200, i4
    # fog 0 reports on i1, twice (a second report: later results)
    reports = []
    for done in (2, 3):
        status, rep = chain.post(chain.sign(fogs[0], C.REPORT, C.report_body(
            bytes.fromhex(i1["digest"]), done, 0, 1, [7, 8], "one meter silent")))
        assert status == 200, rep
        reports.append(rep)
    doc = ok(chain, "/v1/dispatch")
    assert [i["digest"] for i in doc["instructions"]] == [
        i4["digest"], i3["digest"], i2["digest"], i1["digest"]] and doc["next"] is None
    first = doc["instructions"][-1]
    assert (first["height"], first["index"], first["fog"], first["tx"]) == (
        i1["height"], 0, fogs[0].id_hex, raws["i1"].hex())
    assert first["decoded"]["body"]["args"] == {"1": 1000} and first["time"] == START
    assert [(r["digest"], r["height"], r["decoded"]["body"]["done"]) for r in first["reports"]] \
        == [(reports[0]["digest"], reports[0]["height"], 2),
            (reports[1]["digest"], reports[1]["height"], 3)]
    assert first["reports"][0]["decoded"]["body"] == {
        "instruction": i1["digest"], "done": 2, "rejected": 0, "failed": 1, "entries": [7, 8],
        "detail": "one meter silent"}
    assert all(i["reports"] == [] for i in doc["instructions"][:-1])
    # pages never split the block holding i2 and i3
    pages = []
    page = ok(chain, "/v1/dispatch?limit=2")
    pages.append([i["digest"] for i in page["instructions"]])
    while page["next"] is not None:
        page = ok(chain, f"/v1/dispatch?limit=2&before={page['next']}")
        pages.append([i["digest"] for i in page["instructions"]])
    assert pages == [[i4["digest"]], [i3["digest"], i2["digest"]], [i1["digest"]]]
    one = ok(chain, f"/v1/dispatch?limit=1&before={i4['height']}")  # a block over the limit
    assert [i["digest"] for i in one["instructions"]] == [i3["digest"], i2["digest"]]
    assert one["next"] == i2["height"]
    # one fog's
    mine = ok(chain, f"/v1/dispatch?fog={fogs[0].id_hex}")
    assert [i["digest"] for i in mine["instructions"]] == [i3["digest"], i1["digest"]]
    assert mine["instructions"][1]["reports"] == first["reports"]
    client = ChainClient(chain.url)
    assert client.dispatch(fog_hex=fogs[1].id_hex, limit=1)["instructions"][0]["digest"] == \
        i4["digest"]


def test_dispatch_reads_indexes_never_a_scan_of_the_chain(
        chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    fog = chain.register("fog", name="north")
    n = chain.next_nonce(chain.key)
    digests = []
    for k in range(3):
        status, r = chain.post(chain.sign(chain.key, C.INSTRUCTION, C.instruction_body(
            fog.id, "limit", {1: 1000 + k}, T0 + 900), nonce=n + k))
        assert status == 200, r
        digests.append(r["digest"])
    status, rep = chain.post(chain.sign(fog, C.REPORT, C.report_body(
        bytes.fromhex(digests[0]), 1, 0, 0, [1])))
    assert status == 200, rep
    store = chain.ledger._store

    def no_scan(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a scan of the stored transactions")

    def no_all(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("every instruction of a fog")

    monkeypatch.setattr(store, "txs_of_kind", no_scan)
    monkeypatch.setattr(store, "instructions", no_all)
    doc = ok(chain, "/v1/dispatch")
    assert [i["digest"] for i in doc["instructions"]] == digests[::-1]
    assert [r["digest"] for r in doc["instructions"][-1]["reports"]] == [rep["digest"]]
    mine = ok(chain, f"/v1/dispatch?fog={fog.id_hex}&limit=1")
    assert [i["digest"] for i in mine["instructions"]] == [digests[2]]
    assert mine["next"] == doc["instructions"][0]["height"]


def test_fogs_answers_are_capped_in_anchors(chain: Chain, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from aggregator.chain.service import api_reads
    fogs = [FogSide(tmp_path, name=f"f{i}") for i in range(2)]
    try:
        for fs in fogs:
            chain.register("fog", fs.key, name=fs.key.id_hex)
            for _ in range(2):
                fs.grow(1, T0)
                assert chain.post(chain.sign(fs.key, C.ANCHOR, fs.anchor()))[0] == 200
        monkeypatch.setattr(api_reads, "FOG_ROWS", 3)
        status, doc = chain.get("/v1/fogs")  # 2 fogs x 2 anchors: 4 rows
        assert (status, doc["error"]) == (400, "bad_request") and "fog=" in doc["detail"]
        assert len(ok(chain, "/v1/fogs?limit=1")["fogs"]) == 2  # 2 rows
        (one,) = ok(chain, f"/v1/fogs?fog={fogs[0].key.id_hex}")["fogs"]
        assert one["anchors"] == 2 and len(one["series"]) == 2
    finally:
        for fs in fogs:
            fs.close()


# -- suggestions with the aggregates that triggered them ---------------------------------------
def test_a_suggestion_names_the_aggregates_that_triggered_it(tmp_path: Path) -> None:
    with running_chain(tmp_path) as chain:  # suggestions are made on the wall clock
        assert post_rules(chain, EXAMPLE)[0] == 200
        fs = FogSide(tmp_path)
        try:
            chain.register("fog", fs.key, name="fog-1")
            fs.grow(3, IVL - 60)
            anchor_peak(chain, fs, [IVL])
            anchor_peak(chain, fs, [IVL + 900])
            (s,) = ok(chain, "/v1/suggestions")["suggestions"]
            anchored = {a["ivl"]: a for a in ok(
                chain, f"/v1/aggregates?fog={fs.key.id_hex}&feeder=feeder-a")["aggregates"]}
            assert s["aggregates"] == [
                {"ivl": ivl, "value": 50.0, "digest": anchored[ivl]["digest"], "rev": 0,
                 "height": anchored[ivl]["height"], "index": anchored[ivl]["index"]}
                for ivl in (IVL, IVL + 900)]
            assert (s["ivls"], s["values"]) == ([IVL, IVL + 900], [50.0, 50.0])  # kept
            assert ChainClient(chain.url).suggestions("open") == [s]
            # a suggestion stored before they were kept shows its intervals' aggregates
            chain.dispatcher.store._exec("UPDATE suggestions SET aggs = NULL")
            assert ok(chain, "/v1/suggestions")["suggestions"] == [s]
        finally:
            fs.close()


# -- the sealer, latencies, the OpenAPI document -----------------------------------------------
def test_the_embedded_chain_names_its_sealer(chain: Chain) -> None:
    chain.register("fog")
    doc = ok(chain, "/v1/validators")
    assert doc == {"engine": "embedded", "height": 1, "sealer": {
        "id": chain.chain_id.hex(), "pub": chain.key.public_key.raw.hex(), "name": "dispatch"}}
    assert ok(chain, "/v1/validators?commits=100") == doc
    assert ChainClient(chain.url).validators() == doc


def test_commit_latencies_newest_first_bounded(chain: Chain) -> None:
    assert ok(chain, "/v1/latency") == {"kept": 1024, "latencies": []}
    fog = chain.register("fog")
    for _ in range(3):
        assert chain.post(chain.sign(fog, C.FAULT, fault()))[0] == 200
    again = C.fault_body("rs485", "again", T0, "retry")
    assert chain.post(chain.sign(fog, C.FAULT, again, nonce=1))[0] == 400  # not measured
    doc = ok(chain, "/v1/latency")
    assert [x["height"] for x in doc["latencies"]] == [4, 3, 2, 1]
    assert all(x["ms"] >= 0 and x["at"] > 0 for x in doc["latencies"])
    assert sorted(doc["latencies"], key=lambda x: -x["at"]) == doc["latencies"]
    assert ok(chain, "/v1/latency?limit=2")["latencies"] == doc["latencies"][:2]
    assert ChainClient(chain.url).latency(limit=1) == doc["latencies"][:1]


def test_the_latency_ring_keeps_the_newest() -> None:
    ring = LatencyRing(3)
    for h in range(5):
        ring.add(h, 100.0 + h, -1.0 if h == 4 else 2.0 * h)
    assert [(x.height, x.ms) for x in ring.newest(10)] == [(4, 0.0), (3, 6.0), (2, 4.0)]
    assert ring.newest(0) == [] and len(ring.newest(1)) == 1


NEW = {  # the dashboard's routes: query parameters, none required
    "/v1/blocks": ["before", "limit"], "/v1/fogs": ["fog", "limit"],
    "/v1/dispatch": ["fog", "before", "limit"], "/v1/validators": ["commits"],
    "/v1/latency": ["limit"]}


def test_each_new_route_is_documented_public_with_its_ranges(chain: Chain) -> None:
    doc = ok(chain, "/openapi.json")
    for path, params in NEW.items():
        op = doc["paths"][path]["get"]
        assert op["summary"] and op["x-tier"] == "public", path
        query = [q for q in op["parameters"] if q["in"] == "query"]
        assert [(q["name"], q["required"]) for q in query] == [(p, False) for p in params]
        assert all(q["description"] for q in query), path
        for q in query:
            if q["name"] in ("limit", "commits"):
                assert " to " in q["description"] and "default" in q["description"], path
