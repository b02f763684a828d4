"""The shared HTTP layer (meterledger.infra.http) and the metrics layer over real sockets:
servers on 127.0.0.1 with ephemeral ports, clients on http.client and raw sockets, no mocks.

Two kinds of API: the fog's own (a real FogAPI over a real node; its envelope keeps the
message in `error`) and a small service in the aggregator's style (a code in `error`, the
message in `detail`; POST bodies, a bearer token, extra fields, a Prometheus answer).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from fog_node.api import FogAPI
from fog_node.node import FogNode
from meterledger.infra import http as H
from meterledger.infra import http_transport as T
from meterledger.infra import metrics as M
from tests.fog_node.test_api import METER, Clock, chain, make_node
from tests.kit import rawhttp

Answer = tuple[int, dict[str, str], bytes]


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def envelope(answer: Answer) -> tuple[int, Any]:
    status, headers, body = answer
    assert headers["content-type"] == "application/json", answer
    return status, json.loads(body)


def curl_post(port: int, path: str) -> Answer:
    """What `curl -X POST http://host/path` sends: no body, no Content-Length."""
    return rawhttp.curl_post("127.0.0.1", port, path)


def no_tracebacks(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    noisy = [r for r in caplog.records if r.exc_info or r.exc_text or r.levelno >= logging.ERROR]
    assert not noisy, [(r.name, r.getMessage()) for r in noisy]
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


# -- the fog's API -------------------------------------------------------------------------------
@pytest.fixture
def fog(tmp_path: Path) -> Iterator[tuple[FogNode, FogAPI, int]]:
    clock = Clock()
    node = make_node(tmp_path / "fog", clock)
    node.ingest.decide(METER.public_key.raw, "active", "test")
    node.ingest.process(chain(METER, 3))
    assert node.checkpoints.seal(int(clock())) is not None
    api = FogAPI(node)
    port = api.start("127.0.0.1", 0)
    yield node, api, port
    api.stop()
    node.close()


FOG_PATHS = ["/v1/checkpoint", "/v1/proof/inclusion", "/v1/proof/entry", "/v1/proof/consistency",
             "/v1/proof/enrollment", "/v1/devices", "/healthz", "/v1/entries/{index}",
             "/metrics", "/v1/enroll", "/v1/revoke", "/v1/firmware",
             # the dashboard's reads (fog_node/dashboard.py)
             "/v1/meters", "/v1/rejections", "/v1/feeders", "/v1/alerts", "/v1/vee",
             "/v1/curve", "/v1/checkpoints", "/v1/bus", "/v1/bundle", "/openapi.json"]


def test_curl_post_without_a_body_to_a_get_endpoint_is_a_405_naming_it(fog):
    _, _, port = fog
    for path in ("/v1/checkpoint", "/healthz", "/v1/entries/3"):
        status, headers, body = curl_post(port, path)
        assert (status, headers["allow"], headers["content-type"]) == (
            405, "GET, HEAD", "application/json")
        assert json.loads(body) == {
            "error": "method POST is not allowed: this endpoint is read-only (GET)",
            "detail": f"POST {path!r}: this endpoint answers GET, HEAD"}
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        status, doc = envelope(request(port, method, "/v1/devices"))
        assert (status, doc["detail"]) == (405, f"{method} '/v1/devices': this endpoint "
                                                "answers GET, HEAD")
    assert envelope(request(port, "GET", "/healthz"))[0] == 200


def test_an_unknown_path_is_a_404_in_the_envelope_whatever_the_method(fog):
    _, _, port = fog
    known = ", ".join(FOG_PATHS)
    for method in ("GET", "POST", "DELETE"):
        assert envelope(request(port, method, "/v2/nope")) == (
            404, {"error": f"no endpoint '/v2/nope'; the API has {known}"})
    status, _, body = curl_post(port, "/nope")
    assert (status, json.loads(body)) == (404, {"error": f"no endpoint '/nope'; the API has "
                                                         f"{known}"})


def test_a_client_that_hangs_up_leaves_no_traceback_and_the_server_answers_on(fog, caplog, capfd):
    _, _, port = fog
    caplog.set_level(logging.DEBUG)
    halves = [b"GET /healthz HTT", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ",
              b"POST /v1/checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab"]
    for half in halves:
        for reset in (False, True):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(half)
            if reset:  # abortive close: the server sees ECONNRESET, not a FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    # and one that asks, then leaves before reading the answer
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(0.3)  # let the server see the hang-ups
    assert envelope(request(port, "GET", "/healthz"))[1]["ok"] is True
    no_tracebacks(caplog, capfd)


def auditor(node: FogNode) -> dict[str, str]:
    """The Authorization header with the fog's auditor token (from its data dir)."""
    return {"Authorization": "Bearer " + (node.config.data_dir / "auditor.token").read_text()
            .strip()}


