"""The fog node's HTTP JSON API: checkpoints, proofs, entries, devices, health, the
operator's enroll and revoke, and the dashboard's read endpoints (fog_node.dashboard: meters,
rejections, feeders, alerts, VEE, curves, checkpoints with anchors, the bus, bundles).

Anyone holding a reading can ask for its inclusion proof against a signed checkpoint and
check it with the fog's public key alone; an auditor can ask for consistency proofs
between two signed checkpoints. Bytes are lowercase hex. Bad input is a 400 saying what
was wrong, something that is not there a 404, a method an endpoint does not take a 405;
every error is a JSON object whose `error` says what was wrong. Nothing a client sends
produces a 500 (an unexpected exception is logged and answered 500 {"error": "internal"},
never a traceback). `GET /openapi.json` describes the API.

Tiers (meterledger.infra.http_auth; docs/PROTOCOL.md section 12): what carries no household
data is public (the checkpoint, consistency and enrollment proofs, health); what does needs
the data dir's auditor.token (readings' inclusion proofs, which hold the reading, entries,
devices, metrics); enroll and revoke need its operator.token. They queue the decision for
the ingest thread as `python -m fog_node enroll|revoke` does (fog_node.enrollment).

Served by the shared HTTP layer (meterledger.infra.http: Starlette on uvicorn); the metrics
through prometheus_client (fog_node.metrics). Reads go through fog_node.reads: snapshots on
connections of the API's own, never the ingest thread's lock (only /metrics, whose families
fog_node.metrics reads under it, and the one-line copy of the births waiting).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fog_node import ota
from fog_node.broker_access import hash_error
from fog_node.dashboard import Dashboard
from fog_node.enrollment import queue_request
from fog_node.log.checkpoints import Checkpoint
from fog_node.metrics import registry
from fog_node.node import FogError, FogNode, ensure_tokens
from fog_node.reads import Reads, Snapshot
from meterledger import wire as P
from meterledger.infra import http as H
from meterledger.infra.http import AUDITOR, OPERATOR, PUBLIC
from meterledger.infra.metrics import CONTENT_TYPE as PROMETHEUS
from meterledger.infra.metrics import exposition
from meterledger.ui.serve import dashboard_routes
from meterledger.wire import merkle
from meterledger.wire.meter import DETAIL_MAX

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
        # `error` says what the endpoint takes; `detail` names it and its methods
        takes = "is read-only (GET)" if "GET" in allowed else "takes POST"
        return H.HTTPError(405, f"method {method} is not allowed: this endpoint {takes}",
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
    """The API of a node. Tokens, limits and TLS come from the node's config and data dir
    (auditor.token and operator.token, made if missing) unless given. `registry_chains`
    gives the states of the registry chains' links for /healthz
    (fog_node.chainlink.links.ChainLinks.statuses)."""

    def __init__(self, node: FogNode, clock: Callable[[], float] | None = None, *,
                 tokens: H.Tokens | None = None, limits: H.Limits | None = None,
                 tls: H.TLS | None = None, ui: bool | None = None,
                 registry_chains: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.node = node
        self.registry_chains = registry_chains
        self.clock = clock if clock is not None else node.clock
        c = node.config
        if tokens is None:
            auditor, operator = ensure_tokens(c.data_dir)
            tokens = H.Tokens({AUDITOR: auditor, OPERATOR: operator})
        self.reads = Reads(c.data_dir)
        # the API's own registry: several nodes (and APIs) may live in one process
        self.metrics = registry(node, lambda: self.clock())
        # the dashboard's read endpoints (fog_node.dashboard), on the same read pool
        self.dashboard = Dashboard(node, lambda: self.reads, self.handle, lambda: self.clock())
        R, Q = H.Route, H.Param
        self.http = H.HTTPService(
            "fog-api",
            [R("/v1/checkpoint", self._checkpoint, tier=PUBLIC),
             R("/v1/proof/inclusion", self._inclusion, tier=AUDITOR,
               query=(Q("dev", True, _DEV_DOC), Q("seq", True, "the reading's seq (>= 1)"),
                      Q("size", False, "a sealed checkpoint's size (default: the latest)"))),
             R("/v1/proof/entry", self._entry_proof, tier=AUDITOR,
               query=(Q("index", True, "the entry's log index"),
                      Q("size", True, "a sealed checkpoint's size, above index"))),
             R("/v1/proof/consistency", self._consistency, tier=PUBLIC,
               query=(Q("first", True, "the size of the earlier sealed checkpoint"),
                      Q("second", True, "the size of the later sealed checkpoint"))),
             R("/v1/proof/enrollment", self._enrollment, tier=PUBLIC,
               query=(Q("dev", True, _DEV_DOC), Q("size", True, "a sealed checkpoint's size"),
                      Q("before", False, "only decisions logged below this index"))),
             R("/v1/devices", self._devices, tier=AUDITOR),
             R("/healthz", self._health, tier=PUBLIC),
             R("/v1/entries/{index:path}", self._entry, tier=AUDITOR),
             R("/metrics", self._metrics, content_type=PROMETHEUS, tier=AUDITOR),
             R("/v1/enroll", self._enroll, ("POST",), body=True, tier=OPERATOR,
               body_type=JSON),
             R("/v1/revoke", self._revoke, ("POST",), body=True, tier=OPERATOR,
               body_type=JSON),
             R("/v1/firmware", self._firmware, ("GET", "POST"), body=True, tier=OPERATOR,
               query=(Q("dev", True, _DEV_DOC),)),
             *self.dashboard.routes(),
             # the pages under /ui/ (docs/PROTOCOL.md section 24), unless `ui = false`
             *dashboard_routes("fog", c.ui if ui is None else ui)],
            errors=_Errors(), title="MeterLedger fog node", server="MeterLedgerFog/1",
            tokens=tokens, limits=limits if limits is not None else c.http_limits(),
            tls=tls if tls is not None else c.http_tls(),
            logger=log)

    # -- serving ------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve in a background thread; port 0 picks a free one. Returns the bound port."""
        if self.http.serving:
            raise FogError(f"the API is already serving on port {self.port}")
        if self.reads.closed:  # stopped before: its read connections were closed
            self.reads = Reads(self.node.config.data_dir)
        return self.http.start(host, port)

    @property
    def port(self) -> int:
        if not self.http.serving:
            raise FogError("the API is not serving")
        return self.http.port

    def stop(self) -> None:
        """Stop serving and close the socket and the read connections; a no-op if not
        serving."""
        self.http.stop()
        self.reads.close()

    def handle(self, target: str, token: str | None = None) -> tuple[int, str, bytes]:
        """(status, content type, body) of GET `target` (path and query), in process, with
        `token` as the bearer token if given."""
        auth = [("Authorization", f"Bearer {token}")] if token is not None else []
        a = self.http.call("GET", target, headers=auth)
        return a.status, a.content_type, a.body

    # -- endpoints ------------------------------------------------------------------------
    @staticmethod
    def _latest(s: Snapshot) -> Checkpoint:
        latest = s.checkpoints.latest()
        if latest is None:
            raise _missing("no checkpoint has been sealed yet")
        return latest

    @staticmethod
    def _sealed(s: Snapshot, name: str, size: int) -> Checkpoint:
        """The (first) checkpoint of exactly `size` entries; 400 if there is none."""
        # sealed sizes never exceed the log's, so bigger ones need no (overflowing) query
        cp = s.checkpoints.covering(size) if size <= s.log.size else None
        if cp is None or cp.size != size:
            latest = s.checkpoints.latest()
            hint = (f"the latest covers {latest.size} entries at height {latest.height}"
                    if latest else "none has been sealed yet")
            raise _bad(f"{name} {size} is not the size of a sealed checkpoint ({hint})")
        return cp

    def _checkpoint(self, req: H.Request) -> dict[str, Any]:
        """The latest signed checkpoint, with the fog's id and public key."""
        with self.reads.snapshot() as s:
            cp = self._latest(s)
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
        entry (the reading: auditor tier) and the checkpoint it verifies against.
        """
        q = req.query
        dev = self._dev(q)
        seq = _query_uint(q, "seq")
        size = _query_optional_uint(q, "size")
        if seq < 1:
            raise _bad("seq must be >= 1 (a meter's first reading is seq 1)")
        with self.reads.snapshot() as s:
            logged = s.registry.logged_digest(dev, seq) if seq <= INT64_MAX else None
            if logged is None:
                raise _missing(f"no reading {seq} of meter {dev.hex()} is logged")
            leaf = logged[1]
            if size is None:
                cp = self._latest(s)
                if cp.size <= leaf:
                    raise _missing(
                        f"reading {seq} of {dev.hex()} is logged but not yet covered by a "
                        f"checkpoint (it is entry {leaf}; the latest checkpoint covers "
                        f"{cp.size} entries)")
            else:
                cp = self._sealed(s, "size", size)
                if size <= leaf:
                    raise _bad(f"reading {seq} of {dev.hex()} is entry {leaf}, which a tree "
                               f"of size {size} does not hold (size must be >= {leaf + 1})")
            proof = s.log.inclusion_proof(leaf, cp.size)
            entry = s.log.entry(leaf)
        return {"leaf_index": proof.leaf_index, "tree_size": proof.tree_size,
                "path": [_hex(h) for h in proof.path], "entry": _hex(entry),
                "checkpoint": _hex(cp.msg)}

    def _entry_proof(self, req: H.Request) -> dict[str, Any]:
        """Inclusion proof of any log entry by its index against a sealed checkpoint: what
        proves a fog's own entries (a type-10 estimate a bill counted), which no meter's
        (dev, seq) names."""
        q = req.query
        index, size = _query_uint(q, "index"), _query_uint(q, "size")
        with self.reads.snapshot() as s:
            cp = self._sealed(s, "size", size)
            if index >= size:
                raise _bad(f"entry {index} is not in a tree of size {size} (size must be >= "
                           f"{index + 1})")
            proof = s.log.inclusion_proof(index, cp.size)
            entry = s.log.entry(index)
        return {"leaf_index": index, "tree_size": cp.size, "path": [_hex(h) for h in proof.path],
                "entry": _hex(entry), "checkpoint": _hex(cp.msg)}

    def _enrollment(self, req: H.Request) -> dict[str, Any]:
        """Inclusion proof of the meter's enrollment decision in force below `before`.

        The last enrollment decision (type 8) of the meter logged below `before` (default:
        `size`), proved against the sealed checkpoint of `size` entries. One lookup in the
        registry's decisions by (meter, index), for a meter it never saw too.
        """
        q = req.query
        dev = self._dev(q)
        size = _query_uint(q, "size")
        before = _query_optional_uint(q, "before")
        before = size if before is None or before > size else before
        with self.reads.snapshot() as s:
            cp = self._sealed(s, "size", size)
            idx = s.registry.decision_before(dev, before)
            if idx is None:
                raise _missing(f"meter {dev.hex()} has no enrollment decision in the first "
                               f"{before} entries")
            proof = s.log.inclusion_proof(idx, cp.size)
            entry = s.log.entry(idx)
        return {"leaf_index": idx, "tree_size": cp.size, "path": [_hex(h) for h in proof.path],
                "entry": _hex(entry), "checkpoint": _hex(cp.msg)}

    def _consistency(self, req: H.Request) -> dict[str, Any]:
        """Consistency proof between two sealed checkpoints (by their sizes)."""
        q = req.query
        first, second = _query_uint(q, "first"), _query_uint(q, "second")
        if first > second:
            raise _bad(f"first {first} is larger than second {second}; a log only grows")
        with self.reads.snapshot() as s:
            a = self._sealed(s, "first", first)
            b = self._sealed(s, "second", second)
            proof = s.log.consistency_proof(first, second)
        return {"first": first, "second": second, "path": [_hex(h) for h in proof.path],
                "first_root": _hex(a.root), "second_root": _hex(b.root),
                # the signed checkpoints, so a client can check the roots are the fog's
                "first_checkpoint": _hex(a.msg), "second_checkpoint": _hex(b.msg)}

    def _entry(self, req: H.Request) -> dict[str, Any]:
        """One log entry by its index: the bytes, the Merkle leaf hash and the type."""
        index = _uint("entry index", req.params["index"])
        with self.reads.snapshot() as s:
            size = s.log.size
            if index >= size:
                raise _missing(f"entry {index} is beyond the log, which holds {size} entries")
            entry = s.log.entry(index)
        try:
            type_: int | None = P.parse(entry, schema=False).type
        except P.ProtocolError:
            type_ = None  # a type this process has not registered: the entry is still served
        return {"index": index, "entry": _hex(entry), "leaf_hash": _hex(merkle.leaf_hash(entry)),
                "type": type_}

    def _devices(self, req: H.Request) -> dict[str, Any]:
        """Enrolled meters, meters waiting for a decision and the quarantine's size."""
        # one C-level copy, atomic under the GIL: no lock for it
        births = self.node.ingest.pending_births.copy()
        with self.reads.snapshot() as s:
            devices = s.registry.devices()
            quarantined = s.registry.quarantine_size()
        known = {d.dev for d in devices}
        return {
            "devices": [d.as_json() for d in devices],
            # pending_births keeps a meter after it is enrolled; only unknown ones wait
            "pending": [{"dev": _hex(dev), "pub": _hex(pub)}
                        for dev, pub in sorted(births.items()) if dev not in known],
            "quarantined": quarantined,
        }

    def _health(self, req: H.Request) -> dict[str, Any] | H.Reply:
        """Health: the log's size and the latest checkpoint's height; 503 with the reason
        while the node is in a storage fault (a full disk: nothing is acked meanwhile). A fog
        anchoring to registry chains lists each link's state in `registry_chains` (a chain
        that is away is no fault of the node: `ok` does not depend on it)."""
        fault = self.node.storage.fault
        with self.reads.snapshot() as s:
            size = s.log.size
            latest = s.checkpoints.latest()
        doc: dict[str, Any] = {"ok": fault is None, "log_size": size,
                               "checkpoint_height": latest.height if latest else 0}
        if self.registry_chains is not None:
            doc["registry_chains"] = self.registry_chains()
        if fault is None:
            return doc
        doc["storage"] = {"fault": fault.kind, "detail": fault.detail, "since": int(fault.since)}
        return H.Reply.json(doc, 503)

    # -- operator ------------------------------------------------------------------------------
    def _decision(self, req: H.Request, status: str) -> H.Reply:
        try:
            doc = json.loads(req.body)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError both
            raise _bad("the body must be a JSON object {\"pub\": hex, \"reason\": text}") \
                from None
        takes = {"pub", "reason", "mqtt_hash"} if status == "active" else {"pub", "reason"}
        if not isinstance(doc, dict) or set(doc) - takes:
            raise _bad(f"the body must be a JSON object with pub and, optionally, "
                       f"{' and '.join(sorted(takes - {'pub'}))} (nothing else)")
        request: dict[str, Any] = {}
        if "mqtt_hash" in doc:
            problem = hash_error(doc["mqtt_hash"])
            if problem is not None:
                raise _bad(f"mqtt_hash: {problem[:200]}")
            request["mqtt_hash"] = doc["mqtt_hash"]
        pub_hex, reason = doc.get("pub"), doc.get("reason", "provisioned"
                                                  if status == "active" else "")
        if not isinstance(pub_hex, str) or not isinstance(reason, str):
            raise _bad("pub and reason must be JSON strings")
        try:
            pub = P.PublicKey(bytes.fromhex(pub_hex))
        except ValueError:  # fromhex, or ProtocolError: not a P-256 point
            raise _bad(f"pub must be a SEC1 P-256 public key, 130 hex characters, not "
                       f"{_show(pub_hex)}") from None
        if status == "revoked" and not reason.strip():
            raise _bad("a revocation needs a reason")
        if not reason.isprintable() or len(reason.encode()) > DETAIL_MAX:
            raise _bad(f"reason must be printable text of at most {DETAIL_MAX} bytes (UTF-8)")
        request.update(pub=pub.raw.hex(), status=status, reason=reason)
        name = queue_request(self.node.config.data_dir, request)
        log.info("%s of meter %s queued over HTTP (%s)", status, pub.id_hex, name.name)
        return H.Reply.json({"queued": name.name, "dev": pub.id_hex, "status": status,
                             "reason": reason}, 202)

    def _enroll(self, req: H.Request) -> H.Reply:
        """Enroll a meter by its public key (operator): queued for the ingest thread.

        Body {"pub": hex, "reason"?: text, "mqtt_hash"?: the meter's broker password hash}.
        202 once queued; the ingest thread logs the type-8 decision within a second,
        releases the meter's quarantined readings and grants its broker access, as
        `python -m fog_node enroll` does. GET /v1/devices shows the outcome.
        """
        return self._decision(req, "active")

    def _revoke(self, req: H.Request) -> H.Reply:
        """Revoke a meter by its public key (operator): queued for the ingest thread.

        Body {"pub": hex, "reason": text} (a reason is required). 202 once queued, as
        `python -m fog_node revoke` does.
        """
        return self._decision(req, "revoked")

    def _firmware(self, req: H.Request) -> H.Reply:
        """Push a signed firmware image to a meter, or see how its last push went (operator).

        POST ?dev=ID with the image (`python -m tools.ota sign`) as the body: queued for the
        ingest thread, which sends it in chunks and then the "fw" command (docs/PROTOCOL.md
        section 22); 202 {"queued", "dev", "version", "digest"}. The body cap is
        `http_max_body`; 400 for a meter that is not enrolled. GET ?dev=ID: the push's state
        ("queued", "sent", "activating", then "done" once the meter's next birth reports
        the new version, or "rolled_back", "rejected", "failed") and the meter's result
        detail; 404 if none was pushed.
        """
        dev = self._dev(req.query)
        if req.method == "GET":
            doc = ota.read_job(self.node.config.data_dir, dev)
            if doc is None:
                raise _missing(f"no firmware was pushed to meter {dev.hex()}")
            return H.Reply.json(doc)
        try:
            img = ota.queue_push(self.node.config.data_dir, dev, req.body)
        except ota.ImageError as e:
            raise _bad(str(e)[:300]) from None
        log.info("firmware %s for meter %s queued over HTTP", img.version, dev.hex())
        return H.Reply.json({"queued": True, "dev": dev.hex(), "version": img.version,
                             "digest": img.digest.hex()}, 202)

    def _metrics(self, req: H.Request) -> H.Reply:
        """The node's counters in the Prometheus text format (0.0.4)."""
        return H.Reply(exposition(self.metrics), content_type=PROMETHEUS)
