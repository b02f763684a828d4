"""The fog node's read-only HTTP JSON API: checkpoints, proofs, entries, devices, health.

Anyone holding a reading can ask for its inclusion proof against a signed checkpoint and
check it with the fog's public key alone; an auditor can ask for consistency proofs
between two signed checkpoints. Bytes are lowercase hex. Bad input is a 400 saying what
was wrong, something that is not there a 404; nothing a client sends produces a 500 (an
unexpected exception is logged and answered 500 {"error": "internal"}, never a traceback).

Every handler holds `node.lock` while it reads the stores, which the ingest thread writes.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fog_node.checkpoints import Checkpoint
from fog_node.metrics import render
from fog_node.node import FogError, FogNode
from meterledger import wire as P
from meterledger.wire import merkle

log = logging.getLogger(__name__)

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
# SQLite integers are signed 64-bit: nothing larger is stored, and larger query arguments
# would raise OverflowError inside sqlite3, so they are answered before any query
INT64_MAX = 2**63 - 1
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes '²' and '٣'
_MAX_DIGITS = 30  # far beyond 2^64; keeps int() of a client's string cheap
_DEV = re.compile(r"[0-9a-fA-F]{16}")
_ENTRIES = "/v1/entries/"


class APIError(FogError):
    """A request the API answers with an error status; the message says what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _bad(message: str) -> APIError:
    return APIError(400, message)


def _missing(message: str) -> APIError:
    return APIError(404, message)