def test_paths_match_as_sent(fog):
    node, _, port = fog
    # percent-escapes are not decoded before routing, as http.server never did
    assert envelope(request(port, "GET", "/v1/entries/%31", headers=auditor(node))) == (400, {
        "error": "entry index must be a non-negative decimal integer, not '%31'"})
    assert envelope(request(port, "GET", "/v1/entries/1", headers=auditor(node)))[0] == 200
    assert envelope(request(port, "GET", "/v1/entries"))[0] == 404
    assert envelope(request(port, "GET", "/healthz/"))[0] == 404  # no redirect to /healthz


def test_openapi_lists_every_route_with_its_query_parameters(fog):
    _, api, port = fog
    status, doc = envelope(request(port, "GET", "/openapi.json"))
    assert status == 200 and doc["openapi"].startswith("3.")
    assert list(doc["paths"]) == FOG_PATHS
    assert {p: list(ops) for p, ops in doc["paths"].items()} == {
        p: ["post"] if p in ("/v1/enroll", "/v1/revoke") else ["get", "post"]
        if p == "/v1/firmware" else ["get"] for p in FOG_PATHS}
    inclusion = doc["paths"]["/v1/proof/inclusion"]["get"]
    assert inclusion["summary"] == ("Inclusion proof of a meter's reading against a signed "
                                    "checkpoint.")
    assert [(p["name"], p["in"], p["required"]) for p in inclusion["parameters"]] == [
        ("dev", "query", True), ("seq", "query", True), ("size", "query", False)]
    entries = doc["paths"]["/v1/entries/{index}"]["get"]
    assert [(p["name"], p["in"]) for p in entries["parameters"]] == [("index", "path")]
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == [M.CONTENT_TYPE]
    # a summary for every route, from the handler's docstring
    for route in api.http.routes:
        assert route.handler.__doc__, route.path
    assert all(op["summary"] for ops in doc["paths"].values() for op in ops.values())
    # the same document in process
    assert json.loads(api.handle("/openapi.json")[2]) == doc


def test_handle_answers_in_process_as_over_the_socket(fog):
    node, api, port = fog
    token = (node.config.data_dir / "auditor.token").read_text().strip()
    for target in ("/healthz", "/v1/checkpoint", "/v1/entries/1", "/nope", "/v1/devices?x=1"):
        for auth in (None, token):
            status, headers, body = request(port, "GET", target, headers={
                "Authorization": f"Bearer {auth}"} if auth else {})
            assert api.handle(target, auth) == (status, headers["content-type"], body), target
    assert api.handle("/v1/entries/1")[0] == 401 and api.handle("/v1/entries/1", token)[0] == 200


def test_each_api_has_its_own_metrics_registry(tmp_path):
    apis, nodes = [], []
    try:
        for n in (1, 3):
            clock = Clock()
            node = make_node(tmp_path / f"fog{n}", clock)
            node.ingest.decide(METER.public_key.raw, "active", "test")
            node.ingest.process(chain(METER, n))
            nodes.append(node)
            api = FogAPI(node)
            apis.append((api, api.start()))
        sizes = [M.parse_metrics(request(port, "GET", "/metrics", headers={
                     "Authorization": "Bearer " + (tmp_path / f"fog{n}" / "auditor.token")
                     .read_text().strip()})[2].decode())["meterledger_fog_log_size"]
                 for n, (_, port) in zip((1, 3), apis, strict=True)]
        assert sizes == [2, 4]
        # nothing went into prometheus_client's process-wide registry
        assert b"meterledger_fog" not in prometheus_client.generate_latest()
    finally:
        for api, _ in apis:
            api.stop()
        for node in nodes:
            node.close()


