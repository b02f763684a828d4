"""The consortium's Ledger: the seam's interface over one validator's ABCI app and its
CometBFT node, so the aggregator's HTTP API, the dispatch application and the fog's chain
link work unchanged in front of either backend.

submit() hands the transaction to CometBFT (broadcast_tx_sync: CheckTx against the mempool's
view answers a refusal at once, with its reason) and returns once a committed block holds it,
or refuses it with the reason that block gave. Reads come from the app's committed store.
A transaction not committed within `commit_timeout` is UnavailableError: it may still land
(it stays in the mempools), and the same bytes sent again are then answered as a duplicate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aggregator.chain.backends.cometbft.app import BlockRecord, ChainApp, Outcome
from aggregator.chain.backends.cometbft.rpc import CometRPC, RPCError, RPCUnavailable
from aggregator.chain.backends.cometbft.validators import ValidatorWatch
from aggregator.chain.backends.store_reads import StoreReads
from aggregator.chain.ledger import (
    Block,
    BlockMeta,
    ChainError,
    DuplicateError,
    Head,
    Latency,
    LatencyRing,
    LedgerStats,
    NotFoundError,
    Receipt,
    StorageError,
    TxView,
    UnavailableError,
)
from aggregator.chain.store import BlockStore
from meterledger import wire as P
from meterledger.wire import chain as C

Clock = Callable[[], float]


class CometLedger(StoreReads):
    """The Ledger of one consortium validator (see the module doc)."""

    def __init__(self, app: ChainApp, rpc: CometRPC, commit_timeout: float = 30.0,
                 clock: Clock = time.monotonic, network: Path | None = None) -> None:
        """`network`: the network folder (genesis.json, network.json) for /v1/validators;
        without one the local node's /genesis names the validators."""
        if app.chain_id is None:
            raise StorageError("the validator's app has no genesis yet: start its CometBFT "
                               "node first")
        self._app = app
        self._rpc = rpc
        self._timeout = commit_timeout
        self._clock = clock
        self._chain = app.chain_id
        self._accepted: dict[str, int] = {}
        self._rejected: dict[str, int] = {}
        self._count_lock = threading.Lock()  # the API's threads count at once
        self._closed = False
        self._latency = LatencyRing()
        self._watch = ValidatorWatch(rpc, network)

    @property
    def chain_id(self) -> bytes:
        return self._chain

    def _reject(self, e: ChainError) -> ChainError:
        with self._count_lock:
            self._rejected[e.reason] = self._rejected.get(e.reason, 0) + 1
        return e

    # -- submit --------------------------------------------------------------------------------
    def submit(self, tx_raw: bytes) -> Receipt:
        raw = bytes(tx_raw)
        start = time.monotonic()
        if self._closed:
            raise UnavailableError("the ledger is closed")
        digest = P.digest(raw)
        known = self._app.store.receipt(digest)
        if known is not None:
            raise self._reject(DuplicateError(known))
        try:
            r = self._rpc.broadcast(raw)
        except RPCUnavailable as e:
            raise UnavailableError(f"{e}; send the same bytes again (one that landed is "
                                   "answered as a duplicate)") from None
        except RPCError as e:
            if "already exists in cache" not in str(e):  # else: in a mempool, wait for it
                raise UnavailableError(f"{e}; send again") from None
        else:
            if int(r.get("code", 0)) != 0:
                # CometBFT's JSON gives CheckTx's data as hex (its HexBytes)
                reason = bytes.fromhex(r.get("data") or "").decode(errors="replace")
                detail = str(r.get("log", "")).split(": ", 1)[-1]
                known = self._app.store.receipt(digest)
                if reason == "duplicate" and known is not None:  # committed meanwhile
                    raise self._reject(DuplicateError(known))
                raise self._reject(ChainError(reason or "refused", detail))
        outcome = self._wait(digest)
        if outcome.receipt is None:
            raise self._reject(ChainError(outcome.reason, outcome.detail))
        kind = _kind(raw)
        with self._count_lock:
            self._accepted[kind] = self._accepted.get(kind, 0) + 1
        self._latency.add(outcome.receipt.height, time.time(),
                          (time.monotonic() - start) * 1000)
        return outcome.receipt

    def _wait(self, digest: bytes) -> Outcome:
        deadline = self._clock() + self._timeout
        with self._app.committed:
            while True:
                outcome = self._app.outcome(digest)
                if outcome is not None:
                    return outcome
                left = deadline - self._clock()
                if left <= 0 or self._closed:
                    raise UnavailableError(
                        f"transaction {digest.hex()} was not committed within "
                        f"{self._timeout:g} s (fewer than 2/3 of the validators may be up); "
                        "it may still land: send the same bytes again, a landed one is "
                        "answered as a duplicate")
                self._app.committed.wait(min(left, 1.0))

    # -- reads ---------------------------------------------------------------------------------
    @property
    def _reads(self) -> BlockStore:  # StoreReads: the seam's reads of derived state
        return self._app.store

    def head(self) -> Head:
        store = self._app.store
        h = store.height()
        b = store.block(h)
        root = store.state_root(h)
        if b is None or root is None:
            raise StorageError(f"block {h} cannot be read")
        return Head(b.height, b.hash, b.header, self._chain, b"", root, engine="cometbft")

    def block(self, height: int) -> Block:
        b = self._app.store.block(height) if height <= self._app.store.height() else None
        if b is None:
            raise NotFoundError(f"no block {height}: the head is block "
                                f"{self._app.store.height()}")
        return b

    def tx(self, digest: bytes) -> TxView:
        store = self._app.store
        r = store.receipt(digest)
        b = store.block(r.height) if r is not None else None
        if r is None or b is None:
            raise NotFoundError(f"no transaction {digest.hex()} is on the chain")
        return TxView(digest, r.height, r.index, b.txs[r.index],
                      tuple(C.tx_path(b.txs, r.index)), b.header,
                      self._finality(b.height, b.txs[r.index]))

    def _finality(self, height: int, raw: bytes) -> dict[str, Any] | None:
        """CometBFT's signed header of the block and the transaction's proof in its data
        hash; None for block 0 (the genesis is in genesis.json). UnavailableError while the
        node is away or has not indexed the block yet (it indexes after the app's Commit):
        a view without its proof would be taken for an embedded chain's."""
        if height == 0:
            return None
        try:
            signed = self._rpc.commit(height)["signed_header"]
            proof = self._rpc.tx_proof(raw)
        except (RPCUnavailable, RPCError, KeyError, ValueError) as e:
            raise UnavailableError(f"CometBFT's proof of block {height} is not available "
                                   f"yet ({e}); ask again") from None
        if proof["height"] != height:
            raise StorageError(f"CometBFT holds transaction {P.digest(raw).hex()} in block "
                               f"{proof['height']}, the app in block {height}")
        return {"signed_header": signed, "tx_proof": proof["proof"]}

    def block_meta(self, blocks: Sequence[Block], proposers: bool = True) -> list[BlockMeta]:
        """Each block record's fields; the proposer from CometBFT's header (/blockchain,
        kept once read), named by the genesis; none for block 0 or while CometBFT is away."""
        records = [(b.height, BlockRecord.decode(b.header)) for b in blocks]
        found: dict[int, bytes] = {}
        names: dict[str, str] = {}
        if proposers:
            found = self._watch.proposers([h for h, _ in records])
            try:
                names = self._watch.names() if found else {}
            except UnavailableError:
                names = {}
        out = []
        for h, r in records:
            header = {"chain": r.chain.hex(), "height": r.height, "hash": r.hash.hex(),
                      "ntx": r.ntx, "t": r.time_s, "t_ns": r.time_ns,
                      "chain_name": r.chain_name}
            who = found.get(h, b"")
            out.append(BlockMeta(h, r.time_s, header, who, names.get(who.hex(), "")))
        return out

    def latencies(self, limit: int) -> list[Latency]:
        return self._latency.newest(limit)

    def validators(self, commits: int = 20) -> dict[str, Any]:
        return self._watch.view(commits, self._app.store.height())

    def stats(self) -> LedgerStats:
        with self._count_lock:
            accepted, rejected = dict(self._accepted), dict(self._rejected)
        return LedgerStats(accepted, rejected, 0, accepted.get(C.ANCHOR, 0), 0)

    def record(self, height: int) -> BlockRecord:
        return BlockRecord.decode(self.block(height).header)

    def close(self) -> None:
        self._closed = True
        with self._app.committed:
            self._app.committed.notify_all()


def _kind(raw: bytes) -> str:
    kind: str = P.parse(raw, schema=False).fields[3]
    return kind
