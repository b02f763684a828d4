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

Every route declares its `Tier` (meterledger.infra.http_auth): PUBLIC, AUDITOR or
OPERATOR. The layer checks the bearer token before the query, the body or the handler
(401 with WWW-Authenticate without a known token, 403 with a lower tier's), and the OpenAPI
document states each operation's tier. The limits on what one client may cost (head and
body size, the time a request may take to arrive and a handler to answer, open
connections) and TLS are the transport's (meterledger.infra.http_transport: `Limits`,
`TLS`); a handler that takes longer than `handler_timeout_s` is answered 503 and the client
released, while its thread finishes the work (Python cannot stop it), its answer dropped.

uvicorn's access log is off unless asked for; a client that hangs up (mid-request or
mid-answer) is no error and logs no traceback. This module knows no service.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import starlette.routing
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from uvicorn import Config

from meterledger.errors import MeterLedgerError
from meterledger.infra import http_auth as A
from meterledger.infra import http_openapi
from meterledger.infra import http_transport as T
from meterledger.infra.http_auth import AUDITOR, OPERATOR, PUBLIC, Tier, Tokens
from meterledger.infra.http_errors import Errors, HTTPError, Query, json_body, show
from meterledger.infra.http_transport import TLS, Limits

__all__ = [
    "AUDITOR", "JSON", "OPERATOR", "PUBLIC", "TLS", "Answer", "Errors", "HTTPError",
    "HTTPService", "HTTPServiceError", "Limits", "Param", "Query", "Reply", "Request", "Route",
    "Tier", "Tokens", "json_body", "show",
]

log = logging.getLogger(__name__)

JSON = "application/json"
MAX_BODY = T.Limits.max_body  # default request body cap (bytes)
MAX_HEAD = T.MAX_HEAD
_GRACE_S = 5  # stop() lets requests in flight finish for this long, then cancels them
_START_S = 10.0  # start() waits this long for the server to listen

Handler = Callable[["Request"], "dict[str, Any] | Reply"]


