"""API tiers (meterledger.infra.http_auth) over real sockets: who may call what, the tokens
that say so, and the OpenAPI document stating it.

The enumeration tests walk each real API's OpenAPI document (the fog's and the chain's,
real nodes, tokens from their data dirs) and call every operation without a token, with a
wrong one, with the auditor's and with the operator's: a route added later is called here
too, and must answer as the tier it states.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.service.api import AggregatorAPI
from aggregator.chain.service.node import ensure_tokens, init_data_dir, open_ledger
from aggregator.dispatch.suggestions import open_dispatcher
from fog_node.api import FogAPI
from meterledger.errors import ConfigError
from meterledger.infra import http as H
from meterledger.infra import http_auth as A
from tests.fog_node.test_api import METER, Clock, chain, make_node

Answer = tuple[int, dict[str, str], bytes]


def call(port: int, method: str, path: str, token: str | None = None,
         scheme: str = "Bearer") -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


# -- the mechanics, on a small service ---------------------------------------------------------
AUDIT, OPER = "a" * 20, "o" * 20


def hello(req: H.Request) -> dict[str, Any]:
    """Says hello."""
    return {"hello": True}


@dataclass
class Small:
    service: H.HTTPService
    port: int
    files: Path


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Small]:
    (tmp_path / "auditor.token").write_text(AUDIT + "\n")
    (tmp_path / "operator.token").write_text(OPER + "\n")
    for f in tmp_path.iterdir():
        f.chmod(0o600)
    R = H.Route
    service = H.HTTPService("small", [R("/pub", hello, tier=H.PUBLIC),
                                      R("/aud", hello, tier=H.AUDITOR),
                                      R("/op", hello, ("POST",), tier=H.OPERATOR)],
                            tokens=H.Tokens({H.AUDITOR: tmp_path / "auditor.token",
                                             H.OPERATOR: tmp_path / "operator.token"}))
    port = service.start()
    yield Small(service, port, tmp_path)
    service.stop()


def test_each_tier_answers_its_token_and_the_ones_above(small: Small) -> None:
    p = small.port
    expect = {  # (path, method) -> status with no token, the auditor's, the operator's
        ("/pub", "GET"): (200, 200, 200),
        ("/aud", "GET"): (401, 200, 200),
        ("/op", "POST"): (401, 403, 200),
    }
    for (path, method), statuses in expect.items():
        got = tuple(call(p, method, path, t)[0] for t in (None, AUDIT, OPER))
        assert got == statuses, path
    status, headers, body = call(p, "GET", "/aud")
    assert headers["www-authenticate"] == 'Bearer realm="small"'
    assert json.loads(body) == {"error": "unauthorized", "detail": "this endpoint needs the "
                                "auditor token (Authorization: Bearer TOKEN): no token given"}
    status, headers, body = call(p, "GET", "/aud", "b" * 20)  # a token nobody has
    assert (status, headers["www-authenticate"]) == (
        401, 'Bearer realm="small", error="invalid_token"')
    status, headers, body = call(p, "POST", "/op", AUDIT)
    assert (status, headers["www-authenticate"], json.loads(body)["error"]) == (
        403, 'Bearer realm="small", error="insufficient_scope"', "forbidden")
    # the scheme in any case; another scheme, or a prefix of the token, is no token
    assert call(p, "GET", "/aud", AUDIT, scheme="bearer")[0] == 200
    assert call(p, "GET", "/aud", AUDIT, scheme="Basic")[0] == 401
    assert call(p, "GET", "/aud", AUDIT[:-1])[0] == 401
    assert call(p, "GET", "/aud", AUDIT + "x")[0] == 401


def test_replacing_a_token_file_rotates_it_and_removing_it_locks_the_tier(small: Small) -> None:
    p, f = small.port, small.files / "auditor.token"
    new = "n" * 32
    tmp = f.with_suffix(".new")
    tmp.write_text(new + "\n")
    tmp.chmod(0o600)
    os.replace(tmp, f)  # how an operator rotates it: no restart
    assert (call(p, "GET", "/aud", AUDIT)[0], call(p, "GET", "/aud", new)[0]) == (401, 200)
    f.unlink()  # revoked: nobody below the operator gets in
    assert (call(p, "GET", "/aud", new)[0], call(p, "GET", "/aud", OPER)[0]) == (401, 200)
    f.write_text(AUDIT + "\n")  # back, but readable by everyone: refused (fail closed)
    f.chmod(0o644)
    assert call(p, "GET", "/aud", AUDIT)[0] == 401
    f.chmod(0o600)
    assert call(p, "GET", "/aud", AUDIT)[0] == 200
    f.write_text("short\n")  # too short to be a token
    later = time.time_ns() + 10**9  # a new mtime even on a coarse clock
    os.utime(f, ns=(later, later))
    assert call(p, "GET", "/aud", "short")[0] == 401


def test_a_service_refuses_what_would_leave_a_tier_open(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="GET /x declares no tier"):
        H.HTTPService("s", [H.Route("/x", hello)])
    with pytest.raises(ConfigError, match="fewer than 16"):
        H.Tokens({H.AUDITOR: "short"})
    f = tmp_path / "auditor.token"
    f.write_text(AUDIT)
    f.chmod(0o640)
    service = H.HTTPService("s", [H.Route("/x", hello, tier=H.AUDITOR)],
                            tokens=H.Tokens({H.AUDITOR: f}))
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0640\); chmod 600"):
        service.start()
    assert not service.serving
    f.unlink()
    with pytest.raises(ConfigError, match="no auditor token at"):
        service.start()


def test_the_openapi_document_states_each_tier(small: Small) -> None:
    doc = json.loads(call(small.port, "GET", "/openapi.json")[2])
    ops = {(path, m): op for path, methods in doc["paths"].items() for m, op in methods.items()}
    assert {k: op["x-tier"] for k, op in ops.items()} == {
        ("/pub", "get"): "public", ("/aud", "get"): "auditor", ("/op", "post"): "operator",
        ("/openapi.json", "get"): "public"}
    assert ops[("/pub", "get")]["security"] == []
    assert ops[("/aud", "get")]["security"] == [{"auditor": []}, {"operator": []}]
    assert ops[("/op", "post")]["security"] == [{"operator": []}]
    assert set(ops[("/aud", "get")]["responses"]) == {"200", "401", "403", "default"}
    assert "401" not in ops[("/pub", "get")]["responses"]
    assert doc["components"]["securitySchemes"] == {
        t: {"type": "http", "scheme": "bearer", "description": f"the {t} tier's token; a "
            "higher tier's token also passes"} for t in ("auditor", "operator")}


def test_tokens_are_compared_whole_and_every_tier_is_compared() -> None:
    tokens = A.Tokens({A.AUDITOR: AUDIT, A.OPERATOR: OPER})
    assert [tokens.tier_of(t) for t in (AUDIT, OPER, AUDIT[:-1], "", OPER.upper())] == [
        A.AUDITOR, A.OPERATOR, None, None, None]
    same = A.Tokens({A.AUDITOR: AUDIT, A.OPERATOR: AUDIT})  # one token for both: the higher
    assert same.tier_of(AUDIT) is A.OPERATOR
    assert A.bearer({"authorization": "  Bearer   tok  "}) == "tok"
    assert [A.bearer(h) for h in ({}, {"authorization": "Bearer"}, {"authorization": "x y"})] \
        == [None, None, None]


# -- every endpoint of both real APIs -------------------------------------------------------------
SAMPLES = {"index": "0", "height": "0", "digest": "00" * 32, "id": "ab" * 32,
           "action": "dismiss", "cid": "pv-1/0-1000000", "owner": "00" * 8,
           "gid": "pv-1", "subject": "issue/pv-1/0-1000000", "pid": "00" * 8, "cycle": "900",
           "n": "0", "name": "residential", "account": "00" * 8, "meter": "00" * 8,
           "dev": "00" * 8, "customer": "00" * 8, "fog": "00" * 8, "event": "00" * 8}


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], template)


def operations(port: int) -> list[tuple[str, str, str]]:
    """(method, path, tier) of every operation in the API's OpenAPI document."""
    doc = json.loads(call(port, "GET", "/openapi.json")[2])
    out = []
    for template, methods in doc["paths"].items():
        for method, op in methods.items():
            tier = op["x-tier"]
            assert tier in ("public", "auditor", "operator"), (template, method)
            want: list[dict[str, list[str]]] = [] if tier == "public" else [
                {t: []} for t in ("auditor", "operator")[("auditor", "operator").index(tier):]]
            assert op["security"] == want, (template, method)
            out.append((method.upper(), concrete(template), tier))
    return out


