"""The aggregator's HTTP JSON API (docs/PROTOCOL.md section 15); bytes are lowercase hex.

POST /v1/tx takes one transaction (the raw COSE_Sign1 bytes) and answers once the block
holding it is sealed: 200 {digest, height, index}; a refusal is 400 {error: reason, detail};
the same bytes already on the chain are 409 {error: "duplicate", digest, height, index};
503 {error: "unavailable", detail} while the ledger cannot seal. POST
/v1/suggestions/{id}/approve and /dismiss need `Authorization: Bearer TOKEN` (the data dir's
dispatch.token; 401 unauthorized without it). GET endpoints answer 400
for bad input (unknown query parameters included) and 404 for what the chain does not hold,
as {error: "bad_request" | "not_found", detail}. Nothing a client sends produces a 500; an
unexpected exception is logged and answered 500 {error: "internal"}.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aggregator.chain.ledger import (
    INT64_MAX,
    AggregatorError,
    ChainError,
    DuplicateError,
    Ledger,
    NotFoundError,
    Receipt,
    StorageError,
    UnavailableError,
)
from aggregator.chain.service.metrics import render
from aggregator.dispatch.suggestions import STATES, Dispatcher, SuggestionStateError
from meterledger import wire as P

log = logging.getLogger(__name__)

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
MAX_BODY = 64 * 1024  # read and refuse (too_large) up to this; beyond, refuse unread
_DIGITS = re.compile(r"[0-9]{1,30}")
_HEX16 = re.compile(r"[0-9a-fA-F]{16}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_BLOCKS, _TXS, _SUGGESTIONS = "/v1/blocks/", "/v1/tx/", "/v1/suggestions/"
_DECISION = re.compile(r"/v1/suggestions/([0-9a-f]{64})/(approve|dismiss)")

Answer = tuple[int, str, bytes]


class APIError(AggregatorError):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _bad(detail: str) -> APIError:
    return APIError(400, "bad_request", detail)


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _json(status: int, body: dict[str, Any]) -> Answer:
    return status, JSON, json.dumps(body).encode() + b"\n"


def _receipt(r: Receipt) -> dict[str, Any]:
    return {"digest": r.digest.hex(), "height": r.height, "index": r.index}


class _Query:
    """One request's query string: each parameter at most once, none unknown."""

    def __init__(self, query: str, allowed: tuple[str, ...]) -> None:
        self.values: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in allowed:
                takes = f"takes {', '.join(allowed)}" if allowed else "takes no parameters"
                raise _bad(f"unknown parameter {_show(name)}: this endpoint {takes}")
            if name in self.values:
                raise _bad(f"parameter {name} is given more than once")
            self.values[name] = value

    def fog(self) -> bytes:
        text = self.values.get("fog")
        if text is None:
            raise _bad("missing parameter fog (the fog's id, 16 hex characters)")
        if not _HEX16.fullmatch(text):
            raise _bad(f"fog must be 16 hex characters, not {_show(text)}")
        return bytes.fromhex(text)

    def optional_uint(self, name: str) -> int | None:
        text = self.values.get(name)
        if text is None:
            return None
        if not _DIGITS.fullmatch(text):
            raise _bad(f"{name} must be a non-negative decimal integer, not {_show(text)}")
        return int(text)

    def after(self) -> int:
        after = self.optional_uint("after")
        return -1 if after is None else min(after, INT64_MAX)


