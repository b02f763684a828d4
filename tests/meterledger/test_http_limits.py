"""What one client may cost a service (meterledger.infra.http_transport.Limits), and TLS,
proved over real sockets on loopback.

No sleep is a margin here: a test configures a short limit, then waits for the server to
act (close the socket, drop the count of open connections) and checks what it did. The
only waits are the clients' own pace (a trickle) and deadlines that fail a test.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import select
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fog_node.api import FogAPI
from fog_node.config import load_config
from meterledger.clients.chain import ChainClient, ChainUnavailable
from meterledger.errors import ConfigError
from meterledger.infra import http as H
from meterledger.infra import pki
from tests.fog_node.test_api import METER, Clock, chain, make_node
from tests.kit.fogkit import wait


class App:
    def __init__(self) -> None:
        self.release = threading.Event()

    def pub(self, req: H.Request) -> dict[str, Any]:
        """A small answer."""
        return {"ok": True}

    def echo(self, req: H.Request) -> dict[str, Any]:
        """The body's length."""
        return {"size": len(req.body)}

    def slow(self, req: H.Request) -> dict[str, Any]:
        """Waits until the test lets it answer."""
        self.release.wait(30)
        return {"slow": True}

    def big(self, req: H.Request) -> H.Reply:
        """Sixteen megabytes."""
        return H.Reply(b"x" * (16 << 20), content_type="application/octet-stream")