# -- a service in the aggregator's style ------------------------------------------------------
TOKEN = "s3cret-s3cret-s3cret"  # the operator's
AUDIT = "audit-audit-audit-audit"  # the auditor's
AUTH = {"Authorization": f"Bearer {AUDIT}"}


class Chainish:
    """Handlers like the aggregator's: POST bodies, a bearer token, extra error fields."""

    def __init__(self) -> None:
        self.refused: list[str] = []
        self.accepted = 0
        self.release = threading.Event()
        self.slow_started = threading.Event()  # a /slow handler is running
        self.registry = M.registry(self.families)

    def families(self) -> M.Families:
        f = M.Families("test_chain_")
        f.one("accepted_total", "counter", "Transactions accepted.", self.accepted)
        f.family("rejected_total", "counter", "Refusals by reason.",
                 [({"reason": r}, self.refused.count(r)) for r in sorted(set(self.refused))])
        f.one("height", "gauge", "Height of the newest block.", 7)
        return f

    def head(self, req: H.Request) -> dict[str, Any]:
        """The chain's head."""
        return {"height": 7}

    def submit(self, req: H.Request) -> dict[str, Any]:
        """Submit one transaction (the raw bytes)."""
        if not req.body:
            raise H.HTTPError(400, "bad_request", "an empty body is no transaction")
        if req.body == b"dup":
            raise H.HTTPError(409, "duplicate", digest="ab" * 32, height=3, index=0)
        self.accepted += 1
        return {"size": len(req.body)}

    def decide(self, req: H.Request) -> dict[str, Any]:
        """Approve or dismiss a suggestion (the layer checked the operator token)."""
        return {"id": req.params["sid"], "action": req.params["action"]}

    def metrics(self, req: H.Request) -> H.Reply:
        """Counters in the Prometheus text format."""
        return H.Reply(M.exposition(self.registry), content_type=M.CONTENT_TYPE)

    def slow(self, req: H.Request) -> dict[str, Any]:
        """Waits until the test lets it answer."""
        self.slow_started.set()
        assert self.release.wait(60)
        return {"slow": True}

    def big(self, req: H.Request) -> H.Reply:
        """Eight megabytes."""
        return H.Reply(b"x" * (8 << 20), content_type="application/octet-stream")

    def boom(self, req: H.Request) -> dict[str, Any]:
        """Always fails."""
        raise RuntimeError("disk on fire")


@dataclass
class Served:
    c: Chainish
    service: H.HTTPService
    port: int


@pytest.fixture
def chainish() -> Iterator[Served]:
    c = Chainish()
    R, P = H.Route, H.PUBLIC
    service = H.HTTPService(
        "chainish", [R("/v1/head", c.head, tier=P),
                     R("/v1/tx", c.submit, ("POST",), body=True, tier=P),
                     R("/v1/suggestions/{sid}/{action}", c.decide, ("POST",), tier=H.OPERATOR),
                     R("/metrics", c.metrics, content_type=M.CONTENT_TYPE, tier=H.AUDITOR),
                     R("/slow", c.slow, tier=P), R("/big", c.big, tier=P),
                     R("/boom", c.boom, tier=P)],
        tokens=H.Tokens({H.AUDITOR: AUDIT, H.OPERATOR: TOKEN}),
        limits=H.Limits(max_body=1024), on_refuse=c.refused.append)
    port = service.start("127.0.0.1", 0)
    yield Served(c, service, port)
    c.release.set()
    service.stop()


def test_the_default_envelope_has_a_code_and_a_detail(chainish):
    port = chainish.port
    status, headers, body = curl_post(port, "/v1/head")
    assert (status, headers["allow"], json.loads(body)) == (405, "GET, HEAD", {
        "error": "method_not_allowed",
        "detail": "method POST is not allowed on '/v1/head': it answers GET, HEAD"})
    assert envelope(request(port, "GET", "/v1/tx")) == (405, {
        "error": "method_not_allowed",
        "detail": "method GET is not allowed on '/v1/tx': it answers POST"})
    assert envelope(request(port, "GET", "/nope"))[1]["error"] == "not_found"
    assert envelope(request(port, "GET", "/v1/head?x=1")) == (400, {
        "error": "bad_request", "detail": "unknown parameter 'x': this endpoint takes no "
                                          "parameters"})


