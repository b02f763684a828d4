"""Helpers for tests that need a dispatch chain: a real aggregator, in-process, on loopback.

    from tests.kit.chainkit import running_chain, FogSide

    with running_chain(tmp_path) as chain:        # data dir tmp_path/"aggregator", HTTP port 0
        fog_key = chain.register("fog", name="fog-1")   # a new key, registered (block sealed)
        status, doc = chain.post(chain.sign(fog_key, "fault", body))   # HTTP POST /v1/tx
        chain.url, chain.key (the dispatch SigningKey), chain.chain_id, chain.ledger

`chain.sign` signs a type-12 transaction with the sender's next nonce as the chain knows it
(pass nonce= to choose one). `FogSide` is a fog's log and checkpoints (real fog_node stores)
that builds anchor bodies the way a fog must: every checkpoint since the last anchored one
and the consistency proof from it, with the type-11 aggregates logged since the last anchor
(`close_interval` logs one interval close's aggregates, chained through prev, and seals a
checkpoint with ivl and agg) and the type-14 energy statements (`state`). The chain also serves suggestions: `chain.dispatcher`, and
`chain.token` for `chain.post_auth`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.chain.backends.embedded import EmbeddedLedger
from aggregator.chain.service.api import AggregatorAPI
from aggregator.chain.service.node import ensure_token, init_data_dir, open_ledger
from aggregator.dispatch.suggestions import Dispatcher, open_dispatcher
from fog_node.log.checkpoints import Checkpoint, Checkpoints
from fog_node.log.store import MemoryLogStore
from meterledger import wire as P
from meterledger.wire import chain as C

T0 = 1_800_000_000


def http(url: str, method: str = "GET", body: bytes | None = None,
         token: str | None = None) -> tuple[int, dict[str, Any]]:
    """(status, JSON answer) of one request; HTTP errors are answers, not exceptions."""
    headers = {"Content-Type": "application/cbor"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as resp:
        text: str = resp.read().decode()
        return text


@dataclass
class Chain:
    """A running aggregator: its URL, dispatch key, chain id, ledger and data dir."""

    url: str
    key: P.SigningKey
    chain_id: bytes
    ledger: EmbeddedLedger
    api: AggregatorAPI
    data_dir: Path
    dispatcher: Dispatcher
    token: str

    def next_nonce(self, key: P.SigningKey) -> int:
        p = self.ledger.participant(key.id)
        return (p.nonce if p is not None else 0) + 1

    def sign(self, key: P.SigningKey, kind: str, body: dict[int, Any], nonce: int | None = None,
             t: int = T0, chain: bytes | None = None, check: bool = True) -> bytes:
        n = self.next_nonce(key) if nonce is None else nonce
        fields = C.tx(key.id, n, kind, body, t, self.chain_id if chain is None else chain)
        return P.sign1(key, fields, check=check)

    def post(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        return http(self.url + "/v1/tx", "POST", raw)

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return http(self.url + path)

    def post_auth(self, path: str, token: str | None = "") -> tuple[int, dict[str, Any]]:
        """POST an empty body to `path` with the chain's token ("" default), another one, or
        (None) no Authorization header."""
        return http(self.url + path, "POST", b"", self.token if token == "" else token)

    def register(self, role: str = "fog", key: P.SigningKey | None = None,
                 name: str = "") -> P.SigningKey:
        """Register `key` (default: a new one) with `role`, signed by the dispatch key."""
        key = key or P.SigningKey.generate()
        status, doc = self.post(self.sign(self.key, C.REGISTER,
                                          C.register_body(role, key.public_key.raw, name)))
        assert status == 200, doc
        return key

    def close(self) -> None:
        self.api.stop()
        self.dispatcher.store.close()
        self.ledger.close()


def start_chain(tmp_path: Path, clock: Callable[[], float] = time.time) -> Chain:
    """init a data dir under tmp_path and serve it on 127.0.0.1 (free port)."""
    data = tmp_path / "aggregator"
    key = init_data_dir(data, int(clock()))
    ledger = open_ledger(data, clock)
    dispatcher = open_dispatcher(ledger, key, data, clock)
    token = ensure_token(data)
    api = AggregatorAPI(ledger, clock, dispatcher, token)
    port = api.start("127.0.0.1", 0)
    return Chain(f"http://127.0.0.1:{port}", key, key.id, ledger, api, data, dispatcher, token)


@contextmanager
def running_chain(tmp_path: Path, clock: Callable[[], float] = time.time) -> Iterator[Chain]:
    chain = start_chain(tmp_path, clock)
    try:
        yield chain
    finally:
        chain.close()


def make_fog(chain: Chain, name: str = "fog") -> P.SigningKey:
    return chain.register("fog", name=name)


def aggregate_fields(fog: bytes, feeder: str, ivl: int, imp: int, exp: int = 0, *,
                     dur: int = 900, meters: int = 3, measured: int = 3, estimated: int = 0,
                     est_wh: int = 0, size: int = 0, prev: bytes = P.ZERO32, rev: int = 0,
                     replaces: bytes | None = None, alerts: Sequence[str] = (),
                     extra: dict[int, Any] | None = None) -> P.Fields:
    """A type-11 aggregate's fields; `extra` adds optional keys by number (e.g. {10: loss})
    or overrides any."""
    f: P.Fields = {0: P.AGGREGATE, 1: feeder, 2: ivl, 3: dur, 4: imp, 5: exp, 6: meters,
                   7: measured, 8: estimated, 9: est_wh, 13: sorted(alerts), 14: size,
                   15: prev, 16: rev, 17: fog, 19: b"\x5a" * 32}
    if replaces is not None:
        f[18] = replaces
    f.update(extra or {})
    return f


class FogSide:
    """A fog's log and signed checkpoints (fog_node's MemoryLogStore and Checkpoints)."""

    def __init__(self, tmp_path: Path, key: P.SigningKey | None = None, name: str = "fog") -> None:
        self.key = key or P.SigningKey.generate()
        self.log = MemoryLogStore()
        self.checkpoints = Checkpoints(tmp_path / f"{name}-{self.key.id_hex}.db", self.key,
                                       self.log)
        self.anchored: Checkpoint | None = None  # the last checkpoint given to anchor()
        self.pending_aggregates: list[bytes] = []  # logged since the last anchor()
        self.pending_statements: list[bytes] = []

    def grow(self, n: int, t: int = T0) -> Checkpoint:
        """Log n entries and seal a checkpoint over them."""
        size = self.log.size()
        self.log.append_batch([b"entry %d of %s" % (i, self.key.id) for i in
                               range(size, size + n)])
        cp = self.checkpoints.seal(t, force=True)
        assert cp is not None
        return cp

    def log_aggregates(self, fields: Sequence[P.Fields]) -> list[bytes]:
        """Sign and log aggregates as given (prev untouched: a test may break the chain)."""
        raws = [P.sign1(self.key, f) for f in fields]
        self.log.append_batch(raws)
        self.pending_aggregates += raws
        return raws

    def state(self, meter: bytes, ivl: int, exp: int, imp: int = 0, est: int = 0,
              dur: int = 900) -> bytes:
        """Log a type-14 energy statement of `meter` for interval `ivl` (its entries: the
        two log entries before it, standing for the readings) and return it."""
        size = max(2, self.log.size())
        if self.log.size() < 2:
            self.grow(2)
        f: P.Fields = {0: P.STATEMENT, 1: meter, 2: ivl, 3: dur, 4: imp, 5: exp, 6: est,
                       7: [size - 2, size - 1], 8: size, 17: self.key.id}
        raw = P.sign1(self.key, f)
        self.log.append_batch([raw])
        self.pending_statements.append(raw)
        return raw

    def close_interval(self, ivl: int, feeders: Sequence[dict[str, Any]],
                       t: int | None = None) -> list[bytes]:
        """Log one interval close: an aggregate per item of `feeders` (keyword arguments of
        aggregate_fields: feeder, imp, ...; ivl and the prev chain are filled in), then seal
        a checkpoint with ivl and agg = the last one's digest. Returns the aggregates."""
        prev, raws = P.ZERO32, []
        for item in feeders:
            item = {"size": self.log.size(), **item}
            f = aggregate_fields(self.key.id, ivl=ivl, prev=prev, **item)
            raws += self.log_aggregates([f])
            prev = P.digest(raws[-1])
        cp = self.checkpoints.seal(ivl if t is None else t, ivl=ivl, agg=prev, force=True)
        assert cp is not None
        return raws

    def anchor(self) -> dict[int, Any]:
        """An anchor body: every checkpoint since the last anchor() and the proof from it,
        and the aggregates logged since."""
        latest = self.checkpoints.latest()
        assert latest is not None, "seal a checkpoint first"
        first = self.anchored.height + 1 if self.anchored else 1
        cps = [self.checkpoints.at_height(h) for h in range(first, latest.height + 1)]
        since = self.anchored.size if self.anchored else 0
        proof = self.log.consistency_proof(since, latest.size).path
        self.anchored = latest
        aggs, self.pending_aggregates = self.pending_aggregates, []
        sts, self.pending_statements = self.pending_statements, []
        return C.anchor_body([c.msg for c in cps if c is not None], proof, aggs, sts)

    def close(self) -> None:
        self.checkpoints.close()
        self.log.close()
