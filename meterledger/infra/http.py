"""The one HTTP layer of the services' JSON APIs: Starlette routing, uvicorn in a thread.

An API is a table of `Route`s (path template, methods, the query parameters it takes, a
plain sync handler). `HTTPService` builds a Starlette app from it and serves it with
uvicorn (HTTP/1.1 through h11, keep-alive) on its own event loop in a background thread:

    service = HTTPService("fog-api", routes, errors=MyErrors())
    port = service.start("127.0.0.1", 0)   # port 0: an ephemeral one; the bound port back
    ...
    service.stop()                         # graceful, joins the thread, idempotent

Handlers run in Starlette's threadpool (they may take locks and call SQLite). One handler
gets one `Request` (method, path as sent, path parameters, the checked `Query`, headers,
body) and returns a dict (200, JSON) or a `Reply` (any status, content type and bytes).

One error envelope, a JSON object: ``{"error": ..., "detail"?: ..., **fields}``. Handlers
raise `HTTPError(status, error, detail, **fields)`; one exception handler renders it. The
layer's own refusals (unknown path 404, wrong method 405 with Allow, bad query 400, body
over the cap, malformed HTTP, the 500 for an unexpected exception) are worded by the API's
`Errors`, so an API whose clients read the message in `error` (the fog) and one whose
clients read a code in `error` and the message in `detail` (the aggregator) both keep their
shape. An unexpected exception in a handler is logged once, with its traceback, and
answered 500 ``{"error": "internal"}``: never a traceback to the client.

Paths are matched as the client sent them, percent-escapes not decoded (no route of these
APIs needs one), like the http.server APIs this layer replaced: `/v1/entries/%31` is no
alias of `/v1/entries/1`. Every API also serves `GET /openapi.json`, an OpenAPI 3.1
document generated from the route table.

uvicorn's access log is off unless asked for; a client that hangs up (mid-request or
mid-answer) is no error and logs no traceback. This module knows no service.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import starlette.routing
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from uvicorn import Config, Server

from meterledger.errors import MeterLedgerError
from meterledger.infra import http_transport as T

__all__ = [
    "JSON", "Answer", "Errors", "HTTPError", "HTTPService", "HTTPServiceError", "Param", "Query",
    "Reply", "Request", "Route", "json_body", "show",
]

log = logging.getLogger(__name__)

JSON = "application/json"
MAX_BODY = 64 * 1024  # default request body cap (bytes)
MAX_HEAD = T.MAX_HEAD
_IDLE_S = 30  # a keep-alive connection may sit idle this long
_GRACE_S = 5  # stop() lets requests in flight finish for this long, then cancels them
_START_S = 10.0  # start() waits this long for the server to listen
_NON_WORD = re.compile(r"[^0-9A-Za-z]+")

Handler = Callable[["Request"], "dict[str, Any] | Reply"]


class HTTPServiceError(MeterLedgerError):
    """The service cannot do what was asked (start twice, read the port when stopped)."""


class HTTPError(MeterLedgerError):
    """An answer other than success, in the one envelope: a JSON object with `error`, a
    `detail` when there is one, and any `fields` (e.g. the receipt of a duplicate)."""

    def __init__(self, status: int, error: str, detail: str | None = None, *,
                 headers: Mapping[str, str] | None = None, **fields: Any) -> None:
        super().__init__(detail if detail is not None else error)
        self.status = status
        self.error = error
        self.detail = detail
        self.fields = fields
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error}
        if self.detail is not None:
            out["detail"] = self.detail
        out.update(self.fields)
        return out


def json_body(doc: Mapping[str, Any]) -> bytes:
    """The bytes of a JSON answer: json.dumps' default separators and a newline."""
    return json.dumps(doc).encode() + b"\n"


def show(value: str) -> str:
    """A client's value quoted for an error message, cut short if it is long."""
    return repr(value if len(value) <= 40 else value[:40] + "...")


@dataclass(frozen=True)
class Reply:
    """A handler's answer when it is not a 200 JSON object."""

    body: bytes
    status: int = 200
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, doc: Mapping[str, Any], status: int = 200) -> Reply:
        return cls(json_body(doc), status)


