"""The chain's state root (aggregator.chain.app.state): one value per block that every replica
computes alike from the blocks, and that changes with any change of the state."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.chain.app.kinds.register import Registers
from aggregator.chain.app.state import (
    ZERO_ROOT,
    Effect,
    WriteSet,
    apply_effect,
    block_state_root,
)
from aggregator.chain.backends.embedded import EmbeddedLedger, create_genesis
from aggregator.chain.ledger import Participant, Receipt
from aggregator.chain.store import BlockStore, MemoryBlockStore, SQLiteBlockStore
from aggregator.chain.verify import check_derived, store_blocks, verify_blocks
from meterledger import wire as P
from meterledger.wire import chain as C
from tests.kit.chainkit import T0

DISPATCH = P.SigningKey.from_int(0xD15)
FOGS = [P.SigningKey.from_int(0xF00 + i) for i in range(3)]


def _fill(store: BlockStore) -> EmbeddedLedger:
    create_genesis(store, DISPATCH, T0)
    ledger = EmbeddedLedger(store, DISPATCH, lambda: float(T0 + 5))
    for n, fog in enumerate(FOGS, start=2):
        ledger.submit(P.sign1(DISPATCH, C.tx(DISPATCH.id, n, C.REGISTER,
                                             C.register_body("fog", fog.public_key.raw, f"f{n}"),
                                             T0, DISPATCH.id)))
    return ledger


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_every_block_root_equals_the_replayed_one(kind: str, tmp_path: Path) -> None:
    store: BlockStore = MemoryBlockStore() if kind == "memory" else SQLiteBlockStore(
        tmp_path / "chain.db")
    ledger = _fill(store)
    try:
        replay = verify_blocks(store_blocks(store), DISPATCH.public_key)
        assert [h for h, _ in replay.state_roots] == list(range(store.height() + 1))
        assert [store.state_root(h) for h, _ in replay.state_roots] == \
            [r for _, r in replay.state_roots]
        assert ledger.head().state_root == replay.state_root
        assert len(set(r for _, r in replay.state_roots)) == len(replay.state_roots)  # chained
        check_derived(store, replay)
    finally:
        ledger.close()
        store.close()


def test_two_stores_with_the_same_blocks_have_the_same_roots(tmp_path: Path) -> None:
    a, b = MemoryBlockStore(), SQLiteBlockStore(tmp_path / "b.db")
    la, lb = _fill(a), _fill(b)
    try:
        assert la.head().state_root == lb.head().state_root
        assert [a.state_root(h) for h in range(4)] == [b.state_root(h) for h in range(4)]
    finally:
        la.close()
        lb.close()
        a.close()
        b.close()


def _register(name: str, nonce: int) -> Registers:
    who = P.SigningKey.from_int(0xABC)
    e = Effect(b"raw-" + name.encode(), bytes([nonce]) * 32, DISPATCH.id, nonce, C.REGISTER)
    p = Participant(who.id, "fog", who.public_key.raw, name, 0)
    return Registers(e.raw, e.digest, e.sender, e.nonce, e.kind, p)


def test_the_root_commits_to_every_written_value_and_to_the_past() -> None:
    base = block_state_root(ZERO_ROOT, 1, [_register("f", 2)])
    assert base == block_state_root(ZERO_ROOT, 1, [_register("f", 2)])  # deterministic
    assert base != block_state_root(ZERO_ROOT, 1, [_register("g", 2)])  # a name
    assert base != block_state_root(ZERO_ROOT, 1, [_register("f", 3)])  # a nonce
    assert base != block_state_root(ZERO_ROOT, 2, [_register("f", 2)])  # the height
    assert base != block_state_root(b"\x01" * 32, 1, [_register("f", 2)])  # the past
    assert base != block_state_root(ZERO_ROOT, 1, [])


def test_the_write_set_is_sorted_and_keeps_the_last_write_of_a_key() -> None:
    ws = WriteSet()
    e1, e2 = _register("f", 2), Effect(b"x", b"\x07" * 32, DISPATCH.id, 3, C.FAULT)
    apply_effect(ws, e1, Receipt(e1.digest, 1, 0))
    apply_effect(ws, e2, Receipt(e2.digest, 1, 1))
    leaves = ws.leaves()
    assert leaves == sorted(leaves) and len(leaves) == len(set(leaves))
    nonces = [P.decode(x) for x in leaves if P.decode(x)[0] == "nonce"]
    assert nonces == [["nonce", DISPATCH.id, 3]]  # the sender's two nonces: the last one
    with pytest.raises(Exception, match="place on the chain"):
        apply_effect(WriteSet(), e1, None)
