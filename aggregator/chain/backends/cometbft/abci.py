"""The ABCI 2.0 socket protocol, apart from the application: a server on a Unix socket that
reads requests and writes responses, each an unsigned-varint length then a protobuf
`tendermint.abci.Request` / `Response` (CometBFT v0.38, docs/PROTOCOL.md section 23).

CometBFT opens four connections (consensus, mempool, query, snapshot) and pipelines requests
on each; every connection is served by its own thread, strictly in order, and a Flush is
answered once every earlier response is written. The application (`Handler`) is called with
one request at a time across all connections (its own lock decides), so it never sees two
requests at once.

An application error is not a refusal: the server answers ResponseException, logs it and
closes that connection, and CometBFT stops rather than go on with an application that
could not follow the chain (it replays from the stored blocks when both restart).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aggregator.chain.backends.cometbft import engine
from meterledger.wire.cometbft_proto import varint

log = logging.getLogger("meterledger.chain.abci")

MAX_MESSAGE = 64 * 1024 * 1024  # far above a block of max_bytes (CometBFT's default 21 MB)

Handler = Callable[[str, Any, int], Any]  # (kind, request message, connection no.) -> response


class _Closed(Exception):
    pass


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise _Closed
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket) -> bytes:
    """One length-prefixed message; _Closed at a clean end of stream."""
    n = shift = 0
    while True:
        b = _read_exact(sock, 1)[0]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("a frame length longer than 10 bytes")
    if n > MAX_MESSAGE:
        raise ValueError(f"a {n}-byte ABCI message is over the {MAX_MESSAGE}-byte limit")
    return _read_exact(sock, n)


class ABCIServer:
    """Serves `handler` on a Unix socket at `path` until stop()."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._types = engine.pb("tendermint.abci.types_pb2")
        self._sock: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # a socket left by a killed process
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.fspath(self.path))
        sock.listen(8)
        self._sock = sock
        # the thread keeps its own reference: stop() clears self._sock while it may still
        # be about to accept
        self._thread = threading.Thread(target=self._accept, args=(sock,), name="abci-accept",
                                        daemon=True)
        self._thread.start()
        log.info("ABCI application listening on unix://%s", self.path)

    def _accept(self, sock: socket.socket) -> None:
        n = 0
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # stop() shut the listening socket down
            n += 1
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, n), name=f"abci-{n}",
                             daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        T = self._types
        try:
            while True:
                req = T.Request()
                req.ParseFromString(read_frame(conn))
                kind = req.WhichOneof("value")
                resp = T.Response()
                if kind == "flush":
                    resp.flush.SetInParent()
                elif kind == "echo":
                    resp.echo.message = req.echo.message
                elif kind is None:
                    raise ValueError("a request with no value")
                else:
                    answer = self._handler(kind, getattr(req, kind), n)
                    getattr(resp, kind).CopyFrom(answer)
                out = resp.SerializeToString()
                conn.sendall(varint(len(out)) + out)
        except _Closed:
            return
        except OSError as e:
            log.info("ABCI connection %d closed: %s", n, e)
        except Exception as e:  # the app could not answer: tell CometBFT, and stop this link
            log.error("ABCI connection %d: the application failed: %s", n, e, exc_info=True)
            resp = T.Response()
            resp.exception.error = f"{type(e).__name__}: {e}"
            out = resp.SerializeToString()
            try:
                conn.sendall(varint(len(out)) + out)
            except OSError:
                pass
        finally:
            conn.close()
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)

    def stop(self) -> None:
        if self._sock is not None:
            try:  # wakes the accepting thread: closing alone leaves it blocked in accept()
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        try:
            self.path.unlink()
        except OSError:
            pass