def check_every_operation(port: int, auditor: str, operator: str) -> dict[str, str]:
    """Call every operation without a token, with a wrong one, the auditor's and the
    operator's, and check each answer against the tier; returns {"METHOD path": tier}."""
    seen = {}
    for method, path, tier in operations(port):
        what = f"{method} {path}"
        status, headers, _ = call(port, method, path)
        if tier == "public":
            assert status not in (401, 403), what
        else:
            assert status == 401 and headers["www-authenticate"].startswith("Bearer "), what
            assert call(port, method, path, "w" * 64)[0] == 401, what
        status = call(port, method, path, auditor)[0]
        assert status == 403 if tier == "operator" else status not in (401, 403), what
        assert call(port, method, path, operator)[0] not in (401, 403), what
        seen[what] = tier
    return seen


def test_every_fog_endpoint_answers_its_tier(tmp_path: Path) -> None:
    clock = Clock()
    node = make_node(tmp_path / "fog", clock)
    node.ingest.decide(METER.public_key.raw, "active", "test")
    node.ingest.process(chain(METER, 2))
    assert node.checkpoints.seal(int(clock())) is not None
    api = FogAPI(node)
    port = api.start()
    d = tmp_path / "fog"
    try:
        seen = check_every_operation(port, (d / "auditor.token").read_text().strip(),
                                     (d / "operator.token").read_text().strip())
    finally:
        api.stop()
        node.close()
    assert seen == {  # the table of docs/PROTOCOL.md section 12
        "GET /v1/checkpoint": "public", "GET /v1/proof/inclusion": "auditor",
        "GET /v1/proof/entry": "auditor",
        "GET /v1/proof/consistency": "public", "GET /v1/proof/enrollment": "public",
        "GET /v1/devices": "auditor", "GET /healthz": "public", "GET /v1/entries/0": "auditor",
        "GET /metrics": "auditor", "POST /v1/enroll": "operator", "POST /v1/revoke": "operator",
        "GET /v1/firmware": "operator", "POST /v1/firmware": "operator",  # section 22
        # the dashboard's reads (fog_node/dashboard.py): what names a household meter is
        # the auditor's; feeder aggregates and checkpoints leave the fog anyway
        "GET /v1/meters": "auditor", "GET /v1/rejections": "auditor",
        "GET /v1/feeders": "public", "GET /v1/alerts": "auditor", "GET /v1/vee": "auditor",
        "GET /v1/curve": "auditor", "GET /v1/checkpoints": "public", "GET /v1/bus": "auditor",
        "GET /v1/bundle": "auditor",
        "GET /openapi.json": "public"}
    assert not (d / "requests").exists()  # no call with a token below the operator's queued


