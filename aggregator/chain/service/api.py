"""The aggregator's HTTP JSON API (docs/PROTOCOL.md section 15); bytes are lowercase hex.

POST /v1/tx takes one transaction (the raw COSE_Sign1 bytes) and answers once the block
holding it is sealed: 200 {digest, height, index}; a refusal is 400 {error: reason, detail}
(an empty body too: `malformed`); the same bytes already on the chain are 409
{error: "duplicate", digest, height, index}; 503 {error: "unavailable", detail} while the
ledger cannot seal. A body over the cap (64 KiB by default) is refused unread (400
too_large). GET endpoints answer 400 for bad input (unknown query parameters included) and
404 for what the chain does not hold, as {error: "bad_request" | "not_found", detail}; a
wrong method is 405 method_not_allowed. Nothing a client sends produces a 500; an
unexpected exception is logged and answered 500 {error: "internal"}. `GET /openapi.json`
describes the API.

Tiers (meterledger.infra.http_auth; docs/PROTOCOL.md section 15): everything on the chain
is public (blocks are, and the rest is derived from them; suggestions are derived from the
chain's aggregates and rules), and so is POST /v1/tx (a transaction is signed by a
registered participant or refused); /metrics needs the data dir's auditor.token; POST
/v1/suggestions/{id}/approve and /dismiss need the operator token, the data dir's
dispatch.token (401 unauthorized without a known token, 403 forbidden with the auditor's).

Served by the shared HTTP layer (meterledger.infra.http: Starlette on uvicorn); the metrics
through prometheus_client (aggregator.chain.service.metrics).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

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
from aggregator.chain.service.api_billing import BillingReads
from aggregator.chain.service.api_carbon import CarbonReads
from aggregator.chain.service.api_dr import DemandResponseReads
from aggregator.chain.service.api_green import GreenReads
from aggregator.chain.service.api_market import MarketReads
from aggregator.chain.service.api_reads import ChainReads, before, bounded, decoded, tx_digest
from aggregator.chain.service.api_trace import TraceReads
from aggregator.chain.service.metrics import registry
from aggregator.chain.store.base import header_time
from aggregator.dispatch.suggestions import PAGE as SUGGESTIONS
from aggregator.dispatch.suggestions import STATES, Dispatcher, SuggestionStateError
from meterledger import wire as P
from meterledger.infra import http as H
from meterledger.infra import logs
from meterledger.infra.http import AUDITOR, OPERATOR, PUBLIC
from meterledger.infra.metrics import CONTENT_TYPE as PROMETHEUS
from meterledger.infra.metrics import exposition
from meterledger.ui.serve import dashboard_routes

log = logging.getLogger(__name__)

JSON = H.JSON
MAX_BODY = 64 * 1024  # read and refuse (too_large) up to this; beyond, refuse unread
_DIGITS = re.compile(r"[0-9]{1,30}")
_HEX16 = re.compile(r"[0-9a-fA-F]{16}")
_SID = re.compile(r"[0-9a-f]{64}")
_ACTIONS = ("approve", "dismiss")
_POSTS = "POST goes to /v1/tx or /v1/suggestions/{id}/approve|dismiss"
_CONVERTER = re.compile(r"\{(\w+):\w+\}")  # "{height:path}" -> "{height}"
_show = H.show

Answer = tuple[int, str, bytes]
Handler = Callable[[H.Request], dict[str, Any] | H.Reply]


class APIError(AggregatorError, H.HTTPError):
    """A request the API answers with an error status: {error: code, detail}."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        H.HTTPError.__init__(self, status, code, detail)
        self.code = code


def _bad(detail: str) -> APIError:
    return APIError(400, "bad_request", detail)


def _receipt(r: Receipt) -> dict[str, Any]:
    return {"digest": r.digest.hex(), "height": r.height, "index": r.index}