@dataclass(frozen=True)
class Param:
    """A query parameter a route takes (for the check and the OpenAPI document)."""

    name: str
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Route:
    """One entry of an API's route table.

    `path` is a Starlette template ("/v1/entries/{index:path}" takes the rest of the path,
    slashes and emptiness included, so the handler words the error for a bad index).
    `query` names the parameters the route takes; any other is a 400. `body` routes read
    the request body (up to the service's cap). `summary` defaults to the first line of the
    handler's docstring, `content_type` is what a 200 answers (for the OpenAPI document).
    """

    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET",)
    query: tuple[Param, ...] = ()
    body: bool = False
    summary: str | None = None
    content_type: str = JSON

    def describe(self) -> tuple[str, str]:
        """(summary, description) from `summary` or the handler's docstring."""
        doc = inspect.getdoc(self.handler) or ""
        first, _, rest = doc.partition("\n")
        return (self.summary or " ".join(first.split()) or self.path,
                " ".join(rest.split()))


class Errors:
    """How an API words the errors the layer itself answers.

    Every refusal goes through `make(status, code, message)`; the default envelope is the
    aggregator's, ``{"error": code, "detail": message}``. An API whose clients read the
    message in `error` overrides `make` (and any text it words differently).
    """

    def make(self, status: int, code: str, message: str | None, *,
             headers: Mapping[str, str] | None = None) -> HTTPError:
        return HTTPError(status, code, message, headers=headers)

    def bad_request(self, message: str) -> HTTPError:
        return self.make(400, "bad_request", message)

    def not_found(self, method: str, path: str, known: Sequence[str]) -> HTTPError:
        return self.make(404, "not_found",
                         f"no endpoint {show(path)}; the API has {', '.join(known)}")

    def not_allowed(self, method: str, path: str, allowed: Sequence[str]) -> HTTPError:
        return self.make(405, "method_not_allowed",
                         f"method {method} is not allowed on {show(path)}: it answers "
                         f"{', '.join(allowed)}", headers={"Allow": ", ".join(allowed)})

    def too_large(self, size: int | None, limit: int) -> HTTPError:
        what = f"{size} bytes" if size is not None else "longer"
        return self.make(413, "too_large", f"the request body is {what}, more than the "
                         f"{limit} bytes this API takes", headers={"Connection": "close"})

    def malformed(self, status: int, message: str) -> HTTPError:
        """A request that is not HTTP the server can read (answered before any route)."""
        return self.make(status, "bad_request", message)

    def internal(self) -> HTTPError:
        return HTTPError(500, "internal")


class Query:
    """One request's query string: each parameter at most once, none the route does not
    take; values are the query's text as parsed (percent-escapes decoded, UTF-8, '+')."""

    def __init__(self, raw: str, allowed: Sequence[str], errors: Errors) -> None:
        self.errors = errors
        self.values: dict[str, str] = {}
        for name, value in parse_qsl(raw, keep_blank_values=True):
            if name not in allowed:
                takes = f"takes {', '.join(allowed)}" if allowed else "takes no parameters"
                raise errors.bad_request(f"unknown parameter {show(name)}: this endpoint {takes}")
            if name in self.values:
                raise errors.bad_request(f"parameter {name} is given more than once")
            self.values[name] = value

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def text(self, name: str) -> str:
        if name not in self.values:
            raise self.errors.bad_request(f"missing parameter {name}")
        return self.values[name]


@dataclass(frozen=True)
class Request:
    """What a handler gets: the method, the path as sent, the path template's parameters,
    the checked query, the headers (case-insensitive) and the body (b"" unless the route
    reads one)."""

    method: str
    path: str
    params: Mapping[str, str]
    query: Query
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class Answer:
    """An answer as `HTTPService.call` returns it."""

    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]


