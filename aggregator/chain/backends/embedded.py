"""The embedded backend: one sealer (the dispatch key), blocks group-sealed into a BlockStore.

submit() validates a transaction against the chain state plus everything validated but not
yet sealed (the pool), under one lock, so the pool is always a valid continuation of the
chain. Sealing is a group commit without a timer: a submitter whose transaction is not yet
sealed and finds no seal running becomes the sealer, takes the whole pool as the next
block, signs its header and writes it (the store makes it durable) outside the lock, while
new submissions validate and gather into the following pool. Then every submitter of the
block gets its receipt. Under load a block therefore holds everything that arrived during
the previous block's write; alone, a transaction is its own block.

If a write fails, every transaction of that block and of the pool is refused with
UnavailableError (their senders retry: the same bytes are then accepted, or answered as a
duplicate if they did land) and the state is reread from the store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aggregator.chain.app.state import ZERO_ROOT, Effect, MemoryState, block_state_root
from aggregator.chain.app.validator import Validator
from aggregator.chain.backends.store_reads import StoreReads
from aggregator.chain.ledger import (
    AggregatorError,
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
from aggregator.chain.store.base import header_time
from aggregator.chain.verify import replay_state_roots
from meterledger import wire as P
from meterledger.errors import ProtocolError
from meterledger.wire import chain as C
from meterledger.wire.decoded import decode_header

Clock = Callable[[], float]


def create_genesis(store: BlockStore, key: P.SigningKey, t: int, name: str = "dispatch") -> None:
    """Block 0: the dispatch key registers itself (role dispatch, nonce 1); the chain id is
    the key's id. Refuses a store that holds blocks already."""
    if store.height() >= 0:
        raise StorageError("the store holds a chain already; genesis is sealed once")
    raw = P.sign1(key, C.tx(key.id, 1, C.REGISTER,
                            C.register_body("dispatch", key.public_key.raw, name), t, key.id))
    effect = Validator(key.id).check_genesis(raw)
    header = P.sign1(key, C.block_header(key.id, 0, P.ZERO32, C.tx_root([raw]), 1, t, key.id))
    store.append(0, header, [effect], block_state_root(ZERO_ROOT, 0, [effect]))


@dataclass
class _Pending:
    effect: Effect
    done: bool = False
    receipt: Receipt | None = None
    error: str | None = None  # why its block was not sealed


@dataclass(frozen=True)
class _Tip:
    height: int
    hash: bytes
    header: bytes
    t: int
    state_root: bytes


@dataclass
class _Stats:
    accepted: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    blocks: int = 0
    anchors: int = 0

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


