"""The socket side of meterledger.infra.http: uvicorn's h11 protocol with malformed requests
answered in the API's envelope and every connection on a clock, the listening socket, a cap
on open connections that is a cap on sockets, TLS, and uvicorn's error log without
tracebacks for clients that went away.

Limits (`Limits`), each a service setting:
- `max_head`: the request line and headers together (h11 refuses more: 431, or 414 for the
  request line alone); `max_body`: the request body (meterledger.infra.http: 413 or the API's
  own word, unread when Content-Length says so).
- `request_timeout_s`: a request, head and body, must arrive whole within this many seconds
  of its first byte (of the connection's start, for the first one; of the TLS handshake's
  start, which has the same limit). A client that trickles bytes (slowloris) is answered 408
  and closed; a connection that sends nothing at all is closed. Between requests a
  kept-alive connection may sit idle for `idle_timeout_s`. A client that stops reading its
  answer (the send buffer stays full) for `request_timeout_s` is dropped.
- `max_connections`: no more sockets than this are open at once. uvicorn's own
  `limit_concurrency` is no such cap: it accepts every connection and answers 503 only once
  a request has been read, so sockets that never send one pile up. Here the listening
  socket is not accepted from while the cap is reached; further clients wait in the
  kernel's backlog (their connect succeeds, their answer waits) until a connection closes.
- `handler_timeout_s` (meterledger.infra.http): the longest a client waits for a handler.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import h11
from starlette.requests import ClientDisconnect
from uvicorn import Config, Server
from uvicorn.protocols.http.h11_impl import H11Protocol

from meterledger.errors import ConfigError

MAX_HEAD = 64 * 1024  # request line and headers together (http.server took 64 KiB lines)
_BACKLOG = 2048  # uvicorn's
_TLS_SHUTDOWN_S = 1.0  # the close_notify exchange of a closing TLS connection, at most

_DISCONNECTS: tuple[type[BaseException], ...] = (ConnectionError, ClientDisconnect,
                                                  asyncio.CancelledError)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one client may cost a service (see the module's docstring); the defaults are the
    services' defaults."""

    max_body: int = 64 * 1024
    max_head: int = MAX_HEAD
    request_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    handler_timeout_s: float = 30.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        for name in ("max_body", "max_head", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("request_timeout_s", "idle_timeout_s", "handler_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0, not {getattr(self, name)}")


@dataclass(frozen=True)
class TLS:
    """A server certificate (PEM, the chain after the leaf if any) and its key (PEM)."""

    cert: Path
    key: Path

    @classmethod
    def of(cls, cert: str | Path, key: str | Path) -> TLS | None:
        """TLS from two settings: None when both are empty, an error when one is."""
        if not cert and not key:
            return None
        if not cert or not key:
            raise ConfigError("TLS needs both a certificate and a key file (http_tls_cert "
                              "and http_tls_key); give both, or neither for plain HTTP")
        return cls(Path(cert), Path(key))

    def context(self) -> ssl.SSLContext:
        """A server context: TLS 1.2 or later, the system's default ciphers."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"TLS: cannot use certificate {self.cert} with key {self.key}: "
                              f"{e}") from None
        return ctx


class _NoDisconnectTracebacks(logging.Filter):
    """On uvicorn's error log: a client that went away (or a request cancelled when stop()
    ran out of patience) is a one-line debug note, not an error with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, _DISCONNECTS):
            record.msg = (f"{str(record.msg).strip()} ({type(exc).__name__}: a client that went "
                          "away or a request cancelled at shutdown)")
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_uvicorn() -> None:
    err = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _NoDisconnectTracebacks) for f in err.filters):
        err.addFilter(_NoDisconnectTracebacks())
    if err.level == logging.NOTSET:  # unless configured otherwise: no start/stop chatter
        err.setLevel(logging.WARNING)