class AggregatorAPI:
    """The API of a ledger; with a dispatcher and its token also the suggestions."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float],
                 dispatcher: Dispatcher | None = None, token: str | None = None) -> None:
        self.ledger = ledger
        self.clock = clock
        self.dispatcher = dispatcher
        self.token = token
        self.refused: dict[str, int] = {}  # POSTs refused before reaching the ledger
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[str, tuple[Callable[[_Query], dict[str, Any]], tuple[str, ...]]] = {
            "/v1/head": (self._head, ()),
            "/v1/anchors": (self._anchors, ("fog",)),
            "/v1/instructions": (self._instructions, ("fog", "after")),
            "/v1/participants": (self._participants, ()),
            "/v1/aggregates": (self._aggregates, ("fog", "feeder", "after")),
            "/v1/rules": (self._rules, ()),
            "/v1/suggestions": (self._suggestions, ("state",)),
            "/healthz": (self._health, ()),
        }

    # -- serving -------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve in a daemon thread; port 0 picks a free one. Returns the bound port."""
        if self._server is not None:
            raise AggregatorError(f"the API is already serving on port {self.port}")
        server = ThreadingHTTPServer((host, port), _handler_class(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.1,),
                                        name="aggregator-api", daemon=True)
        self._thread.start()
        return self.port

    @property
    def port(self) -> int:
        if self._server is None:
            raise AggregatorError("the API is not serving")
        port: int = self._server.server_address[1]
        return port

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def refuse(self, reason: str) -> None:
        with self._lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1

    # -- requests --------------------------------------------------------------------------------
    def get(self, target: str) -> Answer:
        """(status, content type, body) of GET `target` (path and query)."""
        return self._guard(f"GET {target[:200]!r}", lambda: self._get(target))

    def post(self, target: str, body: bytes, auth: str | None = None) -> Answer:
        """POST `target`; `auth` is the Authorization header, if any."""
        return self._guard(f"POST {target[:200]!r}", lambda: self._post(target, body, auth))

    def _guard(self, what: str, fn: Callable[[], Answer]) -> Answer:
        try:
            return fn()
        except APIError as e:
            return _json(e.status, {"error": e.code, "detail": e.detail})
        except NotFoundError as e:
            return _json(404, {"error": "not_found", "detail": str(e)})
        except SuggestionStateError as e:
            return _json(409, {"error": "not_open", "detail": str(e)})
        except (UnavailableError, StorageError) as e:
            return _json(503, {"error": "unavailable", "detail": str(e)})
        except Exception:
            log.exception("aggregator API: unexpected error answering %s", what)
            return _json(500, {"error": "internal"})

    def _url(self, target: str) -> tuple[str, str]:
        try:
            url = urlsplit(target)
        except ValueError as e:
            raise _bad(f"cannot parse the request target {_show(target)}: {e}") from None
        return url.path, url.query

    def _get(self, target: str) -> Answer:
        path, query = self._url(target)
        if path == "/metrics":
            _Query(query, ())
            return 200, PROMETHEUS, render(self.ledger, self.refused).encode()
        if path.startswith(_BLOCKS):
            _Query(query, ())
            return _json(200, self._block(path[len(_BLOCKS):]))
        if path.startswith(_TXS):
            _Query(query, ())
            return _json(200, self._tx(path[len(_TXS):]))
        route = self._routes.get(path)
        if route is None:
            if path == "/v1/tx":
                raise APIError(405, "method_not_allowed", "/v1/tx takes POST (a transaction); "
                                                          "GET /v1/tx/{digest} reads one")
            known = ", ".join([*self._routes, _BLOCKS + "{height}", _TXS + "{digest}",
                               "/metrics"])
            raise APIError(404, "not_found", f"no endpoint {_show(path)}; the API has {known}")
        handler, allowed = route
        return _json(200, handler(_Query(query, allowed)))

    def _post(self, target: str, body: bytes, auth: str | None) -> Answer:
        path, query = self._url(target)
        decision = _DECISION.fullmatch(path)
        if decision is not None:
            _Query(query, ())
            return self._decide(decision.group(1), decision.group(2), auth)
        if path != "/v1/tx":
            readable = (path in self._routes or path == "/metrics"
                        or path.startswith((_BLOCKS, _TXS)))
            raise APIError(405 if readable else 404,
                           "method_not_allowed" if readable else "not_found",
                           f"POST goes to /v1/tx or {_SUGGESTIONS}{{id}}/approve|dismiss, "
                           f"not {_show(path)}")
        _Query(query, ())
        try:
            r = self.ledger.submit(body)
        except DuplicateError as e:
            return _json(409, {"error": "duplicate", **_receipt(e.receipt)})
        except ChainError as e:
            return _json(400, {"error": e.reason, "detail": e.detail})
        return _json(200, _receipt(r))

    def _decide(self, sid: str, action: str, auth: str | None) -> Answer:
        d = self._dispatch()
        given = (auth or "").removeprefix("Bearer ").strip()
        if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
            return _json(401, {"error": "unauthorized", "detail": "approve and dismiss need "
                               "Authorization: Bearer with the data dir's dispatch.token"})
        if action == "dismiss":
            return _json(200, d.dismiss(sid).as_json())
        d.refresh()
        try:
            r = d.approve(sid)
        except ChainError as e:
            return _json(400, {"error": e.reason, "detail": e.detail})
        return _json(200, {"instruction": r.digest.hex(), "height": r.height, "index": r.index})

    def _dispatch(self) -> Dispatcher:
        if self.dispatcher is None:
            raise APIError(404, "not_found", "this node serves no suggestions")
        return self.dispatcher

    # -- endpoints ---------------------------------------------------------------------------------
    def _head(self, q: _Query) -> dict[str, Any]:
        h = self.ledger.head()
        return {"height": h.height, "hash": h.hash.hex(), "header": h.header.hex(),
                "chain": h.chain.hex(), "sealer_pub": h.sealer_pub.hex(),
                "state_root": h.state_root.hex()}

    def _block(self, text: str) -> dict[str, Any]:
        if not _DIGITS.fullmatch(text):
            raise _bad(f"block height must be a non-negative decimal integer, not {_show(text)}")
        height = int(text)
        if height > INT64_MAX:
            raise NotFoundError(f"no block {height}")
        b = self.ledger.block(height)
        return {"height": b.height, "hash": b.hash.hex(), "header": b.header.hex(),
                "txs": [t.hex() for t in b.txs]}

    def _tx(self, text: str) -> dict[str, Any]:
        if not _HEX64.fullmatch(text):
            raise _bad(f"a transaction digest is 64 hex characters, not {_show(text)}")
        t = self.ledger.tx(bytes.fromhex(text))
        return {"digest": t.digest.hex(), "height": t.height, "index": t.index,
                "tx": t.tx.hex(), "path": [p.hex() for p in t.path], "header": t.header.hex()}

    def _anchors(self, q: _Query) -> dict[str, Any]:
        fog = q.fog()
        return {"fog": fog.hex(), "anchors": [
            {"height": a.height, "index": a.index, "digest": a.digest.hex(), "first": a.first,
             "last": a.last, "size": a.size, "root": a.root.hex()}
            for a in self.ledger.anchors(fog)]}

    def _instructions(self, q: _Query) -> dict[str, Any]:
        fog = q.fog()
        return {"instructions": [
            {"height": i.height, "index": i.index, "digest": i.digest.hex(), "tx": i.tx.hex()}
            for i in self.ledger.instructions(fog, q.after())]}

    def _aggregates(self, q: _Query) -> dict[str, Any]:
        fog = q.fog()
        feeder = q.values.get("feeder")
        if feeder is not None and not feeder:
            raise _bad("feeder must not be empty")
        return {"aggregates": [
            {"height": a.height, "index": a.index, "digest": a.digest.hex(), "fog": a.fog.hex(),
             "feeder": a.feeder, "ivl": a.ivl, "rev": a.rev, "msg": a.msg.hex()}
            for a in self.ledger.aggregates(fog, feeder, q.after())]}

    def _rules(self, q: _Query) -> dict[str, Any]:
        return {"rules": [
            {"name": r.name, "version": r.version, "digest": r.digest.hex(),
             "height": r.height, "index": r.index, "text": r.text}
            for r in self.ledger.rules()]}

    def _suggestions(self, q: _Query) -> dict[str, Any]:
        state = q.values.get("state")
        if state is not None and state not in STATES:
            raise _bad(f"state must be one of {', '.join(STATES)}, not {_show(state)}")
        return {"suggestions": [s.as_json() for s in self._dispatch().suggestions(state)]}

    def _participants(self, q: _Query) -> dict[str, Any]:
        return {"participants": [
            {"id": p.id.hex(), "role": p.role, "pub": p.pub.hex(), "name": p.name,
             "nonce": p.nonce} for p in self.ledger.participants()]}

    def _health(self, q: _Query) -> dict[str, Any]:
        h = self.ledger.head()
        return {"ok": True, "chain": h.chain.hex(), "height": h.height,
                "pending": self.ledger.stats().pending}