def test_post_bodies_tokens_and_extra_fields(chainish):
    port = chainish.port
    assert envelope(request(port, "POST", "/v1/tx", b"abc")) == (200, {"size": 3})
    # curl -X POST without a body reaches the handler with b"" (no 411 from the server)
    status, _, body = curl_post(port, "/v1/tx")
    assert (status, json.loads(body)) == (400, {"error": "bad_request",
                                                "detail": "an empty body is no transaction"})
    assert envelope(request(port, "POST", "/v1/tx", b"dup")) == (409, {
        "error": "duplicate", "digest": "ab" * 32, "height": 3, "index": 0})
    sid = "cd" * 32
    assert envelope(request(port, "POST", f"/v1/suggestions/{sid}/approve"))[0] == 401
    assert envelope(request(port, "POST", f"/v1/suggestions/{sid}/approve",
                            headers={"Authorization": f"Bearer {TOKEN}"})) == (
        200, {"id": sid, "action": "approve"})


def test_a_body_over_the_cap_is_refused_unread_and_counted(chainish):
    c, port = chainish.c, chainish.port
    status, headers, body = request(port, "POST", "/v1/tx", b"x" * 5000)
    assert (status, headers["connection"], json.loads(body)) == (413, "close", {
        "error": "too_large",
        "detail": "the request body is 5000 bytes, more than the 1024 bytes this API takes"})
    # chunked, so the size is only known while reading
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/tx", body=iter([b"y" * 800] * 3), encode_chunked=True)
    r = conn.getresponse()
    assert (r.status, json.loads(r.read())["error"]) == (413, "too_large")
    conn.close()
    assert c.refused == ["too_large", "too_large"]
    m = M.parse_metrics(request(port, "GET", "/metrics", headers=AUTH)[2].decode())
    assert m['test_chain_rejected_total{reason="too_large"}'] == 2
    assert envelope(request(port, "POST", "/v1/tx", b"x" * 1024)) == (200, {"size": 1024})


def test_an_unexpected_exception_is_logged_once_and_answered_500(chainish, caplog, capfd):
    port = chainish.port
    caplog.set_level(logging.DEBUG)
    status, _, body = request(port, "GET", "/boom")
    assert (status, json.loads(body)) == (500, {"error": "internal"})
    assert b"disk on fire" not in body and b"Traceback" not in body
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and "disk on fire" in (logged[0].exc_text or "")
    assert logged[0].name == "meterledger.infra.http"
    assert not [r for r in caplog.records if "Exception in ASGI" in r.getMessage()]
    assert "Traceback" not in capfd.readouterr().err
    assert envelope(request(port, "GET", "/v1/head")) == (200, {"height": 7})


def test_a_client_that_leaves_mid_answer_leaves_no_traceback(chainish, caplog, capfd):
    c, port = chainish.c, chainish.port
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.1 200 ")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    # one leaves while its handler still works; the answer then goes nowhere
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.slow_started.wait(60)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    c.release.set()
    # and ones that leave in the middle of a POST body the handler waits for
    for reset in (False, True):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /v1/tx HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        time.sleep(0.1)
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(0.3)
    assert c.accepted == 0
    assert envelope(request(port, "GET", "/v1/head")) == (200, {"height": 7})
    assert len(request(port, "GET", "/big")[2]) == 8 << 20
    no_tracebacks(caplog, capfd)