def _show(value: str) -> str:
    """A client's value quoted for an error message, cut short if it is long."""
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _uint(name: str, text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise _bad(f"{name} must be a non-negative decimal integer, not {_show(text)}")
    if len(text) > _MAX_DIGITS:
        raise _bad(f"{name} has {len(text)} digits, more than any seq, size or index can have")
    return int(text)


class _Query:
    """The query string of one request, each parameter at most once, none unknown."""

    def __init__(self, query: str, allowed: tuple[str, ...]) -> None:
        self.values: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in allowed:
                takes = f"takes {', '.join(allowed)}" if allowed else "takes no parameters"
                raise _bad(f"unknown parameter {_show(name)}: this endpoint {takes}")
            if name in self.values:
                raise _bad(f"parameter {name} is given more than once")
            self.values[name] = value

    def text(self, name: str) -> str:
        if name not in self.values:
            raise _bad(f"missing parameter {name}")
        return self.values[name]

    def uint(self, name: str) -> int:
        return _uint(name, self.text(name))

    def optional_uint(self, name: str) -> int | None:
        return self.uint(name) if name in self.values else None


def _hex(b: bytes) -> str:
    return b.hex()


class FogAPI:
    def __init__(self, node: FogNode, clock: Callable[[], float] | None = None) -> None:
        self.node = node
        self.clock = clock if clock is not None else node.clock
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[str, tuple[Callable[[_Query], dict[str, Any]], tuple[str, ...]]] = {
            "/v1/checkpoint": (self._checkpoint, ()),
            "/v1/proof/inclusion": (self._inclusion, ("dev", "seq", "size")),
            "/v1/proof/consistency": (self._consistency, ("first", "second")),
            "/v1/proof/enrollment": (self._enrollment, ("dev", "size", "before")),
            "/v1/devices": (self._devices, ()),
            "/healthz": (self._health, ()),
        }

    # -- serving ------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve in a daemon thread; port 0 picks a free one. Returns the bound port."""
        if self._server is not None:
            raise FogError(f"the API is already serving on port {self.port}")
        server = ThreadingHTTPServer((host, port), _handler_class(self))
        server.daemon_threads = True  # a stuck client must not keep the node from exiting
        self._server = server
        # shutdown() waits for the loop's next poll: 0.1 s keeps stop() quick
        self._thread = threading.Thread(target=server.serve_forever, args=(0.1,),
                                        name="fog-api", daemon=True)
        self._thread.start()
        return self.port

    @property
    def port(self) -> int:
        if self._server is None:
            raise FogError("the API is not serving")
        port: int = self._server.server_address[1]
        return port

    def stop(self) -> None:
        """Stop serving and close the socket; a no-op if not serving."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def handle(self, target: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of GET `target` (path and query)."""
        try:
            try:
                url = urlsplit(target)
            except ValueError as e:  # e.g. an absolute URL with a broken [IPv6] host
                raise _bad(f"cannot parse the request target {_show(target)}: {e}") from None
            if url.path == "/metrics":
                _Query(url.query, ())
                return 200, PROMETHEUS, render(self.node, self.clock()).encode()
            if url.path.startswith(_ENTRIES):
                _Query(url.query, ())
                return self._json(200, self._entry(url.path[len(_ENTRIES):]))
            route = self._routes.get(url.path)
            if route is None:
                known = ", ".join([*self._routes, _ENTRIES + "{index}", "/metrics"])
                raise _missing(f"no endpoint {_show(url.path)}; the API has {known}")
            handler, allowed = route
            return self._json(200, handler(_Query(url.query, allowed)))
        except APIError as e:
            return self._json(e.status, {"error": str(e)})
        except Exception:
            log.exception("fog API: unexpected error answering GET %r", target[:200])
            return self._json(500, {"error": "internal"})

    @staticmethod
    def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
        return status, JSON, json.dumps(body).encode() + b"\n"

    # -- endpoints ------------------------------------------------------------------------
    def _latest(self) -> Checkpoint:
        latest = self.node.checkpoints.latest()
        if latest is None:
            raise _missing("no checkpoint has been sealed yet")
        return latest

    def _sealed(self, name: str, size: int) -> Checkpoint:
        """The (first) checkpoint of exactly `size` entries; 400 if there is none."""
        # sealed sizes never exceed the log's, so bigger ones need no (overflowing) query
        cp = self.node.checkpoints.covering(size) if size <= self.node.log.size() else None
        if cp is None or cp.size != size:
            latest = self.node.checkpoints.latest()
            hint = (f"the latest covers {latest.size} entries at height {latest.height}"
                    if latest else "none has been sealed yet")
            raise _bad(f"{name} {size} is not the size of a sealed checkpoint ({hint})")
        return cp

    def _checkpoint(self, q: _Query) -> dict[str, Any]:
        with self.node.lock:
            cp = self._latest()
        return {"checkpoint": _hex(cp.msg), "height": cp.height, "size": cp.size,
                "root": _hex(cp.root), "t": cp.t, "fog_id": _hex(self.node.key.id),
                "fog_pub": _hex(self.node.key.public_key.raw)}

    @staticmethod
    def _dev(q: _Query) -> bytes:
        dev_text = q.text("dev")
        if not _DEV.fullmatch(dev_text):
            raise _bad(f"dev must be 16 hex characters (the meter's 8-byte id), "
                       f"not {_show(dev_text)}")
        return bytes.fromhex(dev_text)

    def _inclusion(self, q: _Query) -> dict[str, Any]:
        dev = self._dev(q)
        seq = q.uint("seq")
        size = q.optional_uint("size")
        if seq < 1:
            raise _bad("seq must be >= 1 (a meter's first reading is seq 1)")
        with self.node.lock:
            logged = self.node.registry.logged_digest(dev, seq) if seq <= INT64_MAX else None
            if logged is None:
                raise _missing(f"no reading {seq} of meter {dev.hex()} is logged")
            leaf = logged[1]
            if size is None:
                cp = self._latest()
                if cp.size <= leaf:
                    raise _missing(
                        f"reading {seq} of {dev.hex()} is logged but not yet covered by a "
                        f"checkpoint (it is entry {leaf}; the latest checkpoint covers "
                        f"{cp.size} entries)")
            else:
                cp = self._sealed("size", size)
                if size <= leaf:
                    raise _bad(f"reading {seq} of {dev.hex()} is entry {leaf}, which a tree "
                               f"of size {size} does not hold (size must be >= {leaf + 1})")
            proof = self.node.log.inclusion_proof(leaf, cp.size)
            entry = self.node.log.entry(leaf)
        return {"leaf_index": proof.leaf_index, "tree_size": proof.tree_size,
                "path": [_hex(h) for h in proof.path], "entry": _hex(entry),
                "checkpoint": _hex(cp.msg)}

    def _enrollment_index(self, dev: bytes, before: int) -> int | None:
        """Log index of the last enrollment decision (type 8) for dev below `before`."""
        idx = self.node.registry.decision_index(dev)
        if idx is not None and idx < before:
            return idx
        # the latest decision came later (say a revocation after the reading): walk back;
        # rare, and only for audits of readings older than the meter's last decision
        for i in range(min(before, self.node.log.size()) - 1, -1, -1):
            m = P.parse(self.node.log.entry(i), schema=False)
            if m.type == P.ENROLLMENT and m.fields[1] == dev:
                return i
        return None

    def _enrollment(self, q: _Query) -> dict[str, Any]:
        dev = self._dev(q)
        size = q.uint("size")
        before = q.optional_uint("before")
        before = size if before is None or before > size else before
        with self.node.lock:
            cp = self._sealed("size", size)
            idx = self._enrollment_index(dev, before)
            if idx is None:
                raise _missing(f"meter {dev.hex()} has no enrollment decision in the first "
                               f"{before} entries")
            proof = self.node.log.inclusion_proof(idx, cp.size)
            entry = self.node.log.entry(idx)
        return {"leaf_index": idx, "tree_size": cp.size, "path": [_hex(h) for h in proof.path],
                "entry": _hex(entry), "checkpoint": _hex(cp.msg)}

    def _consistency(self, q: _Query) -> dict[str, Any]:
        first, second = q.uint("first"), q.uint("second")
        if first > second:
            raise _bad(f"first {first} is larger than second {second}; a log only grows")
        with self.node.lock:
            a = self._sealed("first", first)
            b = self._sealed("second", second)
            proof = self.node.log.consistency_proof(first, second)
        return {"first": first, "second": second, "path": [_hex(h) for h in proof.path],
                "first_root": _hex(a.root), "second_root": _hex(b.root),
                # the signed checkpoints, so a client can check the roots are the fog's
                "first_checkpoint": _hex(a.msg), "second_checkpoint": _hex(b.msg)}

    def _entry(self, index_text: str) -> dict[str, Any]:
        index = _uint("entry index", index_text)
        with self.node.lock:
            size = self.node.log.size()
            if index >= size:
                raise _missing(f"entry {index} is beyond the log, which holds {size} entries")
            entry = self.node.log.entry(index)
        try:
            type_: int | None = P.parse(entry, schema=False).type
        except P.ProtocolError:
            type_ = None  # a type this process has not registered: the entry is still served
        return {"index": index, "entry": _hex(entry), "leaf_hash": _hex(merkle.leaf_hash(entry)),
                "type": type_}

    def _devices(self, q: _Query) -> dict[str, Any]:
        with self.node.lock:
            devices = self.node.registry.devices()
            births = dict(self.node.ingest.pending_births)
            quarantined = self.node.registry.quarantine_size()
        known = {d.dev for d in devices}
        return {
            "devices": [{"dev": _hex(d.dev), "pub": _hex(d.pub), "status": d.status,
                         "reason": d.reason, "since": d.since, "last_seq": d.last_seq,
                         "last_t": d.last_t, "gaps": d.gaps} for d in devices],
            # pending_births keeps a meter after it is enrolled; only unknown ones wait
            "pending": [{"dev": _hex(dev), "pub": _hex(pub)}
                        for dev, pub in sorted(births.items()) if dev not in known],
            "quarantined": quarantined,
        }

    def _health(self, q: _Query) -> dict[str, Any]:
        with self.node.lock:
            size = self.node.log.size()
            latest = self.node.checkpoints.latest()
        return {"ok": True, "log_size": size, "checkpoint_height": latest.height if latest else 0}


def _handler_class(api: FogAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "MeterLedgerFog/1"
        timeout = 30  # seconds a client may sit on an idle connection

        def do_GET(self) -> None:
            self._send(*api.handle(self.path))

        def do_HEAD(self) -> None:
            self._send(*api.handle(self.path), with_body=False)

        def _not_allowed(self) -> None:
            self._send(*FogAPI._json(405, {"error": f"method {self.command} is not allowed: "
                                                   "the API is read-only (GET)"}), allow=True)

        do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

        def send_error(self, code: int, message: str | None = None,
                       explain: str | None = None) -> None:
            # http.server's own errors (bad request line, URI too long, unknown method) in
            # the API's JSON shape instead of an HTML page
            self.close_connection = True
            text = message or explain or HTTPStatus(code).phrase
            self._send(*FogAPI._json(code, {"error": text}),
                       with_body=getattr(self, "command", None) != "HEAD")

        def _send(self, status: int, ctype: str, payload: bytes, *, with_body: bool = True,
                  allow: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")  # checkpoints and counters move
            if allow:
                self.send_header("Allow", "GET, HEAD")
            self.end_headers()
            if with_body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
