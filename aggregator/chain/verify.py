"""verify-chain: replay a chain from genesis and check everything a block can get wrong.

For each block, in order: the header is a type-13 message signed by the sealer (the key
genesis registers, which must equal a trusted key when one is given), its height counts
from 0, prev is the previous header's digest (zeros at genesis), chain is the chain id,
t never goes backwards and ntx is the number of transactions; then every transaction is
checked by the same Validator the ledger uses, against the state replayed so far (genesis
by Validator.check_genesis); then txroot. The first failure raises VerifyError naming the
block height, the transaction index where there is one, and the reason.

`check_derived` compares a store's derived state (what the Validator of a running node
reads) with the replayed one, so an edited participants or anchors table is found too, and
every state root the store holds with the root the replay computes (reason `state_root`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aggregator.chain.app.kinds.register import Registers
from aggregator.chain.app.state import ZERO_ROOT, Effect, MemoryState, block_state_root
from aggregator.chain.app.validator import Validator
from aggregator.chain.ledger import (
    AggregatorError,
    ChainError,
    Receipt,
)
from aggregator.chain.store import BlockStore, StoredBlock
from meterledger import wire as P
from meterledger.errors import ProtocolError
from meterledger.wire import chain as C


class VerifyError(AggregatorError):
    """The first thing wrong with a chain: block `height` (None: not in a block), transaction
    `index` (None: the header or the block as a whole), a stable `reason`, and the detail."""

    def __init__(self, height: int | None, index: int | None, reason: str, detail: str) -> None:
        where = "derived state" if height is None else f"block {height}"
        if index is not None:
            where += f" tx {index}"
        super().__init__(f"{where}: {reason}: {detail}")
        self.height, self.index, self.reason, self.detail = height, index, reason, detail


@dataclass(frozen=True)
class Summary:
    chain: bytes
    height: int
    txs: int
    participants: int
    anchors: int
    sealer: bytes
    pinned: bool  # the sealer was checked against a trusted key, not only taken from genesis

    def line(self) -> str:
        trust = "trusted key" if self.pinned else "key from genesis, not pinned"
        return (f"chain {self.chain.hex()} ok: {self.height + 1} blocks (0..{self.height}), "
                f"{self.txs} transactions, {self.participants} participants, {self.anchors} "
                f"anchors; sealer {P.party_id(self.sealer).hex()} ({trust})")


class Replay:
    """Replays blocks one at a time (see the module doc); `state` is the replayed state."""

    def __init__(self, trusted: P.PublicKey | None = None) -> None:
        self.trusted = trusted
        self.state = MemoryState()
        self.sealer: P.PublicKey | None = None
        self.validator: Validator | None = None
        self.height = -1
        self.prev = P.ZERO32
        self.t = 0
        self.txs = 0
        self.anchors = 0
        self.state_root = ZERO_ROOT  # after the newest replayed block
        self.state_roots: list[tuple[int, bytes]] = []

    def block(self, b: StoredBlock) -> None:
        h = self.height + 1
        if b.height != h:
            raise VerifyError(h, None, "missing_block", f"the chain goes on with block {b.height}")
        try:
            m = P.parse(b.header, schema=False)
        except ProtocolError as e:
            raise VerifyError(h, None, e.reason, f"header: {e}") from None
        if m.type != C.BLOCK:
            raise VerifyError(h, None, "wrong_type", f"header is a type {m.type} message")
        f: dict[Any, Any] = m.fields
        if h == 0:
            self._genesis(b, f)
        assert self.sealer is not None and self.validator is not None
        try:
            P.verify_message(m, self.sealer)
        except ProtocolError as e:
            raise VerifyError(h, None, e.reason, f"header: {e}") from None
        for cond, reason, detail in (
                (f[2] != h, "bad_height", f"header says height {f[2]}"),
                (f[3] != self.prev, "bad_prev", "prev is not the previous header's digest"),
                (f[7] != self.validator.chain, "wrong_chain", f"header names chain {f[7].hex()}"),
                (f[6] < self.t, "t_backwards", f"t {f[6]} is before the previous block's {self.t}"),
                (f[5] != len(b.txs), "bad_ntx", f"header says {f[5]} transactions, the block "
                                                f"holds {len(b.txs)}")):
            if cond:
                raise VerifyError(h, None, reason, detail)
        effects = self.replay_txs(h, b.txs)
        if f[4] != C.tx_root(b.txs):
            raise VerifyError(h, None, "bad_txroot", "txroot is not the root of the block's "
                                                     "transactions")
        self.prev, self.t = m.digest, f[6]
        self.close_block(h, effects)

    def replay_txs(self, h: int, txs: tuple[bytes, ...]) -> list[Effect]:
        """Check block `h`'s transactions in order against the replayed state and apply
        them; VerifyError at the first one the rules refuse."""
        assert self.validator is not None
        effects: list[Effect] = []
        self.state.time = self.chain_time()  # the block before: what the ledger's rules read
        for i, raw in enumerate(txs):
            try:
                effect = (self.validator.check_genesis(raw) if h == 0
                          else self.validator.check(raw, self.state))
            except ChainError as err:
                raise VerifyError(h, i, err.reason, err.detail) from None
            self.state.apply(effect, Receipt(effect.digest, h, i))
            self.anchors += effect.kind == C.ANCHOR
            effects.append(effect)
        return effects

    def chain_time(self) -> int:
        """The block time of the newest block replayed (0 before the genesis)."""
        return self.t

    def close_block(self, h: int, effects: list[Effect]) -> None:
        """Block `h` replayed: count it and compute the state root after it."""
        self.height = h
        self.txs += len(effects)
        self.state_root = block_state_root(self.state_root, h, effects)
        self.state_roots.append((h, self.state_root))

    def _genesis(self, b: StoredBlock, f: dict[Any, Any]) -> None:
        self.genesis(b, f.get(7))

    def genesis(self, b: StoredBlock, chain: Any) -> None:
        """Block 0 of chain `chain`: one transaction, the dispatch key registering itself
        (the trusted key, when one is given)."""
        if not isinstance(chain, bytes) or len(b.txs) != 1:
            raise VerifyError(0, None, "bad_genesis", "genesis must name a chain id and hold "
                                                      "exactly one transaction")
        try:
            effect = Validator(chain).check_genesis(b.txs[0])
        except ChainError as e:
            raise VerifyError(0, 0, e.reason, e.detail) from None
        assert isinstance(effect, Registers)
        sealer = P.PublicKey(effect.participant.pub)
        if self.trusted is not None and sealer != self.trusted:
            raise VerifyError(0, 0, "untrusted_sealer", f"genesis registers {sealer.id_hex}, "
                                                        f"not the trusted {self.trusted.id_hex}")
        self.sealer, self.validator = sealer, Validator(chain)

    def summary(self) -> Summary:
        if self.validator is None or self.sealer is None:
            raise VerifyError(0, None, "missing_block", "the chain has no genesis block")
        return Summary(self.validator.chain, self.height, self.txs,
                       len(self.state.participants), self.anchors, self.sealer.raw,
                       self.trusted is not None)


def verify_blocks(blocks: Iterable[StoredBlock], trusted: P.PublicKey | None = None) -> Replay:
    """Replay `blocks` (from genesis, in order); raises VerifyError at the first failure."""
    replay = Replay(trusted)
    for b in blocks:
        replay.block(b)
    replay.summary()  # raises for an empty chain
    return replay


def store_blocks(store: BlockStore) -> Iterable[StoredBlock]:
    top = store.height()
    for h in range(top + 1):
        b = store.block(h)
        if b is None:
            raise VerifyError(h, None, "missing_block", f"block {h} is missing below the "
                                                        f"head {top}")
        yield b


def replay_state_roots(store: BlockStore) -> list[tuple[int, bytes]]:
    """The state root after every block of `store`, by replaying it (a chain written before
    state roots existed); raises VerifyError if the chain does not replay."""
    return verify_blocks(store_blocks(store)).state_roots


def check_derived(store: BlockStore, replay: Replay) -> None:
    """The store's derived state equals the replayed one (through the replayed height),
    and so does every state root it stored."""
    for h, root in replay.state_roots:
        stored_root = store.state_root(h)
        if stored_root is not None and stored_root != root:
            raise VerifyError(h, None, "state_root",
                              f"the store's state root {stored_root.hex()} differs from the "
                              f"replayed {root.hex()}")
    stored = {p.id: p for p in store.participants()}
    replayed = replay.state.participants
    for pid in sorted(set(stored) | set(replayed)):
        if stored.get(pid) != replayed.get(pid):
            raise VerifyError(None, None, "derived_state",
                              f"participant {pid.hex()} is {stored.get(pid)} in the store but "
                              f"{replayed.get(pid)} by the blocks")
    for fog in replay.state.heads:
        if store.anchored(fog) != replay.state.heads[fog]:
            raise VerifyError(None, None, "derived_state",
                              f"the last anchor of fog {fog.hex()} differs from the blocks'")
    fogs = {a.fog for a in replay.state.aggregate_views}
    fogs |= {a.fog for a in store.aggregates(None, None, -1)}
    for fog in sorted(fogs):
        mine = [a for a in replay.state.aggregate_views if a.fog == fog]
        if store.aggregates(fog, None, -1) != mine:
            raise VerifyError(None, None, "derived_state",
                              f"the anchored aggregates of fog {fog.hex()} differ from the "
                              "blocks'")
    if store.rules() != replay.state.rule_views:
        raise VerifyError(None, None, "derived_state",
                          "the registered rule sets differ from the blocks'")
    replayed_records = replay.state.records
    for table in sorted({t for t, _ in replayed_records}):  # nothing more in the store
        for key, value in store.records(table):
            if replayed_records.get((table, key)) != value:
                raise VerifyError(None, None, "derived_state",
                                  f"application record {table} {key.hex()} differs from the "
                                  "blocks'")
    for (table, key), value in sorted(replayed_records.items()):
        if store.record(table, key) != value:
            raise VerifyError(None, None, "derived_state",
                              f"application record {table} {key.hex()} is missing or "
                              "differs in the store")
    for digest, r in replay.state.receipts.items():
        if store.receipt(digest) != r:
            raise VerifyError(None, None, "derived_state",
                              f"the store places transaction {digest.hex()} elsewhere than "
                              f"block {r.height} index {r.index}")