# long: the HTTP handler class and its methods in one place
def _handler_class(api: AggregatorAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "MeterLedgerAggregator/1"
        protocol_version = "HTTP/1.1"
        timeout = 30

        def do_GET(self) -> None:
            self._send(*api.get(self.path))

        def do_HEAD(self) -> None:
            self._send(*api.get(self.path), with_body=False)

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding") or length is None:
                self.close_connection = True
                api.refuse("length_required")
                self._send(*_json(411, {"error": "length_required", "detail":
                                        "POST /v1/tx needs a Content-Length (no chunked body)"}))
                return
            if not _DIGITS.fullmatch(length.strip()):
                self.close_connection = True
                self._send(*_json(400, {"error": "bad_request",
                                        "detail": f"Content-Length {_show(length)} is not a number"}))
                return
            n = int(length)
            if n > MAX_BODY:  # not read: refuse and drop the connection
                self.close_connection = True
                api.refuse("too_large")
                self._send(*_json(400, {"error": "too_large", "detail":
                                        f"message is {n} bytes, more than {P.MAX_MESSAGE}"}))
                return
            self._send(*api.post(self.path, self.rfile.read(n),
                                 self.headers.get("Authorization")))

        def _not_allowed(self) -> None:
            self._send(*_json(405, {"error": "method_not_allowed", "detail":
                                    f"method {self.command} is not allowed"}))

        do_PUT = do_DELETE = do_PATCH = _not_allowed

        def send_error(self, code: int, message: str | None = None,
                       explain: str | None = None) -> None:
            self.close_connection = True
            text = message or explain or HTTPStatus(code).phrase
            self._send(*_json(code, {"error": "bad_request" if code < 500 else "internal",
                                     "detail": text}),
                       with_body=getattr(self, "command", None) != "HEAD")

        def _send(self, status: int, ctype: str, payload: bytes, *,
                  with_body: bool = True) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if with_body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