Serve = Callable[..., tuple[H.HTTPService, int]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """serve(limits, tls=None) -> (service, port) of the App's routes; stopped after."""
    app = App()
    started: list[H.HTTPService] = []

    def start(limits: H.Limits, tls: H.TLS | None = None) -> tuple[H.HTTPService, int]:
        R, P = H.Route, H.PUBLIC
        service = H.HTTPService("limits", [
            R("/pub", app.pub, tier=P), R("/echo", app.echo, ("POST",), body=True, tier=P),
            R("/slow", app.slow, tier=P), R("/big", app.big, tier=P)], limits=limits, tls=tls)
        started.append(service)
        return service, service.start()

    start.app = app  # type: ignore[attr-defined]
    yield start
    app.release.set()
    for s in started:
        s.stop()


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (the socket's timeout fails the test)."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def status_and_body(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


# -- sizes --------------------------------------------------------------------------------------
def test_a_head_or_a_body_over_its_cap_is_refused(serve: Serve) -> None:
    _, port = serve(H.Limits(max_head=2048, max_body=1024))
    with connect(port) as s:
        s.sendall(b"GET /pub HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
        assert status_and_body(read_all(s)) == (431, {
            "error": "bad_request", "detail": "the request head is longer than 2048 bytes"})
    with connect(port) as s:
        s.sendall(b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_and_body(read_all(s))[0] == 414
    with connect(port) as s:  # under the cap: answered
        s.sendall(b"GET /pub HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1800 + b"\r\n"
                  b"Connection: close\r\n\r\n")
        assert status_and_body(read_all(s)) == (200, {"ok": True})
    with connect(port) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n")
        assert status_and_body(read_all(s))[1]["error"] == "too_large"


# -- time ----------------------------------------------------------------------------------------
def test_a_client_trickling_its_request_is_answered_408_and_closed(serve: Serve) -> None:
    service, port = serve(H.Limits(request_timeout_s=0.3))
    head = b"GET /pub HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"s" * 200 + b"\r\n\r\n"
    sent = [0]
    s = connect(port)
    answered = threading.Event()

    def trickle() -> None:  # a byte every 20 ms: each byte alone is in time, the request not
        try:
            for i in range(len(head)):
                s.send(head[i:i + 1])
                sent[0] += 1
                if answered.wait(0.02):  # paced, and done as soon as the server answered
                    return
        except OSError:  # the server closed: what the test waits for
            pass

    t = threading.Thread(target=trickle)
    t.start()
    answer = read_all(s)
    answered.set()
    t.join(30)
    s.close()
    assert status_and_body(answer) == (408, {
        "error": "request_timeout", "detail": "the request did not arrive whole within 0.3 s"})
    assert sent[0] < len(head)  # cut off while it still trickled
    wait(lambda: service.connections[0] == 0, what="the server let the socket go")


def test_a_connection_that_sends_nothing_is_closed(serve: Serve) -> None:
    service, port = serve(H.Limits(request_timeout_s=0.3))
    with connect(port) as s:
        assert read_all(s) == b""  # closed by the server, without an answer
    with connect(port) as s:  # and a body that stops coming: 408 too
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        assert status_and_body(read_all(s))[0] == 408
    with connect(port) as s:  # a kept-alive connection: idle, then half a request
        s.sendall(b"GET /pub HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}\n"):  # the whole first answer
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /pub HT")
        assert status_and_body(read_all(s))[0] == 408
    wait(lambda: service.connections[0] == 0, what="the server let the sockets go")


def test_an_idle_kept_alive_connection_is_closed(serve: Serve) -> None:
    _, port = serve(H.Limits(idle_timeout_s=0.2, request_timeout_s=30))
    with connect(port) as s:
        s.sendall(b"GET /pub HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 200 ")  # the answer, then the close


def test_a_client_that_stops_reading_its_answer_is_dropped(serve: Serve) -> None:
    service, port = serve(H.Limits(request_timeout_s=0.3))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    wait(lambda: service.connections == (0, 1), what="the server dropped the stalled reader")
    got = read_all(s)  # what had reached our buffers, then the end
    s.close()
    assert got.startswith(b"HTTP/1.1 200 ") and len(got) < 16 << 20


def test_a_handler_over_its_time_is_answered_503_and_the_service_goes_on(serve: Serve) -> None:
    _, port = serve(H.Limits(handler_timeout_s=0.3))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/slow")
    r = conn.getresponse()
    assert (r.status, r.getheader("Retry-After"), json.loads(r.read())) == (503, "1", {
        "error": "timeout", "detail": "the answer took longer than 0.3 s; try again later"})
    conn.request("GET", "/pub")  # the same connection goes on
    assert json.loads(conn.getresponse().read()) == {"ok": True}
    conn.close()


# -- connections ---------------------------------------------------------------------------------
def test_the_connection_cap_is_a_cap_on_open_sockets(serve: Serve) -> None:
    service, port = serve(H.Limits(max_connections=3, request_timeout_s=30))
    holders = [connect(port) for _ in range(3)]  # they send nothing and hold their place
    wait(lambda: service.connections[0] == 3, what="three connections were accepted")
    waiting = [connect(port) for _ in range(5)]  # the kernel completes their connect ...
    for w in waiting:
        w.sendall(b"GET /pub HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    # ... but the server accepts none of them while three are open: nothing to read
    assert select.select(waiting, [], [], 0)[0] == []
    assert service.connections == (3, 3)
    for h in holders:
        h.close()
    answers = [read_all(w) for w in waiting]  # served as places free up
    for w in waiting:
        w.close()
    assert all(status_and_body(a) == (200, {"ok": True}) for a in answers)
    assert service.connections[1] == 3  # never more than three at once
    wait(lambda: service.connections[0] == 0, what="every socket was let go")


def test_slow_clients_holding_every_place_are_dropped_and_others_served(serve: Serve) -> None:
    service, port = serve(H.Limits(max_connections=2, request_timeout_s=0.3))
    holders = [connect(port) for _ in range(2)]
    for h in holders:
        h.sendall(b"GET /pub HT")  # half a request each, never finished
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/pub")  # waits for a place: the holders' time runs out first
    assert json.loads(conn.getresponse().read()) == {"ok": True}
    conn.close()
    assert [status_and_body(read_all(h))[0] for h in holders] == [408, 408]
    for h in holders:
        h.close()
    assert service.connections[1] == 2


# -- TLS ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = pki.new_ca("meterledger test CA")
    pki.save_cert(ca.cert, d / "ca.crt")
    pki.save(pki.issue_server(ca, ["127.0.0.1", "localhost"]), d / "server.crt",
             d / "server.key")
    other = pki.new_ca("someone else")
    pki.save_cert(other.cert, d / "other.crt")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key",
            "other": d / "other.crt"}


def test_tls_serves_https_verified_against_the_ca(serve: Serve, certs: dict[str, Path]) -> None:
    service, port = serve(H.Limits(request_timeout_s=0.3), H.TLS(certs["cert"], certs["key"]))
    assert service.scheme == "https"
    ctx = ssl.create_default_context(cafile=certs["ca"])
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/pub", context=ctx, timeout=30) as r:
        assert json.loads(r.read()) == {"ok": True}
    client = ChainClient(f"https://localhost:{port}", ca_file=certs["ca"])
    assert client.get("/pub") == {"ok": True}
    # a client that trusts another CA does not talk to it, nor does one that trusts no one
    for untrusted in (ChainClient(f"https://127.0.0.1:{port}", ca_file=certs["other"]),
                      ChainClient(f"https://127.0.0.1:{port}")):
        with pytest.raises(ChainUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.get("/pub")
    # plain HTTP to the TLS port gets no HTTP answer; a handshake never begun is cut off
    with connect(port) as s:
        s.sendall(b"GET /pub HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not read_all(s).startswith(b"HTTP/")
    with connect(port) as s:
        assert read_all(s) == b""
    wait(lambda: service.connections[0] == 0, what="the server let the sockets go")


def test_a_tls_peer_that_never_says_goodbye_does_not_hold_up_stop(
        serve: Serve, certs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    service, port = serve(H.Limits(), H.TLS(certs["cert"], certs["key"]))
    ctx = ssl.create_default_context(cafile=certs["ca"])
    idle = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    idle.request("GET", "/pub")
    assert json.loads(idle.getresponse().read()) == {"ok": True}
    # kept alive and never read again: it will not answer the server's close_notify; stop()
    # gives up on it after a second, within uvicorn's graceful time (else: an ERROR record)
    service.stop()
    idle.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_tls_settings_are_both_or_neither_and_checked_at_start(serve: Serve,
                                                                certs: dict[str, Path]) -> None:
    assert H.TLS.of("", "") is None
    with pytest.raises(ConfigError, match="both a certificate and a key"):
        H.TLS.of(str(certs["cert"]), "")
    service = H.HTTPService("bad-tls", [H.Route("/x", App().pub, tier=H.PUBLIC)],
                            tls=H.TLS(certs["cert"], certs["ca"]))  # a certificate as key
    with pytest.raises(ConfigError, match="TLS: cannot use certificate"):
        service.start()
    assert not service.serving


def test_the_fog_serves_its_settings(tmp_path: Path, certs: dict[str, Path]) -> None:
    toml = tmp_path / "fog.toml"
    toml.write_text(f'[fog]\ndata_dir = "{tmp_path / "fog"}"\nhttp_max_connections = 7\n'
                    f'http_request_timeout_s = 2.5\nhttp_tls_cert = "{certs["cert"]}"\n'
                    f'http_tls_key = "{certs["key"]}"\n')
    config = load_config(toml, {})
    clock = Clock()
    node = make_node(tmp_path / "fog", clock)
    node.config = replace(node.config, **{k: getattr(config, k) for k in (
        "http_max_connections", "http_request_timeout_s", "http_tls_cert", "http_tls_key")})
    node.ingest.decide(METER.public_key.raw, "active", "test")
    node.ingest.process(chain(METER, 1))
    assert node.checkpoints.seal(int(clock())) is not None
    api = FogAPI(node)
    port = api.start()
    try:
        assert (api.http.limits.max_connections, api.http.limits.request_timeout_s) == (7, 2.5)
        client = ChainClient(f"https://127.0.0.1:{port}", ca_file=certs["ca"])
        assert client.get("/healthz")["log_size"] == 2
    finally:
        api.stop()
        node.close()
    for bad, message in (("http_max_connections = 0", "outside [1, 65535]"),
                         ("http_request_timeout_s = 0.0", "outside [0.05, 600]")):
        toml.write_text(f"[fog]\n{bad}\n")
        with pytest.raises(ConfigError, match=rf"{bad.split()[0]}: .*{re.escape(message)}"):
            load_config(toml, {})
