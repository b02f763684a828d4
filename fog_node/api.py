"""The fog node's read-only HTTP JSON API: checkpoints, proofs, entries, devices, health.

Anyone holding a reading can ask for its inclusion proof against a signed checkpoint and
check it with the fog's public key alone; an auditor can ask for consistency proofs
between two signed checkpoints. Bytes are lowercase hex. Bad input is a 400 saying what
was wrong, something that is not there a 404, a method other than GET (or HEAD) on an
endpoint a 405; every error is a JSON object whose `error` says what was wrong. Nothing a
client sends produces a 500 (an unexpected exception is logged and answered 500
{"error": "internal"}, never a traceback). `GET /openapi.json` describes the API.

Served by the shared HTTP layer (meterledger.infra.http: Starlette on uvicorn); the metrics
through prometheus_client (fog_node.metrics). Every handler holds `node.lock` while it reads
the stores, which the ingest thread writes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fog_node.log.checkpoints import Checkpoint
from fog_node.metrics import registry
from fog_node.node import FogError, FogNode
from meterledger import wire as P
from meterledger.infra import http as H
from meterledger.infra.metrics import CONTENT_TYPE as PROMETHEUS
from meterledger.infra.metrics import exposition
from meterledger.wire import merkle

log = logging.getLogger(__name__)

JSON = H.JSON
# SQLite integers are signed 64-bit: nothing larger is stored, and larger query arguments
# would raise OverflowError inside sqlite3, so they are answered before any query
INT64_MAX = 2**63 - 1
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes '²' and '٣'
_MAX_DIGITS = 30  # far beyond 2^64; keeps int() of a client's string cheap
_DEV = re.compile(r"[0-9a-fA-F]{16}")
_show = H.show


class APIError(FogError, H.HTTPError):
    """A request the API answers with an error status; the message says what was wrong
    (in `error`, the fog's envelope: {"error": message})."""

    def __init__(self, status: int, message: str) -> None:
        H.HTTPError.__init__(self, status, message)


class _Errors(H.Errors):
    """The fog's envelope: the message itself in `error`, no code (what its clients read)."""

    def make(self, status: int, code: str, message: str | None, *,
             headers: Mapping[str, str] | None = None) -> H.HTTPError:
        return H.HTTPError(status, message if message is not None else code, headers=headers)

    def not_allowed(self, method: str, path: str, allowed: Sequence[str]) -> H.HTTPError:
        # `error` as the fog always said it; `detail` names the endpoint and what it takes
        return H.HTTPError(405, f"method {method} is not allowed: the API is read-only (GET)",
                           f"{method} {_show(path)}: this endpoint answers "
                           f"{', '.join(allowed)}", headers={"Allow": ", ".join(allowed)})


def _bad(message: str) -> APIError:
    return APIError(400, message)


def _missing(message: str) -> APIError:
    return APIError(404, message)


def _uint(name: str, text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise _bad(f"{name} must be a non-negative decimal integer, not {_show(text)}")
    if len(text) > _MAX_DIGITS:
        raise _bad(f"{name} has {len(text)} digits, more than any seq, size or index can have")
    return int(text)


def _query_uint(q: H.Query, name: str) -> int:
    return _uint(name, q.text(name))


def _query_optional_uint(q: H.Query, name: str) -> int | None:
    return _query_uint(q, name) if name in q.values else None


def _hex(b: bytes) -> str:
    return b.hex()


_DEV_DOC = "the meter's 8-byte id, 16 hex characters"


class FogAPI:
    def __init__(self, node: FogNode, clock: Callable[[], float] | None = None) -> None:
        self.node = node
        self.clock = clock if clock is not None else node.clock
        # the API's own registry: several nodes (and APIs) may live in one process
        self.metrics = registry(node, lambda: self.clock())
        R, Q = H.Route, H.Param
        self.http = H.HTTPService(
            "fog-api",
            [R("/v1/checkpoint", self._checkpoint),
             R("/v1/proof/inclusion", self._inclusion,
               query=(Q("dev", True, _DEV_DOC), Q("seq", True, "the reading's seq (>= 1)"),
                      Q("size", False, "a sealed checkpoint's size (default: the latest)"))),
             R("/v1/proof/consistency", self._consistency,
               query=(Q("first", True, "the size of the earlier sealed checkpoint"),
                      Q("second", True, "the size of the later sealed checkpoint"))),
             R("/v1/proof/enrollment", self._enrollment,
               query=(Q("dev", True, _DEV_DOC), Q("size", True, "a sealed checkpoint's size"),
                      Q("before", False, "only decisions logged below this index"))),
             R("/v1/devices", self._devices),
             R("/healthz", self._health),
             R("/v1/entries/{index:path}", self._entry),
             R("/metrics", self._metrics, content_type=PROMETHEUS)],
            errors=_Errors(), title="MeterLedger fog node", server="MeterLedgerFog/1",
            logger=log)

    # -- serving ------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve in a background thread; port 0 picks a free one. Returns the bound port."""
        if self.http.serving:
            raise FogError(f"the API is already serving on port {self.port}")
        return self.http.start(host, port)

    @property
    def port(self) -> int:
        if not self.http.serving:
            raise FogError("the API is not serving")
        return self.http.port

    def stop(self) -> None:
        """Stop serving and close the socket; a no-op if not serving."""
        self.http.stop()

    def handle(self, target: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of GET `target` (path and query), in process."""
        a = self.http.call("GET", target)
        return a.status, a.content_type, a.body

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

    def _checkpoint(self, req: H.Request) -> dict[str, Any]:
        """The latest signed checkpoint, with the fog's id and public key."""
        with self.node.lock:
            cp = self._latest()
        return {"checkpoint": _hex(cp.msg), "height": cp.height, "size": cp.size,
                "root": _hex(cp.root), "t": cp.t, "fog_id": _hex(self.node.key.id),
                "fog_pub": _hex(self.node.key.public_key.raw)}

    @staticmethod
    def _dev(q: H.Query) -> bytes:
        dev_text = q.text("dev")
        if not _DEV.fullmatch(dev_text):
            raise _bad(f"dev must be 16 hex characters (the meter's 8-byte id), "
                       f"not {_show(dev_text)}")
        return bytes.fromhex(dev_text)

    def _inclusion(self, req: H.Request) -> dict[str, Any]:
        """Inclusion proof of a meter's reading against a signed checkpoint.

        The latest checkpoint unless `size` names an earlier one; the proof, the logged
        entry and the checkpoint it verifies against.
        """
        q = req.query
        dev = self._dev(q)
        seq = _query_uint(q, "seq")
        size = _query_optional_uint(q, "size")
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

    def _enrollment(self, req: H.Request) -> dict[str, Any]:
        """Inclusion proof of the meter's enrollment decision in force below `before`.

        The last enrollment decision (type 8) of the meter logged below `before` (default:
        `size`), proved against the sealed checkpoint of `size` entries.
        """
        q = req.query
        dev = self._dev(q)
        size = _query_uint(q, "size")
        before = _query_optional_uint(q, "before")
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

    def _consistency(self, req: H.Request) -> dict[str, Any]:
        """Consistency proof between two sealed checkpoints (by their sizes)."""
        q = req.query
        first, second = _query_uint(q, "first"), _query_uint(q, "second")
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

    def _entry(self, req: H.Request) -> dict[str, Any]:
        """One log entry by its index: the bytes, the Merkle leaf hash and the type."""
        index = _uint("entry index", req.params["index"])
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

    def _devices(self, req: H.Request) -> dict[str, Any]:
        """Enrolled meters, meters waiting for a decision and the quarantine's size."""
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

    def _health(self, req: H.Request) -> dict[str, Any]:
        """Liveness: the log's size and the latest checkpoint's height."""
        with self.node.lock:
            size = self.node.log.size()
            latest = self.node.checkpoints.latest()
        return {"ok": True, "log_size": size, "checkpoint_height": latest.height if latest else 0}

    def _metrics(self, req: H.Request) -> H.Reply:
        """The node's counters in the Prometheus text format (0.0.4)."""
        return H.Reply(exposition(self.metrics), content_type=PROMETHEUS)