def test_keep_alive_and_prometheus_answers(chainish):
    port = chainish.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/v1/head")
    r = conn.getresponse()
    assert r.read() == b'{"height": 7}\n'
    sock = conn.sock
    conn.request("GET", "/metrics", headers=AUTH)
    r = conn.getresponse()
    text = r.read().decode()
    assert conn.sock is sock  # the same connection answered both
    conn.close()
    assert (r.status, r.getheader("Content-Type"), r.getheader("Cache-Control")) == (
        200, "text/plain; version=0.0.4; charset=utf-8", "no-store")
    assert text.splitlines() == [
        "# HELP test_chain_accepted_total Transactions accepted.",
        "# TYPE test_chain_accepted_total counter",
        "test_chain_accepted_total 0.0",
        "# HELP test_chain_rejected_total Refusals by reason.",
        "# TYPE test_chain_rejected_total counter",
        "# HELP test_chain_height Height of the newest block.",
        "# TYPE test_chain_height gauge",
        "test_chain_height 7.0"]


def test_start_stop_and_a_graceful_stop(chainish):
    c, service, port = chainish.c, chainish.service, chainish.port
    with pytest.raises(H.HTTPServiceError, match="already serving on port"):
        service.start()
    assert service.port == port != 0
    # a request in flight when stop() is called still gets its answer; an idle keep-alive
    # connection and one holding half a request do not keep stop() waiting
    got: list[Answer] = []
    t = threading.Thread(target=lambda: got.append(request(port, "GET", "/slow")))
    t.start()
    assert c.slow_started.wait(60)  # in flight: its handler runs
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/v1/head")
    assert idle.getresponse().read() == b'{"height": 7}\n'
    half = socket.create_connection(("127.0.0.1", port), timeout=10)
    half.sendall(b"GET /v1/head HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.2)
    threading.Timer(0.3, c.release.set).start()
    service.stop()
    t.join(60)
    assert got and envelope(got[0]) == (200, {"slow": True})
    assert half.recv(100) == b""  # closed by the server
    half.close()
    idle.close()
    service.stop()  # idempotent
    with pytest.raises(H.HTTPServiceError, match="not serving"):
        assert service.port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # and it starts again
    port2 = service.start()
    assert envelope(request(port2, "GET", "/v1/head")) == (200, {"height": 7})


def test_the_listening_socket_says_tcp():
    # asyncio turns Nagle off only on connections whose socket says IPPROTO_TCP; without it
    # every kept-alive answer waits for the client's delayed ACK (a 40 ms stall, not a fail)
    for host in ("127.0.0.1", "localhost"):
        sock = T.listen(host, 0)
        try:
            assert (sock.family, sock.proto) == (socket.AF_INET, socket.IPPROTO_TCP)
        finally:
            sock.close()


def test_openapi_of_the_default_service(chainish):
    port = chainish.port
    doc = envelope(request(port, "GET", "/openapi.json"))[1]
    ops = {(path, m) for path, methods in doc["paths"].items() for m in methods}
    assert ops == {("/v1/head", "get"), ("/v1/tx", "post"),
                   ("/v1/suggestions/{sid}/{action}", "post"), ("/metrics", "get"),
                   ("/slow", "get"), ("/big", "get"), ("/boom", "get"),
                   ("/openapi.json", "get")}
    assert doc["paths"]["/v1/tx"]["post"]["summary"] == "Submit one transaction (the raw bytes)."
    assert "requestBody" in doc["paths"]["/v1/tx"]["post"]
    decide = doc["paths"]["/v1/suggestions/{sid}/{action}"]["post"]["parameters"]
    assert [(p["name"], p["in"]) for p in decide] == [("sid", "path"), ("action", "path")]


# -- metrics -----------------------------------------------------------------------------------------
def test_families_keep_the_names_they_are_given():
    f = M.Families("x_")
    f.one("events_total", "counter", "Events.", 3)
    f.one("events", "gauge", "Events now.", 1)  # beside a counter of the same stem
    text = M.render(f)
    assert text == ("# HELP x_events_total Events.\n# TYPE x_events_total counter\n"
                    "x_events_total 3.0\n# HELP x_events Events now.\n"
                    "# TYPE x_events gauge\nx_events 1.0\n")
    assert "_created" not in text
    with pytest.raises(M.MetricsError, match="must end in _total"):
        M.Families("x_").one("events", "counter", "Events.", 1)
    with pytest.raises(M.MetricsError, match="kind 'summary'"):
        M.Families("x_").one("t", "summary", "T.", 1)