def _answers(handler: Handler) -> Handler:
    """The handler, with what the chain raises answered in the envelope (404 not_found,
    409 not_open, 503 unavailable); its docstring (the OpenAPI summary) kept."""
    @functools.wraps(handler)
    def answer(req: H.Request) -> dict[str, Any] | H.Reply:
        try:
            return handler(req)
        except NotFoundError as e:
            raise APIError(404, "not_found", str(e)) from None
        except SuggestionStateError as e:
            raise APIError(409, "not_open", str(e)) from None
        except (UnavailableError, StorageError) as e:
            raise APIError(503, "unavailable", str(e)) from None
    return answer


class _Errors(H.Errors):
    """The layer's refusals in the aggregator's words: {error: code, detail}; a POST
    anywhere but a POST endpoint says where POSTs go, a body over the cap is 400 too_large."""

    def __init__(self) -> None:
        self.readable: list[str] = []  # the paths GET answers, as a 404 lists them

    def not_found(self, method: str, path: str, known: Sequence[str]) -> H.HTTPError:
        if method == "POST":
            return self.make(404, "not_found", f"{_POSTS}, not {_show(path)}")
        if method in ("GET", "HEAD"):
            return self.make(404, "not_found", f"no endpoint {_show(path)}; the API has "
                                               f"{', '.join(self.readable)}")
        return self.make(405, "method_not_allowed", f"method {method} is not allowed: the API "
                         f"answers GET and HEAD, and POST on /v1/tx and "
                         f"/v1/suggestions/{{id}}/approve|dismiss")

    def not_allowed(self, method: str, path: str, allowed: Sequence[str]) -> H.HTTPError:
        allow = {"Allow": ", ".join(allowed)}
        if method == "POST":
            return self.make(405, "method_not_allowed", f"{_POSTS}, not {_show(path)}",
                             headers=allow)
        if method in ("GET", "HEAD"):
            if path != "/v1/tx":  # a suggestion's approve|dismiss: nothing there to GET
                return self.not_found(method, path, self.readable)
            return self.make(405, "method_not_allowed", "/v1/tx takes POST (a transaction); "
                             "GET /v1/tx/{digest} reads one", headers=allow)
        return super().not_allowed(method, path, allowed)

    def too_large(self, size: int | None, limit: int) -> H.HTTPError:
        what = f"{size} bytes" if size is not None else f"longer than {limit} bytes"
        return self.make(400, "too_large", f"message is {what}, more than {P.MAX_MESSAGE}",
                         headers={"Connection": "close"})

    def malformed(self, status: int, message: str) -> H.HTTPError:
        if "bad Content-Length" in message:
            message = f"the Content-Length is not a number ({message})"
        return super().malformed(status, message)


