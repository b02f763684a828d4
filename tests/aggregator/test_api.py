"""The aggregator's HTTP API on loopback (docs/PROTOCOL.md section 15): what it serves, every
refusal with its status and reason, each counted in /metrics, and the service still serving.
/metrics is read with the operator token (chainkit's chain has no auditor token; a higher
tier passes); the tiers themselves: tests/meterledger/test_http_tiers.py."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from aggregator.chain.store import SQLiteBlockStore, StoredBlock
from aggregator.chain.verify import store_blocks, verify_blocks
from fog_node.metrics import parse_metrics
from meterledger import wire as P
from meterledger.wire import chain as C
from meterledger.wire import merkle
from tests.kit import rawhttp
from tests.kit.chainkit import T0, Chain, FogSide, http, running_chain
from tests.wire.test_chain import BAD_BODIES

M = "meterledger_aggregator_"
EMPTY = "the body is empty: POST /v1/tx takes one transaction, its COSE_Sign1 message bytes"


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    with running_chain(tmp_path) as c:
        yield c


def fault(what: str = "meter silent") -> dict[int, Any]:
    return C.fault_body("rs485", what, T0, "retry")


def metrics(chain: Chain) -> dict[str, float]:
    req = urllib.request.Request(chain.url + "/metrics",
                                 headers={"Authorization": f"Bearer {chain.token}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return parse_metrics(resp.read().decode())


def test_head_blocks_and_participants(chain: Chain) -> None:
    status, head = chain.get("/v1/head")
    assert status == 200 and head["height"] == 0 and head["chain"] == chain.chain_id.hex()
    sealer = P.PublicKey(bytes.fromhex(head["sealer_pub"]))
    assert sealer.id == chain.chain_id
    header = P.verify(bytes.fromhex(head["header"]), sealer)
    assert header.digest.hex() == head["hash"] and header.fields[2] == 0
    status, g = chain.get("/v1/blocks/0")
    assert status == 200 and g["hash"] == head["hash"] and len(g["txs"]) == 1
    # the state root after genesis, as anyone replaying block 0 computes it
    genesis = StoredBlock(0, bytes.fromhex(g["hash"]), bytes.fromhex(g["header"]),
                          tuple(bytes.fromhex(t) for t in g["txs"]))
    assert head["state_root"] == verify_blocks([genesis]).state_root.hex()
    fog = chain.register("fog", name="north")
    status, parts = chain.get("/v1/participants")
    assert parts == {"participants": [
        {"id": chain.chain_id.hex(), "role": "dispatch", "pub": chain.key.public_key.raw.hex(),
         "name": "dispatch", "nonce": 2},
        {"id": fog.id_hex, "role": "fog", "pub": fog.public_key.raw.hex(), "name": "north",
         "nonce": 0}]}
    status, health = chain.get("/healthz")
    assert health == {"ok": True, "chain": chain.chain_id.hex(), "height": 1, "pending": 0}


def test_a_transaction_and_its_inclusion_proof(chain: Chain) -> None:
    fog = chain.register("fog")
    raw = chain.sign(fog, "fault", fault())
    status, r = chain.post(raw)
    assert status == 200 and r == {"digest": P.digest(raw).hex(), "height": 2, "index": 0}
    status, t = chain.get(f"/v1/tx/{r['digest']}")
    assert status == 200 and t["tx"] == raw.hex() and (t["height"], t["index"]) == (2, 0)
    header = P.verify(bytes.fromhex(t["header"]), chain.key.public_key).fields
    merkle.verify_inclusion(merkle.leaf_hash(raw), t["index"], header[5],
                            [bytes.fromhex(p) for p in t["path"]], header[4])
    status, b = chain.get("/v1/blocks/2")
    assert b["txs"] == [raw.hex()] and b["header"] == t["header"]


def test_anchors_and_instructions(chain: Chain, tmp_path: Path) -> None:
    fs = FogSide(tmp_path)
    try:
        chain.register("fog", fs.key)
        other = chain.register("fog")
        fs.grow(3)
        s1, a1 = chain.post(chain.sign(fs.key, "anchor", fs.anchor()))
        fs.grow(2)
        fs.grow(4)
        s2, a2 = chain.post(chain.sign(fs.key, "anchor", fs.anchor()))
        assert (s1, s2) == (200, 200)
        status, doc = chain.get(f"/v1/anchors?fog={fs.key.id_hex}")
        assert doc == {"fog": fs.key.id_hex, "anchors": [
            {**a1, "first": 1, "last": 1, "size": 3, "root": fs.log.root(3).hex()},
            {**a2, "first": 2, "last": 3, "size": 9, "root": fs.log.root(9).hex()}]}
        assert chain.get(f"/v1/anchors?fog={other.id_hex}")[1]["anchors"] == []
        raws, receipts = [], []
        for i, fog in enumerate((fs.key.id, other.id, fs.key.id)):  # each with the next nonce
            raws.append(chain.sign(chain.key, "instruction", C.instruction_body(
                fog, "limit", {1: 1000 * (i + 1)}, T0 + 900, why=f"peak {i}")))
            status, r = chain.post(raws[-1])
            assert status == 200, r
            receipts.append(r)
        status, doc = chain.get(f"/v1/instructions?fog={fs.key.id_hex}")
        assert [i["tx"] for i in doc["instructions"]] == [raws[0].hex(), raws[2].hex()]
        assert doc["instructions"][0] == {**receipts[0], "tx": raws[0].hex()}
        after = receipts[0]["height"]
        status, doc = chain.get(f"/v1/instructions?fog={fs.key.id_hex}&after={after}")
        assert [i["digest"] for i in doc["instructions"]] == [receipts[2]["digest"]]
        status, doc = chain.get(f"/v1/instructions?fog={other.id_hex}&after=0")
        assert [i["digest"] for i in doc["instructions"]] == [receipts[1]["digest"]]
    finally:
        fs.close()


def test_every_refusal_is_answered_counted_and_the_service_keeps_serving(
        chain: Chain, tmp_path: Path) -> None:
    expected: Counter[str] = Counter()
    fs = FogSide(tmp_path)
    fog = chain.register("fog", fs.key)
    fog2 = chain.register("fog")
    regulator = chain.register("regulator")

    def refused(raw: bytes, reason: str, status: int = 400) -> dict[str, Any]:
        code, doc = chain.post(raw)
        assert (code, doc["error"]) == (status, reason), doc
        expected[reason] += 1
        return doc

    # replayed: the exact same transaction is 409 with where it landed
    raw = chain.sign(fog, "fault", fault())
    status, first = chain.post(raw)
    assert status == 200
    dup = refused(raw, "duplicate", 409)
    assert dup == {"error": "duplicate", **first}
    # replayed nonce with other content; reordered (a nonce ahead), then both in order
    refused(chain.sign(fog, "fault", fault("other"), nonce=1), "nonce_reused")
    ahead = chain.sign(fog, "fault", fault("third"), nonce=3)
    doc = refused(ahead, "nonce_gap")
    assert "the next one is 2" in doc["detail"]
    assert chain.post(chain.sign(fog, "fault", fault("second"), nonce=2))[0] == 200
    assert chain.post(ahead)[0] == 200
    # senders and chains
    stranger = P.SigningKey.generate()
    refused(chain.sign(stranger, "fault", fault(), nonce=1), "unregistered")
    refused(chain.sign(fog, "fault", fault(), chain=b"\x0c" * 8), "wrong_chain")
    forged = chain.sign(stranger, "fault", fault(), nonce=4, check=False)
    refused(forged.replace(stranger.id, fog.id, 2), "bad_signature")  # kid and from: fog's
    # roles
    refused(chain.sign(fog, "register", C.register_body("fog", stranger.public_key.raw)),
            "not_permitted")
    refused(chain.sign(regulator, "fault", fault()), "not_permitted")
    refused(chain.sign(chain.key, "anchor", C.anchor_body([b"x"], [])), "not_permitted")
    refused(chain.sign(fog, "report", C.report_body(b"\x01" * 32, 1, 0, 0, [])),
            "unknown_instruction")
    instr = chain.sign(chain.key, "instruction", C.instruction_body(fog.id, "ping", {}, T0))
    assert chain.post(instr)[0] == 200
    refused(chain.sign(fog2, "report", C.report_body(P.digest(instr), 1, 0, 0, [])),
            "not_permitted")
    refused(chain.sign(chain.key, "instruction", C.instruction_body(regulator.id, "ping", {},
                                                                    T0)), "unknown_fog")
    refused(chain.sign(chain.key, "register", C.register_body("plant", fog.public_key.raw)),
            "already_registered")
    # every body rule
    for _, kind, body, _ in BAD_BODIES:
        refused(chain.sign(chain.key, kind, body, check=False), "bad_fields")
    # bytes that are no transaction
    refused(b"\xd2\x84\x43", "malformed")
    assert refused(b"", "malformed")["detail"] == EMPTY  # refused before the ledger
    refused(fs.grow(1).msg, "wrong_type")
    big = chain.sign(fog, "fault", C.fault_body("k", "x" * 4100, T0, "a"), check=False)
    assert len(big) > P.MAX_MESSAGE
    refused(big, "too_large")
    refused(bytes(70_000), "too_large")  # refused unread
    # anchors: a fog that rewrites its anchored log
    assert chain.post(chain.sign(fog, "anchor", fs.anchor()))[0] == 200
    latest = fs.checkpoints.latest()
    assert latest is not None
    rewritten = P.sign1(fs.key, P.checkpoint(fs.key.id, 2, latest.size, b"\x0e" * 32,
                                             latest.digest, T0))
    refused(chain.sign(fog, "anchor", C.anchor_body([rewritten], [])), "anchor_consistency")
    refused(chain.sign(fog, "anchor", C.anchor_body([latest.msg], [])), "anchor_height")
    # the service keeps serving, and counted every refusal by reason
    status, r = chain.post(chain.sign(fog, "fault", fault("still here")))
    assert status == 200
    m = metrics(chain)
    assert {k: v for k, v in m.items() if k.startswith(M + "rejected_total")} == {
        f'{M}rejected_total{{reason="{reason}"}}': n for reason, n in expected.items()}
    assert expected["bad_fields"] == len(BAD_BODIES)
    assert m[M + 'accepted_total{kind="fault"}'] == 4
    assert m[M + 'accepted_total{kind="register"}'] == 3
    assert m[M + "anchors_total"] == 1
    assert m[M + "height"] == r["height"]
    assert m[M + 'participants{role="fog"}'] == 2
    fs.close()


def raw_request(chain: Chain, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str]:
    u = urlsplit(chain.url)
    conn = HTTPConnection(u.hostname or "", u.port, timeout=30)
    try:
        conn.putrequest(method, path)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize("path,status,fragment", [
    ("/v1/head?x=1", 400, "unknown parameter 'x'"),
    ("/v1/blocks/abc", 400, "non-negative decimal integer"),
    ("/v1/blocks/-1", 400, "non-negative decimal integer"),
    ("/v1/blocks/7", 404, "no block 7"),
    ("/v1/blocks/99999999999999999999", 404, "no block"),
    ("/v1/tx/abcd", 400, "64 hex characters"),
    ("/v1/tx/" + "00" * 32, 404, "no transaction"),
    ("/v1/anchors", 400, "missing parameter fog"),
    ("/v1/anchors?fog=xyz", 400, "16 hex characters"),
    ("/v1/anchors?fog=0011223344556677&fog=0011223344556677", 400, "more than once"),
    ("/v1/instructions?fog=0011223344556677&after=-3", 400, "non-negative decimal"),
    ("/v1/nothing", 404, "no endpoint"),
    ("/v1/tx", 405, "takes POST"),
    ("/metrics?x", 400, "unknown parameter"),
])
def test_get_errors_say_what_was_wrong(chain: Chain, path: str, status: int,
                                       fragment: str) -> None:
    code, doc = http(chain.url + path, token=chain.token)
    assert code == status and fragment in doc["detail"], doc


def test_method_and_length_errors(chain: Chain) -> None:
    assert http(chain.url + "/v1/head", "POST", b"x")[0] == 405
    assert http(chain.url + "/v1/nothing", "POST", b"x")[0] == 404
    assert http(chain.url + "/v1/tx?x=1", "POST", b"x")[0] == 400
    assert raw_request(chain, "PUT", "/v1/tx", b"")[0] == 405
    # no Content-Length: the body is empty, and an empty body is no transaction (no 411)
    status, text = raw_request(chain, "POST", "/v1/tx", b"")
    assert (status, json.loads(text)) == (400, {"error": "malformed", "detail": EMPTY})
    status, text = raw_request(chain, "POST", "/v1/tx", b"", {"Content-Length": "ten"})
    assert status == 400 and "not a number" in text
    assert http(chain.url + "/healthz")[0] == 200  # still serving


def test_concurrent_senders_are_group_sealed_into_a_valid_chain(chain: Chain) -> None:
    fogs = [chain.register("fog") for _ in range(12)]
    txs = [chain.sign(f, "fault", fault(f"fog {i}")) for i, f in enumerate(fogs)]
    answers: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(txs)

    def send(i: int) -> None:
        answers[i] = chain.post(txs[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(txs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(status == 200 for status, _ in answers), answers
    spots = {(doc["height"], doc["index"]) for _, doc in answers}
    assert len(spots) == len(txs)  # each in its own place
    for raw, (_, doc) in zip(txs, answers, strict=True):
        assert chain.get(f"/v1/blocks/{doc['height']}")[1]["txs"][doc["index"]] == raw.hex()
    blocks = metrics(chain)[M + "blocks_sealed_total"]
    assert 12 + 1 <= blocks <= 12 + 12  # a block per registration, then 1..12 for the faults
    store = SQLiteBlockStore(chain.data_dir / "chain.db", readonly=True)
    try:
        replay = verify_blocks(store_blocks(store), chain.key.public_key)
        assert replay.txs == 1 + 12 + 12 and replay.height == chain.ledger.head().height
    finally:
        store.close()


def test_a_closed_ledger_answers_503_not_500(chain: Chain) -> None:
    fog = chain.register("fog")
    raw = chain.sign(fog, "fault", fault())
    chain.ledger.close()
    status, doc = chain.post(raw)
    assert (status, doc["error"]) == (503, "unavailable") and "closed" in doc["detail"]
    status, doc = chain.get("/v1/participants")  # its store is closed too
    assert (status, doc["error"]) == (503, "unavailable")
    m = metrics(chain)  # what can still be read is still served
    assert m[M + "height"] == 1 and not any(k.startswith(M + "participants") for k in m)


def curl_post(chain: Chain, path: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    """What `curl -X POST http://host/path` sends, on a real socket: (status, headers, the
    JSON answer)."""
    u = urlsplit(chain.url)
    status, headers, body = rawhttp.curl_post(u.hostname or "", u.port or 80, path)
    return status, headers, json.loads(body)


ROUTES = {  # path -> (methods, query parameters with required flags)
    "/v1/head": (["get"], []),
    "/v1/anchors": (["get"], [("fog", True)]),
    "/v1/instructions": (["get"], [("fog", True), ("after", False)]),
    "/v1/participants": (["get"], []),
    "/v1/aggregates": (["get"], [("fog", True), ("feeder", False), ("after", False)]),
    "/v1/rules": (["get"], []),
    "/v1/suggestions": (["get"], [("state", False), ("before", False), ("limit", False)]),
    "/healthz": (["get"], []),
    "/v1/blocks": (["get"], [("before", False), ("limit", False)]),
    "/v1/fogs": (["get"], [("fog", False), ("limit", False)]),
    "/v1/dispatch": (["get"], [("fog", False), ("before", False), ("limit", False)]),
    "/v1/validators": (["get"], [("commits", False)]),
    "/v1/latency": (["get"], [("limit", False)]),
    "/v1/params": (["get"], []),
    "/v1/generators": (["get"], [("after", False), ("limit", False)]),
    "/v1/certificates": (["get"], [("owner", False), ("generator", False), ("after", False),
                                   ("limit", False)]),
    "/v1/certificates/{cid}": (["get"], []),
    "/v1/balances/{owner}": (["get"], []),
    "/v1/carbon/accounts/{owner}": (["get"], []),
    "/v1/carbon/generators/{gid}": (["get"], []),
    "/v1/carbon/restricted": (["get"], []),
    "/v1/carbon/conversions/{cid}": (["get"], []),
    "/v1/notary/outbox": (["get"], [("after", False), ("limit", False)]),
    "/v1/notary/records/{subject}": (["get"], [("tx", False)]),
    "/v1/market/access/{pid}": (["get"], []),
    "/v1/market/accounts/{pid}": (["get"], []),
    "/v1/market/enrolments/{pid}": (["get"], []),
    "/v1/market/deliveries/{pid}/{cycle}": (["get"], []),
    "/v1/market/network": (["get"], []),
    "/v1/market/floor": (["get"], []),
    "/v1/market/cycles/{cycle}": (["get"], []),
    "/v1/market/cycles/{cycle}/contracts": (["get"], [("after", False), ("limit", False)]),
    "/v1/market/cycles/{cycle}/contracts/{n}": (["get"], []),
    "/v1/market/cycles/{cycle}/book": (["get"], [("side", False), ("after", False),
                                                 ("limit", False)]),
    "/v1/market/cycles/{cycle}/commitments": (["get"], [("after", False), ("limit", False)]),
    "/v1/billing/tariffs/{name}": (["get"], []),
    "/v1/billing/receipts/{account}": (["get"], [("after", False), ("limit", False)]),
    "/v1/devices/{dev}/timeline": (["get"], [("after", False), ("limit", False)]),
    "/v1/billing/outages/{meter}": (["get"], [("from", False), ("to", False)]),
    "/v1/billing/credits/{meter}": (["get"], []),
    "/v1/billing/redemptions/{account}": (["get"], [("from", False), ("to", False)]),
    "/v1/dr/contracts/{customer}": (["get"], []),
    "/v1/dr/fogs/{fog}/contracts": (["get"], [("after", False), ("limit", False)]),
    "/v1/dr/events": (["get"], [("fog", False), ("after", False), ("limit", False)]),
    "/v1/dr/reports/{event}": (["get"], [("after", False), ("limit", False)]),
    "/v1/blocks/{height}": (["get"], []),
    "/v1/tx/{digest}": (["get"], []),
    "/metrics": (["get"], []),
    "/v1/tx": (["post"], []),
    "/v1/suggestions/{id}/{action}": (["post"], []),
    "/openapi.json": (["get"], []),
}


def test_openapi_lists_every_route_and_curl_post_without_a_body_is_a_405(chain: Chain) -> None:
    assert chain.url.startswith("http://127.0.0.1:")  # a real socket, an ephemeral port
    status, doc = chain.get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {p: sorted(ops) for p, ops in doc["paths"].items()} == {
        p: methods for p, (methods, _) in ROUTES.items()}
    for path, (methods, query) in ROUTES.items():
        op = doc["paths"][path][methods[0]]
        assert op["summary"], path
        assert [(q["name"], q["required"]) for q in op["parameters"] if q["in"] == "query"] == \
            query, path
        assert ("requestBody" in op) == (methods == ["post"]), path
    params = doc["paths"]["/v1/suggestions/{id}/{action}"]["post"]["parameters"]
    assert [(p["name"], p["in"]) for p in params] == [("id", "path"), ("action", "path")]
    metrics_200 = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics_200) == ["text/plain; version=0.0.4; charset=utf-8"]
    # curl -X POST with no body to a GET endpoint: 405 in the envelope, naming the path
    status, headers, answer = curl_post(chain, "/v1/head")
    assert (status, headers["allow"], headers["content-type"]) == (
        405, "GET, HEAD", "application/json")
    assert answer == {"error": "method_not_allowed", "detail": "POST goes to /v1/tx or "
                      "/v1/suggestions/{id}/approve|dismiss, not '/v1/head'"}
    # ... and to /v1/tx: the empty body reaches the handler, which says what is wrong
    status, _, answer = curl_post(chain, "/v1/tx")
    assert (status, answer) == (400, {"error": "malformed", "detail": EMPTY})
    assert metrics(chain)[M + 'rejected_total{reason="malformed"}'] == 1
    # the in-process helpers answer as the socket does
    status, ctype, body = chain.api.get("/openapi.json")
    assert (status, ctype, json.loads(body)) == (200, "application/json", doc)
    status, ctype, body = chain.api.post("/v1/head", b"")
    assert (status, json.loads(body)["error"]) == (405, "method_not_allowed")
    sid = "ab" * 32
    status, _, body = chain.api.post(f"/v1/suggestions/{sid}/dismiss", b"", "Bearer wrong")
    assert (status, json.loads(body)["error"]) == (401, "unauthorized")
    status, _, body = chain.api.post(f"/v1/suggestions/{sid}/dismiss", b"",
                                     f"Bearer {chain.token}")
    assert (status, json.loads(body)["error"]) == (404, "not_found")