class HTTPServiceError(MeterLedgerError):
    """The service cannot do what was asked (start twice, read the port when stopped)."""


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
    the request body (up to the service's cap; `body_type` for the OpenAPI document).
    `tier` says who may call it; a service refuses a route that does not say. `summary`
    defaults to the first line of the handler's docstring, `content_type` is what a 200
    answers (for the OpenAPI document).
    """

    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET",)
    query: tuple[Param, ...] = ()
    body: bool = False
    summary: str | None = None
    content_type: str = JSON
    tier: Tier | None = None
    body_type: str = "application/octet-stream"
    # False for what is not the JSON API (the dashboard's pages under /ui/): served, but
    # neither in the OpenAPI document nor in a 404's list of endpoints
    api: bool = True

    def describe(self) -> tuple[str, str]:
        """(summary, description) from `summary` or the handler's docstring."""
        doc = inspect.getdoc(self.handler) or ""
        first, _, rest = doc.partition("\n")
        return (self.summary or " ".join(first.split()) or self.path,
                " ".join(rest.split()))


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
                 title: str | None = None, version: str = "1",
                 tokens: Tokens | None = None, limits: Limits | None = None,
                 tls: TLS | None = None,
                 server: str | None = None, headers: Mapping[str, str] | None = None,
                 on_refuse: Callable[[str], None] | None = None,
                 logger: logging.Logger | None = None, access_log: bool = False) -> None:
        self.name = name
        self.errors = errors if errors is not None else Errors()
        self.title = title or name
        self.version = version
        self.tokens = tokens if tokens is not None else Tokens()
        self.limits = limits if limits is not None else Limits()
        self.tls = tls
        self.max_body = self.limits.max_body
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
        self.routes: list[Route] = [*routes, Route("/openapi.json", self._openapi_route,
                                                   tier=PUBLIC)]
        self._paths: dict[str, _Path] = {}
        for r in self.routes:
            if r.tier is None:
                raise ValueError(f"{name}: {'/'.join(r.methods)} {r.path} declares no tier")
            p = self._paths.setdefault(r.path, _Path(r.path))
            for m in r.methods:
                if m.upper() in p.by_method:
                    raise ValueError(f"{name}: {m} {r.path} is in the route table twice")
                p.by_method[m.upper()] = r
        self.app = self._build()
        self._lock = threading.Lock()
        self._server: T.CappedServer | None = None
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
        return [starlette.routing.compile_path(p.template)[1] for p in self._paths.values()
                if any(r.api for r in p.by_method.values())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry: routes match the path as sent, not percent-decoded."""
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            cap = self.limits.max_head
            e = None
            if len(raw) + len(scope.get("query_string", b"")) > cap:
                e = self.errors.malformed(414, f"the request target is longer than {cap} bytes")
            elif sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > cap:
                # h11 caps what it buffers of a head still arriving; one that came whole in
                # one read is measured here
                e = self.errors.malformed(431, f"the request head is longer than {cap} bytes")
            if e is not None:
                e.headers["Connection"] = "close"
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
        self._authorize(route, request.headers)
        query = Query(request.scope.get("query_string", b"").decode("latin-1"),
                      [q.name for q in route.query], self.errors)
        try:
            body = await self._read_body(request) if route.body else b""
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is there to read it
        call = Request(method, path, {k: str(v) for k, v in request.path_params.items()},
                       query, request.headers, body)
        limit = self.limits.handler_timeout_s
        try:
            async with asyncio.timeout(limit):
                # abandoned on timeout: the client is answered, the thread finishes alone
                result = await anyio.to_thread.run_sync(route.handler, call,
                                                        abandon_on_cancel=True)
        except HTTPError:
            raise
        except TimeoutError:
            self.log.warning("%s: %s %r took longer than %g s: answered 503; the handler "
                             "goes on in its thread", self.name, method, path[:200], limit)
            raise self.errors.handler_timeout(limit) from None
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

    def _authorize(self, route: Route, headers: Mapping[str, str]) -> None:
        """Nothing if the request may call `route`; else the 401 or 403 to answer."""
        need = route.tier if route.tier is not None else OPERATOR
        if need is PUBLIC:
            return
        token = A.bearer(headers)
        have = self.tokens.tier_of(token) if token is not None else None
        if have is None:
            raise self.errors.unauthorized(need, self.name, token is not None)
        if have < need:
            raise self.errors.forbidden(need, have, self.name)

    def _malformed_body(self, status: int, message: str) -> bytes:
        e = self.errors.too_slow(message) if status == 408 else self.errors.malformed(status,
                                                                                      message)
        return json_body(e.body())

    def _refuse(self, reason: str) -> None:
        if self.on_refuse is not None:
            self.on_refuse(reason)

    # -- OpenAPI ----------------------------------------------------------------------------------
    def _openapi_route(self, request: Request) -> dict[str, Any]:
        """This API as an OpenAPI 3.1 document (generated from its route table)."""
        return self.openapi()

    def openapi(self) -> dict[str, Any]:
        return http_openapi.document(self.routes, self.title, self.version)

    # -- serving ----------------------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise HTTPServiceError(f"{self.name} is not serving")
        return self._port

    @property
    def connections(self) -> tuple[int, int]:
        """(open now, the most open at once) of the accepted connections (0, 0 if stopped)."""
        server = self._server
        if server is None or not server.acceptors:
            return 0, 0
        a = server.acceptors[0]
        return a.open, a.peak

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on host:port (0: a free port) in a background thread; the bound port."""
        with self._lock:
            if self._server is not None:
                raise HTTPServiceError(f"{self.name} is already serving on port {self._port}")
            T.quiet_uvicorn()
            if self.access_log:  # another service's Config may have cut it off the root
                logging.getLogger("uvicorn.access").propagate = True
            self.tokens.check()  # a token file that cannot be used: say so now
            tls = self.tls.context() if self.tls is not None else None
            sock = T.listen(host, port)
            lim = self.limits
            protocol = T.protocol_class(self._malformed_body, self.raw_headers, lim)
            config = Config(self, http=protocol, ws="none", lifespan="off",
                            interface="asgi3",
                            loop="asyncio", log_config=None, access_log=self.access_log,
                            proxy_headers=False, server_header=False,
                            # typed int, used as call_later's delay: a float is fine
                            timeout_keep_alive=lim.idle_timeout_s,  # type: ignore[arg-type]
                            timeout_graceful_shutdown=_GRACE_S)
            server = T.CappedServer(config, lim.max_connections, tls, lim.request_timeout_s)
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

    def _run(self, server: T.CappedServer, sock: socket.socket) -> None:
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