def test_every_chain_endpoint_answers_its_tier(tmp_path: Path) -> None:
    d = tmp_path / "aggregator"
    key = init_data_dir(d, int(time.time()))
    assert (d / "auditor.token").stat().st_mode & 0o777 == 0o600
    ledger = open_ledger(d, time.time)
    dispatcher = open_dispatcher(ledger, key, d, time.time)
    api = AggregatorAPI(ledger, time.time, dispatcher, tokens=ensure_tokens(d))
    port = api.start()
    try:
        seen = check_every_operation(port, (d / "auditor.token").read_text().strip(),
                                     (d / "dispatch.token").read_text().strip())
        height = ledger.head().height
    finally:
        api.stop()
        dispatcher.store.close()
        ledger.close()
    assert seen == {  # the table of docs/PROTOCOL.md section 15
        "GET /v1/head": "public", "GET /v1/anchors": "public", "GET /v1/instructions": "public",
        "GET /v1/participants": "public", "GET /v1/aggregates": "public",
        "GET /v1/rules": "public", "GET /v1/suggestions": "public", "GET /healthz": "public",
        "GET /v1/blocks": "public", "GET /v1/fogs": "public", "GET /v1/dispatch": "public",
        "GET /v1/validators": "public", "GET /v1/latency": "public",
        "GET /v1/params": "public", "GET /v1/generators": "public",
        "GET /v1/certificates": "public", f"GET /v1/certificates/{SAMPLES['cid']}": "public",
        f"GET /v1/balances/{SAMPLES['owner']}": "public",
        f"GET /v1/carbon/accounts/{SAMPLES['owner']}": "public",
        f"GET /v1/carbon/generators/{SAMPLES['gid']}": "public",
        "GET /v1/carbon/restricted": "public",
        f"GET /v1/carbon/conversions/{SAMPLES['cid']}": "public",
        "GET /v1/notary/outbox": "public",
        f"GET /v1/notary/records/{SAMPLES['subject']}": "public",
        # the market (section 27): derived from the public blocks like the rest
        f"GET /v1/market/access/{SAMPLES['pid']}": "public",
        f"GET /v1/market/accounts/{SAMPLES['pid']}": "public",
        f"GET /v1/market/enrolments/{SAMPLES['pid']}": "public",
        f"GET /v1/market/deliveries/{SAMPLES['pid']}/{SAMPLES['cycle']}": "public",
        "GET /v1/market/network": "public", "GET /v1/market/floor": "public",
        f"GET /v1/market/cycles/{SAMPLES['cycle']}": "public",
        f"GET /v1/market/cycles/{SAMPLES['cycle']}/contracts": "public",
        f"GET /v1/market/cycles/{SAMPLES['cycle']}/contracts/{SAMPLES['n']}": "public",
        f"GET /v1/market/cycles/{SAMPLES['cycle']}/book": "public",
        f"GET /v1/market/cycles/{SAMPLES['cycle']}/commitments": "public",
        # tariffs and bill receipts (section 28): totals only, derived from the blocks
        "GET /v1/billing/tariffs/residential": "public",
        f"GET /v1/billing/receipts/{SAMPLES['account']}": "public",
        # closed outage records (section 28): which meters lost supply when, for compensation
        f"GET /v1/billing/outages/{SAMPLES['meter']}": "public",
        f"GET /v1/billing/credits/{SAMPLES['meter']}": "public",
        f"GET /v1/billing/redemptions/{SAMPLES['account']}": "public",
        # a device's traceability timeline (section 29): every record is a public tx
        f"GET /v1/devices/{SAMPLES['dev']}/timeline": "public",
        # home demand response (section 30): contracts, events and per-meter event totals
        f"GET /v1/dr/contracts/{SAMPLES['customer']}": "public",
        f"GET /v1/dr/fogs/{SAMPLES['fog']}/contracts": "public",
        "GET /v1/dr/events": "public",
        f"GET /v1/dr/reports/{SAMPLES['event']}": "public",
        f"GET /v1/blocks/{SAMPLES['height']}": "public",
        f"GET /v1/tx/{SAMPLES['digest']}": "public", "GET /metrics": "auditor",
        "POST /v1/tx": "public", f"POST /v1/suggestions/{SAMPLES['id']}/dismiss": "operator",
        "GET /openapi.json": "public"}
    assert height == 0  # nothing was submitted on the way
