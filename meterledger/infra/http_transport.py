"""The socket side of meterledger.infra.http: uvicorn's h11 protocol with malformed requests
answered in the API's envelope, the listening socket, and uvicorn's error log without
tracebacks for clients that went away."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

import h11
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD = 64 * 1024  # request line and headers together (http.server took 64 KiB lines)
_BACKLOG = 2048  # uvicorn's

_DISCONNECTS: tuple[type[BaseException], ...] = (ConnectionError, ClientDisconnect,
                                                  asyncio.CancelledError)


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
                   headers: Sequence[tuple[bytes, bytes]]) -> type[H11Protocol]:
    """uvicorn's h11 protocol answering unparseable requests with `malformed(status,
    message)` (the API's JSON error body) and `headers`."""
    class Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.conn = _Connection(h11.SERVER, MAX_HEAD)

        def send_400_response(self, msg: str) -> None:
            """A request h11 cannot parse (or a client that hung up in the middle of one):
            answered in the API's envelope, then the connection is closed."""
            err = self.conn.error if isinstance(self.conn, _Connection) else None
            status = err.error_status_hint if err is not None else 400
            text = f"invalid HTTP request: {err}" if err is not None else msg
            text = text if len(text) <= 120 else text[:120] + "..."  # h11 quotes the line
            if status == 431:
                pending, _ = self.conn.trailing_data
                status, text = ((414, f"the request line is longer than {MAX_HEAD} bytes")
                                if b"\n" not in pending else
                                (431, f"the request head is longer than {MAX_HEAD} bytes"))
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