class EmbeddedLedger(StoreReads):
    """The Ledger of a single sealer over a BlockStore (see the module doc)."""

    def __init__(self, store: BlockStore, key: P.SigningKey, clock: Clock) -> None:
        genesis = store.block(0)
        if genesis is None:
            raise StorageError("the chain has no genesis block (run `python -m aggregator init`)")
        try:
            chain: bytes = P.parse(genesis.header, schema=False).fields[7]
        except (ProtocolError, KeyError) as e:
            raise StorageError(f"the genesis header cannot be read: {e}") from None
        if key.id != chain:
            raise AggregatorError(f"key {key.id_hex} is not the sealer of chain {chain.hex()}")
        self._store = store
        self._key = key
        self._clock = clock
        self._validator = Validator(chain)
        self._chain = chain
        self._cond = threading.Condition()
        self._pool: list[_Pending] = []
        self._pending: dict[bytes, _Pending] = {}
        self._overlay = MemoryState(store)
        self._sealing = False
        self._closed = False
        self._stats = _Stats()
        self._latency = LatencyRing()
        self._tip = self._read_tip()
        self._overlay.time = self._tip.t

    def _read_tip(self) -> _Tip:
        b = self._store.block(self._store.height())
        if b is None:
            raise StorageError("the chain's newest block cannot be read")
        t = header_time(b.header)
        root = self._store.state_root(b.height)
        if root is None:  # a chain written before state roots: compute them once by replay
            roots = replay_state_roots(self._store)
            self._store.put_state_roots(roots)
            root = roots[-1][1]
        return _Tip(b.height, b.hash, b.header, t, root)

    @property
    def chain_id(self) -> bytes:
        return self._chain

    # -- submit and group sealing ------------------------------------------------------------
    def submit(self, tx_raw: bytes) -> Receipt:
        raw = bytes(tx_raw)
        digest = P.digest(raw)
        start = time.monotonic()
        with self._cond:
            if self._closed:
                raise UnavailableError("the ledger is closed")
            p = self._pending.get(digest)
            duplicate = p is not None
            if p is None:
                try:
                    effect = self._validator.check(raw, self._overlay)
                except ChainError as e:
                    self._stats.reject(e.reason)
                    raise
                p = _Pending(effect)
                self._pool.append(p)
                self._pending[digest] = p
                self._overlay.apply(effect)
        self._seal_until(lambda: p.done)
        if p.error is not None:
            raise UnavailableError(p.error)
        assert p.receipt is not None
        if duplicate:  # the same bytes came in again while the first was being sealed
            with self._cond:
                self._stats.reject("duplicate")
            raise DuplicateError(p.receipt)
        self._latency.add(p.receipt.height, time.time(), (time.monotonic() - start) * 1000)
        return p.receipt

    def _seal_until(self, done: Callable[[], bool]) -> None:
        """Seal pools until done(); while another thread seals, wait for it."""
        while True:
            with self._cond:
                while not done() and self._sealing:
                    self._cond.wait()
                if done() or not self._pool:
                    return
                self._sealing = True
                batch, self._pool = self._pool, []
                tip = self._tip
                t = max(int(self._clock()), tip.t)  # block times never go backwards
                # what arrives while this block is sealed goes into the next one, whose
                # rules read this block's time as the chain's (State.chain_time)
                self._overlay.time = t
            new_tip: _Tip | None = None
            error: Exception | None = None
            try:
                new_tip = self._seal(tip, batch, t)
            except Exception as e:  # storage, or a bug: the batch must not hang its senders
                error = e
            with self._cond:
                self._sealing = False
                try:
                    if new_tip is not None:
                        self._sealed(new_tip, batch)
                    else:
                        self._failed(batch, error)
                finally:  # whatever happened, no waiter may sleep on
                    self._cond.notify_all()

    def _seal(self, tip: _Tip, batch: list[_Pending], t: int) -> _Tip:
        height = tip.height + 1
        txs = [p.effect.raw for p in batch]
        header = P.sign1(self._key, C.block_header(self._key.id, height, tip.hash,
                                                   C.tx_root(txs), len(txs), t, self._chain))
        effects = [p.effect for p in batch]
        root = block_state_root(tip.state_root, height, effects)
        self._store.append(height, header, effects, root)
        return _Tip(height, P.digest(header), header, t, root)

    def _sealed(self, tip: _Tip, batch: list[_Pending]) -> None:
        self._tip = tip
        self._stats.blocks += 1
        for i, p in enumerate(batch):
            p.receipt = Receipt(p.effect.digest, tip.height, i)
            p.done = True
            del self._pending[p.effect.digest]
            kind = p.effect.kind
            self._stats.accepted[kind] = self._stats.accepted.get(kind, 0) + 1
            if kind == C.ANCHOR:
                self._stats.anchors += 1
        self._rebuild_overlay()

    def _failed(self, batch: list[_Pending], error: Exception | None) -> None:
        why = (f"sealing block {self._tip.height + 1} failed: {error}; nothing of it was "
               "accepted, send again")
        for p in [*batch, *self._pool]:
            p.error, p.done = why, True
            self._stats.reject("unavailable")
        self._pool = []
        self._pending.clear()
        try:
            self._tip = self._read_tip()
        except AggregatorError:
            pass  # the store is gone; the next seal fails the same way
        self._rebuild_overlay()

    def _rebuild_overlay(self) -> None:
        overlay = MemoryState(self._store)
        overlay.time = self._tip.t
        for p in self._pool:
            overlay.apply(p.effect)
        self._overlay = overlay

    # -- reads -----------------------------------------------------------------------------------
    @property
    def _reads(self) -> BlockStore:  # StoreReads: the seam's reads of derived state
        return self._store

    def head(self) -> Head:
        with self._cond:
            tip = self._tip
        return Head(tip.height, tip.hash, tip.header, self._chain, self._key.public_key.raw,
                    tip.state_root)

    def block(self, height: int) -> Block:
        b = self._store.block(height) if height <= self.head().height else None
        if b is None:
            raise NotFoundError(f"no block {height}: the head is block {self.head().height}")
        return b

    def tx(self, digest: bytes) -> TxView:
        r = self._store.receipt(digest)
        b = self._store.block(r.height) if r is not None else None
        if r is None or b is None:
            raise NotFoundError(f"no transaction {digest.hex()} is on the chain")
        return TxView(digest, r.height, r.index, b.txs[r.index],
                      tuple(C.tx_path(b.txs, r.index)), b.header)

    def block_meta(self, blocks: Sequence[Block], proposers: bool = True) -> list[BlockMeta]:
        """Each header's fields; the proposer is its sealer (always the dispatch key)."""
        me = self._store.participant(self._chain) if proposers else None
        out = []
        for b in blocks:
            try:
                header = decode_header(b.header)
            except ProtocolError as e:
                raise StorageError(f"block {b.height}'s header cannot be read: {e}") from None
            sealer = bytes.fromhex(header["sealer"]) if proposers else b""
            out.append(BlockMeta(b.height, header["t"], header, sealer,
                                 me.name if me is not None and me.id == sealer else ""))
        return out

    def latencies(self, limit: int) -> list[Latency]:
        return self._latency.newest(limit)

    def validators(self, commits: int = 20) -> dict[str, Any]:
        """One sealer: the dispatch key (no commits to show)."""
        me = self._store.participant(self._chain)
        return {"engine": "embedded", "height": self.head().height,
                "sealer": {"id": self._chain.hex(), "pub": self._key.public_key.raw.hex(),
                           "name": me.name if me is not None else ""}}

    def stats(self) -> LedgerStats:
        with self._cond:
            s = self._stats
            return LedgerStats(dict(s.accepted), dict(s.rejected), s.blocks, s.anchors,
                               len(self._pool))

    def close(self) -> None:
        """Seal what is pending, refuse new transactions, close the store."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._seal_until(lambda: not self._pool and not self._sealing)
        self._store.close()