# -- the protocol: h11, with malformed requests answered in the envelope -----------------------
class _Connection(h11.Connection):
    """h11's connection, remembering why the request could not be parsed."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.error = e
            raise


def protocol_class(malformed: Callable[[int, str], bytes],
                   headers: Sequence[tuple[bytes, bytes]],
                   limits: Limits = Limits()) -> type[H11Protocol]:
    """uvicorn's h11 protocol answering unparseable requests with `malformed(status,
    message)` (the API's JSON error body) and `headers`, and keeping `limits`' clocks."""
    max_head, timeout = limits.max_head, limits.request_timeout_s

    # long: one class, each method a small hook into uvicorn's protocol
    class Protocol(H11Protocol):
        def __init__(self, *args: Any, release: Callable[[], None] | None = None,
                     **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.conn = _Connection(h11.SERVER, max_head)
            self.release = release
            self.deadline: asyncio.TimerHandle | None = None  # for the request being read
            self.stalled: asyncio.TimerHandle | None = None  # for an answer not being read

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # a new connection owes a whole request within the limit

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def _watch(self) -> None:
            """Keep the request clock running while a request is arriving, and only then."""
            state = self.conn.their_state
            if state is h11.SEND_BODY or (state is h11.IDLE and self.conn.trailing_data[0]):
                self._arm()
            else:  # read whole (the handler's turn), idle (the keep-alive clock's), closing
                self._disarm()

        def _arm(self) -> None:
            if self.deadline is None and not self.transport.is_closing():
                self.deadline = self.loop.call_later(timeout, self._too_slow)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _too_slow(self) -> None:
            """The request did not arrive in time: 408 if part of one came, then close."""
            self.deadline = None
            if self.transport.is_closing():
                return
            cycle = self.cycle if self.cycle is not None and \
                not self.cycle.response_complete else None  # not a kept-alive one's
            started = cycle is not None and cycle.response_started
            if not started and (cycle is not None or self.conn.trailing_data[0]):
                if cycle is not None:
                    cycle.disconnected = True  # the handler's answer goes nowhere
                self.transport.write(_raw_response(
                    408, malformed(408, f"the request did not arrive whole within "
                                        f"{timeout:g} s"), headers))
            self.transport.close()

        def pause_writing(self) -> None:
            super().pause_writing()
            if self.stalled is None:
                self.stalled = self.loop.call_later(timeout, self.transport.abort)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self.stalled is not None:
                self.stalled.cancel()
                self.stalled = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.stalled is not None:
                self.stalled.cancel()
                self.stalled = None
            super().connection_lost(exc)
            if self.release is not None:
                self.release()
                self.release = None

        def send_400_response(self, msg: str) -> None:
            """A request h11 cannot parse (or a client that hung up in the middle of one):
            answered in the API's envelope, then the connection is closed."""
            self._disarm()
            err = self.conn.error if isinstance(self.conn, _Connection) else None
            status = err.error_status_hint if err is not None else 400
            text = f"invalid HTTP request: {err}" if err is not None else msg
            text = text if len(text) <= 120 else text[:120] + "..."  # h11 quotes the line
            if status == 431:
                pending, _ = self.conn.trailing_data
                status, text = ((414, f"the request line is longer than {max_head} bytes")
                                if b"\n" not in pending else
                                (431, f"the request head is longer than {max_head} bytes"))
            body = malformed(status, text)
            head = [(b"content-type", b"application/json"), (b"connection", b"close"),
                    *headers]
            try:
                for event in (h11.Response(status_code=status, headers=head,
                                           reason=_reason(status)),
                              h11.Data(data=body), h11.EndOfMessage()):
                    self.transport.write(self.conn.send(event))
            except h11.LocalProtocolError:  # a response had begun: nothing more to say
                pass
            self.transport.close()

        def eof_received(self) -> bool | None:  # type: ignore[override]
            """The client closed its side. A request read whole is still answered (then the
            connection closes); one cut short is answered 400; an idle connection closes."""
            cycle = self.cycle
            state = self.conn.their_state
            if cycle is not None and not cycle.response_complete:
                if state in (h11.DONE, h11.MUST_CLOSE):  # the request is read whole
                    cycle.keep_alive = False
                    return True  # keep the transport open to write the answer
                cycle.disconnected = True  # the handler's body will never come
                cycle.message_event.set()
                return None
            pending, _ = self.conn.trailing_data
            if pending and self.conn.our_state is h11.IDLE:
                self.send_400_response("the client closed the connection in the middle of "
                                       "a request")
                return True
            return None

    return Protocol


def _raw_response(status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """An answer written without h11 (which sends none before a request's head is read)."""
    lines = [b"HTTP/1.1 %d %s" % (status, _reason(status)),
             b"content-type: application/json", b"content-length: %d" % len(body),
             b"connection: close", *(k + b": " + v for k, v in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- accepting: a real cap on open connections ---------------------------------------------------
class _Slot:
    """One accepted socket's place under the cap, given back exactly once."""

    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor: Acceptor | None = acceptor

    def release(self) -> None:
        if self.acceptor is not None:
            self.acceptor.give_back()
            self.acceptor = None


class Acceptor:
    """Accepts from a listening socket while fewer than `cap` accepted sockets are open,
    and hands each to a protocol (over TLS when `tls` is set). Stands in for the
    asyncio.Server uvicorn would make: `close()` and `wait_closed()`."""

    def __init__(self, sock: socket.socket, factory: Callable[[Callable[[], None]], Any],
                 cap: int, tls: ssl.SSLContext | None, handshake_s: float) -> None:
        self.sock, self.factory, self.cap = sock, factory, cap
        self.tls, self.handshake_s = tls, handshake_s
        self.open = 0  # accepted sockets not yet closed
        self.peak = 0  # the most that were open at once
        self._room = asyncio.Event()
        self._room.set()
        self._opening: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def full(self) -> bool:
        return not self._room.is_set()

    def start(self) -> None:
        self.sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._room.wait()
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:  # e.g. out of file descriptors: wait, then go on
                log.warning("accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            self.open += 1
            self.peak = max(self.peak, self.open)
            if self.open >= self.cap:
                self._room.clear()
            task = loop.create_task(self._connect(conn, _Slot(self)))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    async def _connect(self, conn: socket.socket, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = self.tls is not None
            await loop.connect_accepted_socket(
                lambda: self.factory(slot.release), conn, ssl=self.tls,
                ssl_handshake_timeout=self.handshake_s if tls else None,
                # a closing TLS connection waits this long for the peer's close_notify (30 s
                # by default: a peer that never sends it would hold its place that long)
                ssl_shutdown_timeout=_TLS_SHUTDOWN_S if tls else None)
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError) as e:
            log.debug("a connection closed before it began: %r", e)
            conn.close()
            slot.release()

    def give_back(self) -> None:
        self.open -= 1
        if self.open < self.cap:
            self._room.set()

    def close(self) -> None:
        for task in [self._task, *self._opening]:
            if task is not None:
                task.cancel()

    async def wait_closed(self) -> None:
        for task in [self._task, *self._opening]:
            if task is not None:
                try:
                    await task
                except asyncio.CancelledError:
                    pass


class CappedServer(Server):
    """uvicorn's server accepting through `Acceptor`s: the connection cap and TLS."""

    def __init__(self, config: Config, cap: int, tls: ssl.SSLContext | None,
                 handshake_s: float) -> None:
        super().__init__(config)
        self.cap, self.tls, self.handshake_s = cap, tls, handshake_s
        self.acceptors: list[Acceptor] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        config = self.config

        def protocol(release: Callable[[], None]) -> Any:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state,
                app_state=self.lifespan.state, release=release)

        self.acceptors = [Acceptor(s, protocol, self.cap, self.tls, self.handshake_s)
                          for s in sockets or []]
        for a in self.acceptors:
            a.start()
        # shutdown() closes and awaits self.servers: the acceptors stand in for them
        self.servers = self.acceptors  # type: ignore[assignment]
        self.started = True


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port); IPv4 first where a name has
    both (as http.server, which was IPv4 only), "" for every address."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
    # proto must say TCP: asyncio turns Nagle off (TCP_NODELAY) only on connections whose
    # socket says so, and with Nagle on every keep-alive answer (head and body written
    # apart) waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