class _Path:
    """The routes of one path template, by method (HEAD wherever GET)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.by_method: dict[str, Route] = {}

    def allowed(self) -> list[str]:
        out = list(self.by_method)
        return [*out, "HEAD"] if "GET" in out and "HEAD" not in out else out

    def route(self, method: str) -> Route | None:
        return self.by_method.get("GET" if method == "HEAD" else method)


class _Endpoint:
    """The ASGI app of one path: every method reaches it (405s are the API's own)."""

    def __init__(self, service: HTTPService, path: _Path) -> None:
        self.service, self.path = service, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.service.answer(self.path, StarletteRequest(scope, receive))
        await response(scope, receive, send)


# -- the service --------------------------------------------------------------------------------
class HTTPService:
    """A route table served by Starlette on uvicorn in a background thread."""

    def __init__(self, name: str, routes: Sequence[Route], *, errors: Errors | None = None,
                 title: str | None = None, version: str = "1", max_body: int = MAX_BODY,
                 server: str | None = None, headers: Mapping[str, str] | None = None,
                 on_refuse: Callable[[str], None] | None = None,
                 logger: logging.Logger | None = None, access_log: bool = False) -> None:
        self.name = name
        self.errors = errors if errors is not None else Errors()
        self.title = title or name
        self.version = version
        self.max_body = max_body
        self.on_refuse = on_refuse
        self.log = logger if logger is not None else log
        self.access_log = access_log
        base = {"Cache-Control": "no-store"}  # checkpoints, heads and counters move
        if server:
            base["Server"] = server
        base.update(headers or {})
        self.headers = base
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in base.items()]
        self.routes: list[Route] = [*routes, Route("/openapi.json", self._openapi_route)]
        self._paths: dict[str, _Path] = {}
        for r in self.routes:
            p = self._paths.setdefault(r.path, _Path(r.path))
            for m in r.methods:
                if m.upper() in p.by_method:
                    raise ValueError(f"{name}: {m} {r.path} is in the route table twice")
                p.by_method[m.upper()] = r
        self.app = self._build()
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # -- the app -----------------------------------------------------------------------------
    def _build(self) -> Starlette:
        # an ASGI app as endpoint takes every method (a function would take GET only)
        routes = [starlette.routing.Route(p.template, self._endpoint(p))
                  for p in self._paths.values()]
        app = Starlette(routes=routes, exception_handlers={HTTPError: self._render_error})
        app.router.redirect_slashes = False  # /v1/checkpoint/ is no alias: a 404
        app.router.default = self._not_found
        return app

    def known(self) -> list[str]:
        """The paths the API has, as the 404 lists them (templates without converters)."""
        return [starlette.routing.compile_path(p.template)[1] for p in self._paths.values()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry: routes match the path as sent, not percent-decoded."""
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            if len(raw) + len(scope.get("query_string", b"")) > MAX_HEAD:
                e = self.errors.malformed(414, f"the request target is longer than {MAX_HEAD} "
                                               "bytes")
                await self._error_response(e)(scope, receive, send)
                return
            scope = dict(scope, path=raw.decode("latin-1"))
        await self.app(scope, receive, send)

    async def _not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise self.errors.not_found(scope["method"], scope["path"], self.known())

    async def _render_error(self, request: StarletteRequest, exc: Exception) -> Response:
        """The one exception handler: an HTTPError as its JSON envelope."""
        assert isinstance(exc, HTTPError)
        return self._error_response(exc)

    def _error_response(self, exc: HTTPError) -> Response:
        return Response(json_body(exc.body()), exc.status, headers={**self.headers,
                        **exc.headers}, media_type=JSON)

    def _endpoint(self, p: _Path) -> _Endpoint:
        return _Endpoint(self, p)

    async def answer(self, p: _Path, request: StarletteRequest) -> Response:
        """The answer to one request on a known path (HTTPError propagates to the one
        exception handler)."""
        method = request.method
        path = request.scope["path"]
        route = p.route(method)
        if route is None:
            raise self.errors.not_allowed(method, path, p.allowed())
        query = Query(request.scope.get("query_string", b"").decode("latin-1"),
                      [q.name for q in route.query], self.errors)
        try:
            body = await self._read_body(request) if route.body else b""
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is there to read it
        call = Request(method, path, {k: str(v) for k, v in request.path_params.items()},
                       query, request.headers, body)
        try:
            result = await run_in_threadpool(route.handler, call)
        except HTTPError:
            raise
        except Exception:
            self.log.exception("%s: unexpected error answering %s %r", self.name, method,
                               path[:200])
            raise self.errors.internal() from None
        if isinstance(result, Reply):
            return Response(result.body, result.status, media_type=result.content_type,
                            headers={**self.headers, **result.headers})
        return Response(json_body(result), 200, media_type=JSON, headers=self.headers)

    async def _read_body(self, request: StarletteRequest) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            self._refuse("too_large")  # not read: refused, and the connection closes
            raise self.errors.too_large(int(length), self.max_body)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > self.max_body:
                self._refuse("too_large")
                raise self.errors.too_large(None, self.max_body)
            chunks.append(chunk)
        return b"".join(chunks)

    def _malformed_body(self, status: int, message: str) -> bytes:
        return json_body(self.errors.malformed(status, message).body())

    def _refuse(self, reason: str) -> None:
        if self.on_refuse is not None:
            self.on_refuse(reason)

    # -- OpenAPI ----------------------------------------------------------------------------------
    def _openapi_route(self, request: Request) -> dict[str, Any]:
        """This API as an OpenAPI 3.1 document (generated from its route table)."""
        return self.openapi()

    def openapi(self) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        for r in self.routes:
            _, template, convertors = starlette.routing.compile_path(r.path)
            summary, description = r.describe()
            params: list[dict[str, Any]] = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in convertors]
            params += [{"name": q.name, "in": "query", "required": q.required,
                        "schema": {"type": "string"},
                        **({"description": q.description} if q.description else {})}
                       for q in r.query]
            for m in r.methods:
                op: dict[str, Any] = {
                    "summary": summary,
                    # unique, as method and path are
                    "operationId": m.lower() + "_" + _NON_WORD.sub("_", template).strip("_"),
                    "parameters": params,
                    "responses": {
                        "200": {"description": "success",
                                "content": {r.content_type: {}}},
                        "default": {"description": "an error, in the API's envelope",
                                    "content": {JSON: {"schema": {
                                        "$ref": "#/components/schemas/Error"}}}},
                    },
                }
                if description:
                    op["description"] = description
                if r.body:
                    op["requestBody"] = {"required": True, "content": {
                        "application/octet-stream": {}}}
                paths.setdefault(template, {})[m.lower()] = op
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version},
            "paths": paths,
            "components": {"schemas": {"Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                "additionalProperties": True}}},
        }

    # -- serving ----------------------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise HTTPServiceError(f"{self.name} is not serving")
        return self._port

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on host:port (0: a free port) in a background thread; the bound port."""
        with self._lock:
            if self._server is not None:
                raise HTTPServiceError(f"{self.name} is already serving on port {self._port}")
            T.quiet_uvicorn()
            if self.access_log:  # another service's Config may have cut it off the root
                logging.getLogger("uvicorn.access").propagate = True
            sock = T.listen(host, port)
            protocol = T.protocol_class(self._malformed_body, self.raw_headers)
            config = Config(self, http=protocol, ws="none", lifespan="off",
                            interface="asgi3",
                            loop="asyncio", log_config=None, access_log=self.access_log,
                            proxy_headers=False, server_header=False,
                            timeout_keep_alive=_IDLE_S, timeout_graceful_shutdown=_GRACE_S)
            server = Server(config)
            thread = threading.Thread(target=self._run, args=(server, sock), name=self.name,
                                      daemon=True)
            thread.start()
            deadline = time.monotonic() + _START_S
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    server.should_exit = True
                    thread.join(_START_S)
                    sock.close()
                    raise HTTPServiceError(f"{self.name} did not start on {host}:{port}")
                time.sleep(0.002)
            self._server, self._thread = server, thread
            self._port = int(sock.getsockname()[1])
            return self._port

    def _run(self, server: Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException:  # the thread's end is its report: start() or stop() sees it
            self.log.exception("%s: the HTTP server stopped with an error", self.name)
        finally:
            sock.close()

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish, close; a no-op if not serving."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.should_exit = True
        if thread is not None:
            thread.join()

    # -- in process ---------------------------------------------------------------------------------
    def call(self, method: str, target: str, body: bytes = b"",
             headers: Iterable[tuple[str, str]] = ()) -> Answer:
        """One request through the app without a socket (for tools and tests): the same
        routing, checks, envelope and handlers. Not from inside a running event loop."""
        raw_path, _, query = target.encode("latin-1", "replace").partition(b"?")
        scope: Scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": method.upper(), "scheme": "http",
            "path": raw_path.decode("latin-1"), "raw_path": raw_path, "query_string": query,
            "root_path": "", "client": None, "server": None, "state": {},
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                        for k, v in [*headers, ("content-length", str(len(body)))]],
        }
        sent: list[Message] = []
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Message:
            return pending.pop() if pending else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        asyncio.run(self(scope, receive, send))
        start = next(m for m in sent if m["type"] == "http.response.start")
        got = Headers(raw=list(start.get("headers", [])))
        return Answer(start["status"], got.get("content-type", ""),
                      b"".join(m.get("body", b"") for m in sent
                               if m["type"] == "http.response.body"), dict(got.items()))