class _Query:
    """The aggregator's reading of a checked query (meterledger.infra.http.Query)."""

    def __init__(self, q: H.Query) -> None:
        self.values = q.values

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
    """The API of a ledger; with a dispatcher also the suggestions. `token` is the operator
    token (the dispatch token) as a text; `tokens` the tiers' tokens in full (files, which
    are read again when they change), for a service that has an auditor token too."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float],
                 dispatcher: Dispatcher | None = None, token: str | None = None, *,
                 tokens: H.Tokens | None = None, limits: H.Limits | None = None,
                 tls: H.TLS | None = None, ui: bool = False) -> None:
        self.ledger = ledger
        self.clock = clock
        self.dispatcher = dispatcher
        if tokens is None:
            tokens = H.Tokens({OPERATOR: token})
        self.tokens = tokens
        self.refused: dict[str, int] = {}  # POSTs refused before reaching the ledger
        self._refusals = logs.Once()  # what the log says of the ledger's refusals
        self._lock = threading.Lock()
        # the API's own registry: several chains (and APIs) may live in one process
        self.metrics = registry(ledger, self._refused, lambda: (
            dict(self.dispatcher.counters) if self.dispatcher is not None else None))
        self.reads = ChainReads(ledger)
        R, Q = H.Route, H.Param
        fog = Q("fog", True, "the fog's id, 16 hex characters")
        after = Q("after", False, "only what is in blocks above this height")
        routes = [
            R("/v1/head", self._head, tier=PUBLIC),
            R("/v1/anchors", self._anchors, query=(fog,), tier=PUBLIC),
            R("/v1/instructions", self._instructions, query=(fog, after), tier=PUBLIC),
            R("/v1/participants", self._participants, tier=PUBLIC),
            R("/v1/aggregates", self._aggregates, tier=PUBLIC,
              query=(fog, Q("feeder", False, "only this feeder's aggregates"), after)),
            R("/v1/rules", self._rules, tier=PUBLIC),
            R("/v1/suggestions", self._suggestions, tier=PUBLIC,
              query=(Q("state", False, "only suggestions in this state: "
                                       + ", ".join(STATES)),
                     Q("before", False, "only suggestions recorded before this one (an "
                                        "answer's `next` pages on to older ones)"),
                     Q("limit", False, f"suggestions in the answer, the newest, 1 to "
                                       f"{SUGGESTIONS[1]} (default {SUGGESTIONS[0]})"))),
            R("/healthz", self._health, tier=PUBLIC),
            *self.reads.routes(),  # blocks, fogs, dispatch, validators, latency
            *GreenReads(ledger).routes(),  # params, generators, certificates, balances
            *CarbonReads(ledger).routes(),  # allowances, conversions, notaries' outbox
            *MarketReads(ledger).routes(),  # access, accounts, network, cycles, contracts, book
            *BillingReads(ledger).routes(),  # tariffs, bill receipts
            *TraceReads(ledger).routes(),  # a device's timeline (section 29)
            *DemandResponseReads(ledger).routes(),  # contracts, events, reports (section 30)
            R("/v1/blocks/{height:path}", self._block, tier=PUBLIC),
            R("/v1/tx/{digest:path}", self._tx, tier=PUBLIC),
            R("/metrics", self._metrics, content_type=PROMETHEUS, tier=AUDITOR),
            R("/v1/tx", self._submit, ("POST",), body=True, tier=PUBLIC),
            R("/v1/suggestions/{id}/{action}", self._decide, ("POST",), body=True,
              tier=OPERATOR),
        ]
        errors = _Errors()
        self.http = H.HTTPService(
            "aggregator-api", [replace(r, handler=_answers(r.handler)) for r in routes]
            + dashboard_routes("chain", ui),  # the pages under /ui/ (docs/PROTOCOL.md s24)
            errors=errors, title="MeterLedger aggregator", server="MeterLedgerAggregator/1",
            tokens=tokens, limits=limits if limits is not None else H.Limits(max_body=MAX_BODY),
            tls=tls, on_refuse=self.refuse, logger=log)
        errors.readable = [_CONVERTER.sub(r"{\1}", r.path) for r in self.http.routes
                           if "GET" in r.methods and r.api]

    # -- serving -------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve in a background thread; port 0 picks a free one. Returns the bound port."""
        if self.http.serving:
            raise AggregatorError(f"the API is already serving on port {self.port}")
        try:
            return self.http.start(host, port)
        except H.HTTPServiceError as e:
            raise AggregatorError(str(e)) from e

    @property
    def port(self) -> int:
        if not self.http.serving:
            raise AggregatorError("the API is not serving")
        return self.http.port

    def stop(self) -> None:
        """Stop serving and close the socket; a no-op if not serving."""
        self.http.stop()

    def refuse(self, reason: str) -> None:
        """Count a POST refused before it reached the ledger (/metrics' rejected_total)."""
        with self._lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1

    def _refused(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self.refused)

    # -- in process -----------------------------------------------------------------------------
    def get(self, target: str, token: str | None = None) -> Answer:
        """(status, content type, body) of GET `target` (path and query), in process, with
        `token` as the bearer token if given."""
        a = self.http.call("GET", target, headers=[("Authorization", f"Bearer {token}")]
                           if token is not None else [])
        return a.status, a.content_type, a.body

    def post(self, target: str, body: bytes, auth: str | None = None) -> Answer:
        """POST `target` in process; `auth` is the Authorization header, if any."""
        a = self.http.call("POST", target, body,
                           [("Authorization", auth)] if auth is not None else [])
        return a.status, a.content_type, a.body

    # -- POST ------------------------------------------------------------------------------------
    def _submit(self, req: H.Request) -> dict[str, Any]:
        """Submit one transaction (the raw COSE_Sign1 bytes); answers once it is sealed.

        200 with where it landed; 400 with the chain's reason; 409 duplicate with where the
        same bytes landed before; 503 while the ledger cannot seal.
        """
        if not req.body:
            self.refuse("malformed")
            raise APIError(400, "malformed", "the body is empty: POST /v1/tx takes one "
                                             "transaction, its COSE_Sign1 message bytes")
        try:
            r = self.ledger.submit(req.body)
        except DuplicateError as e:
            raise H.HTTPError(409, "duplicate", **_receipt(e.receipt)) from None
        except ChainError as e:
            held = self._refusals(e.reason)
            if held is not None:  # once a minute per reason: a sender cannot flood the log
                log.info("transaction refused: %s: %s%s", e.reason, e.detail,
                         f" ({held} more refused for {e.reason} since the last line)"
                         if held else "")
            raise APIError(400, e.reason, e.detail) from None
        return _receipt(r)

    def _decide(self, req: H.Request) -> dict[str, Any]:
        """Approve or dismiss an open suggestion (operator: the dispatch token).

        `action` is approve or dismiss; `Authorization: Bearer` with the data dir's
        dispatch.token. Approving signs and submits its instruction.
        """
        sid, action = req.params["id"], req.params["action"]
        if action not in _ACTIONS:
            raise APIError(404, "not_found", f"{_POSTS}, not {_show(req.path)}")
        if not _SID.fullmatch(sid):
            raise APIError(404, "not_found", f"no suggestion {_show(sid)}: an id is the hex "
                           "`id` that GET /v1/suggestions lists (`meterledger chain "
                           "suggestions`)")
        d = self._dispatch()
        if action == "dismiss":
            return d.dismiss(sid).as_json()
        d.refresh()
        try:
            r = d.approve(sid)
        except ChainError as e:
            raise APIError(400, e.reason, e.detail) from None
        return {"instruction": r.digest.hex(), "height": r.height, "index": r.index}

    def _dispatch(self) -> Dispatcher:
        if self.dispatcher is None:
            raise APIError(404, "not_found", "this node serves no suggestions")
        return self.dispatcher

    # -- GET -------------------------------------------------------------------------------------
    def _head(self, req: H.Request) -> dict[str, Any]:
        """The newest block: height, hash, signed header, chain id, sealer key, state root,
        and its time: the chain's time, what the next transaction's rules read."""
        h = self.ledger.head()
        return {"height": h.height, "hash": h.hash.hex(), "header": h.header.hex(),
                "chain": h.chain.hex(), "sealer_pub": h.sealer_pub.hex(),
                "state_root": h.state_root.hex(), "engine": h.engine,
                "time": header_time(h.header)}

    def _block(self, req: H.Request) -> dict[str, Any]:
        """One block by its height: the signed header, the transactions, both decoded.

        `decoded`: `header` (its fields by name), `time`, `proposer`, `proposer_name` and
        `txs` (each transaction by name: meterledger.wire.decoded).
        """
        text = req.params["height"]
        if not _DIGITS.fullmatch(text):
            raise _bad(f"block height must be a non-negative decimal integer, not {_show(text)}")
        height = int(text)
        if height > INT64_MAX:
            raise NotFoundError(f"no block {height}")
        b = self.ledger.block(height)
        return {"height": b.height, "hash": b.hash.hex(), "header": b.header.hex(),
                "txs": [t.hex() for t in b.txs], "decoded": self.reads.block_decoded(b)}

    def _tx(self, req: H.Request) -> dict[str, Any]:
        """One transaction by its digest, with its inclusion path in its block's header.

        `decoded` is the transaction by name (kind, from, nonce, body, t, chain).
        """
        t = self.ledger.tx(tx_digest(req.params["digest"], "a transaction digest"))
        doc = {"digest": t.digest.hex(), "height": t.height, "index": t.index,
               "tx": t.tx.hex(), "path": [p.hex() for p in t.path], "header": t.header.hex(),
               "decoded": decoded(t.tx)}
        if t.finality is not None:  # the consortium's: CometBFT's signed header and proof
            doc["finality"] = t.finality
        return doc

    def _anchors(self, req: H.Request) -> dict[str, Any]:
        """A fog's anchors on the chain, oldest first."""
        fog = _Query(req.query).fog()
        return {"fog": fog.hex(), "anchors": [
            {"height": a.height, "index": a.index, "digest": a.digest.hex(), "first": a.first,
             "last": a.last, "size": a.size, "root": a.root.hex()}
            for a in self.ledger.anchors(fog)]}

    def _instructions(self, req: H.Request) -> dict[str, Any]:
        """The instructions for a fog, in blocks above `after` (default: every block)."""
        q = _Query(req.query)
        fog = q.fog()
        return {"instructions": [
            {"height": i.height, "index": i.index, "digest": i.digest.hex(), "tx": i.tx.hex()}
            for i in self.ledger.instructions(fog, q.after())]}

    def _aggregates(self, req: H.Request) -> dict[str, Any]:
        """A fog's feeder aggregates anchored on the chain (one feeder's, above `after`)."""
        q = _Query(req.query)
        fog = q.fog()
        feeder = q.values.get("feeder")
        if feeder is not None and not feeder:
            raise _bad("feeder must not be empty")
        return {"aggregates": [
            {"height": a.height, "index": a.index, "digest": a.digest.hex(), "fog": a.fog.hex(),
             "feeder": a.feeder, "ivl": a.ivl, "rev": a.rev, "msg": a.msg.hex()}
            for a in self.ledger.aggregates(fog, feeder, q.after())]}

    def _rules(self, req: H.Request) -> dict[str, Any]:
        """The rule sets registered on the chain, with their text."""
        return {"rules": [
            {"name": r.name, "version": r.version, "digest": r.digest.hex(),
             "height": r.height, "index": r.index, "text": r.text}
            for r in self.ledger.rules()]}

    def _suggestions(self, req: H.Request) -> dict[str, Any]:
        """The dispatcher's suggestions (those in one `state`), with their aggregates.

        Each also lists `aggregates`: the anchored aggregates that triggered it (`ivl`,
        `value` of the rule's metric, `digest` as /v1/aggregates names it, `rev`, and the
        anchor's `height` and `index`). The newest `limit` (recorded before `before`), listed
        oldest first; `next` is the following (older) page's `before`, null when none.
        """
        state = req.query.get("state")
        if state is not None and state not in STATES:
            raise _bad(f"state must be one of {', '.join(STATES)}, not {_show(state)}")
        limit = bounded(req.query, "limit", SUGGESTIONS)
        older = before(req.query)
        listed, nxt = self._dispatch().suggestion_page(state, older, limit)
        return {"suggestions": [s.as_json() for s in listed], "next": nxt}

    def _participants(self, req: H.Request) -> dict[str, Any]:
        """The registered participants: id, role, key, name and last nonce."""
        return {"participants": [
            {"id": p.id.hex(), "role": p.role, "pub": p.pub.hex(), "name": p.name,
             "nonce": p.nonce} for p in self.ledger.participants()]}

    def _health(self, req: H.Request) -> dict[str, Any]:
        """Liveness: the chain id, its height and the transactions pending."""
        h = self.ledger.head()
        return {"ok": True, "chain": h.chain.hex(), "height": h.height,
                "pending": self.ledger.stats().pending}

    def _metrics(self, req: H.Request) -> H.Reply:
        """The chain's counters in the Prometheus text format (0.0.4)."""
        return H.Reply(exposition(self.metrics), content_type=PROMETHEUS)
