"""One contract for both block stores (SQLite and the in-memory twin), then what only the
SQLite file can do: reopen, refuse a foreign file, open read-only, WAL + synchronous=FULL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.app.state import ZERO_ROOT, Effect, MemoryState, block_state_root
from aggregator.chain.app.validator import Validator
from aggregator.chain.backends.embedded import create_genesis
from aggregator.chain.ledger import (
    AnchorView,
    InstructionView,
    Participant,
    Receipt,
    StorageError,
)
from aggregator.chain.store import BlockStore, MemoryBlockStore, SQLiteBlockStore
from meterledger import wire as P
from meterledger.wire import anchor as A
from meterledger.wire import chain as C
from tests.kit.chainkit import T0, FogSide

DISPATCH = P.SigningKey.from_int(0xD15)
FOG = P.SigningKey.from_int(0xF06)
CHAIN = DISPATCH.id


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlockStore]:
    s: BlockStore = (MemoryBlockStore() if request.param == "memory"
                     else SQLiteBlockStore(tmp_path / "chain.db"))
    yield s
    s.close()


class Builder:
    """Builds valid blocks the way the ledger does: each tx checked by the Validator against
    the store plus the block so far."""

    def __init__(self, store: BlockStore, tmp_path: Path) -> None:
        self.store = store
        self.validator = Validator(CHAIN)
        self.nonces: dict[bytes, int] = {}
        self.fog = FogSide(tmp_path, FOG)

    def tx(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> bytes:
        self.nonces[key.id] = self.nonces.get(key.id, 1 if key is DISPATCH else 0) + 1
        return P.sign1(key, C.tx(key.id, self.nonces[key.id], kind, body, T0, CHAIN))

    def effects(self, raws: list[bytes]) -> list[Effect]:
        stage = MemoryState(self.store)
        out = []
        for raw in raws:
            e = self.validator.check(raw, stage)
            stage.apply(e)
            out.append(e)
        return out

    def append(self, raws: list[bytes]) -> list[Effect]:
        effects = self.effects(raws)
        h = self.store.height() + 1
        header = P.sign1(DISPATCH, C.block_header(DISPATCH.id, h, self.prev(), C.tx_root(raws),
                                                  len(raws), T0 + h, CHAIN))
        prev_root = self.store.state_root(h - 1)
        assert prev_root is not None
        self.store.append(h, header, effects, block_state_root(prev_root, h, effects))
        return effects

    def prev(self) -> bytes:
        b = self.store.block(self.store.height())
        assert b is not None
        return b.hash


def build(store: BlockStore, tmp_path: Path) -> tuple[Builder, dict[str, bytes]]:
    """genesis; a block registering the fog; one with an anchor, an instruction and its
    report; one with a second anchor and a fault."""
    create_genesis(store, DISPATCH, T0)
    b = Builder(store, tmp_path)
    reg = b.tx(DISPATCH, "register", C.register_body("fog", FOG.public_key.raw, "fog-1"))
    b.append([reg])
    b.fog.grow(5)
    anchor1 = b.tx(FOG, "anchor", b.fog.anchor())
    instr = b.tx(DISPATCH, "instruction", C.instruction_body(FOG.id, "limit", {1: 3000}, T0))
    report = b.tx(FOG, "report", C.report_body(P.digest(instr), 1, 0, 0, [7]))
    b.append([anchor1, instr, report])
    b.fog.grow(3)
    b.fog.grow(4)
    anchor2 = b.tx(FOG, "anchor", b.fog.anchor())
    fault = b.tx(FOG, "fault", C.fault_body("rs485", "silent", T0, "reset"))
    b.append([anchor2, fault])
    return b, {"reg": reg, "anchor1": anchor1, "instr": instr, "report": report,
               "anchor2": anchor2, "fault": fault}


def test_empty_store(store: BlockStore) -> None:
    assert store.height() == -1
    assert store.block(0) is None and store.block(-1) is None
    assert store.participants() == [] and store.participant(DISPATCH.id) is None
    assert store.receipt(b"\x00" * 32) is None and store.anchored(FOG.id) is None
    assert store.anchors(FOG.id) == [] and store.instructions(FOG.id, -1) == []


def test_blocks_and_derived_state(store: BlockStore, tmp_path: Path) -> None:
    b, txs = build(store, tmp_path)
    try:
        assert store.height() == 3
        blocks = [store.block(h) for h in range(4)]
        assert all(x is not None for x in blocks)
        assert [len(x.txs) for x in blocks if x] == [1, 1, 3, 2]
        b2 = blocks[2]
        assert b2 is not None and b2.txs == (txs["anchor1"], txs["instr"], txs["report"])
        assert b2.hash == P.digest(b2.header) and P.parse(b2.header).fields[4] == C.tx_root(b2.txs)
        assert store.block(4) is None
        # participants in registration order, with their last nonces
        assert store.participants() == [
            Participant(DISPATCH.id, "dispatch", DISPATCH.public_key.raw, "dispatch", 3),
            Participant(FOG.id, "fog", FOG.public_key.raw, "fog-1", 4)]
        assert store.participant(FOG.id) == store.participants()[1]
        for name, (h, i) in {"reg": (1, 0), "anchor1": (2, 0), "instr": (2, 1),
                             "report": (2, 2), "anchor2": (3, 0), "fault": (3, 1)}.items():
            d = P.digest(txs[name])
            assert store.receipt(d) == Receipt(d, h, i), name
        latest = b.fog.checkpoints.latest()
        assert latest is not None
        assert store.anchored(FOG.id) == A.AnchoredHead(3, 12, latest.root, latest.digest, T0)
        assert store.anchors(FOG.id) == [
            AnchorView(2, 0, P.digest(txs["anchor1"]), 1, 1, 5, b.fog.log.root(5)),
            AnchorView(3, 0, P.digest(txs["anchor2"]), 2, 3, 12, b.fog.log.root(12))]
        assert store.anchors(DISPATCH.id) == []
        d = P.digest(txs["instr"])
        assert store.instruction_fog(d) == FOG.id and store.instruction_fog(b"\x01" * 32) is None
        assert store.instructions(FOG.id, -1) == [InstructionView(2, 1, d, txs["instr"])]
        assert store.instructions(FOG.id, 1) == store.instructions(FOG.id, -1)
        assert store.instructions(FOG.id, 2) == [] and store.instructions(DISPATCH.id, -1) == []
    finally:
        b.fog.close()


def test_append_refuses_a_wrong_height(store: BlockStore, tmp_path: Path) -> None:
    create_genesis(store, DISPATCH, T0)
    b = Builder(store, tmp_path)
    raw = b.tx(DISPATCH, "register", C.register_body("fog", FOG.public_key.raw))
    effects = b.effects([raw])
    for h in (0, 2):
        with pytest.raises(StorageError, match=f"block {h} cannot follow block 0"):
            store.append(h, b"header", effects, ZERO_ROOT)
    assert store.height() == 0 and store.participant(FOG.id) is None
    b.fog.close()


def test_append_is_all_or_nothing(store: BlockStore, tmp_path: Path) -> None:
    create_genesis(store, DISPATCH, T0)
    b = Builder(store, tmp_path)
    reg = b.tx(DISPATCH, "register", C.register_body("fog", FOG.public_key.raw))
    good = b.effects([reg])[0]
    stranger = P.SigningKey.generate()
    orphan = Effect(b"raw", b"\x09" * 32, stranger.id, 1, "fault")  # sender not registered
    with pytest.raises(StorageError, match="not registered"):
        store.append(1, b"header", [good, orphan], ZERO_ROOT)
    with pytest.raises(StorageError):  # the same transaction twice in one block
        store.append(1, b"header", [good, good], ZERO_ROOT)
    assert store.height() == 0 and store.block(1) is None
    assert store.participant(FOG.id) is None and store.receipt(good.digest) is None
    assert store.participant(DISPATCH.id).nonce == 1  # type: ignore[union-attr]
    store.append(1, b"header", [good], ZERO_ROOT)
    assert store.receipt(good.digest) == Receipt(good.digest, 1, 0)
    b.fog.close()


def test_genesis_is_sealed_once(store: BlockStore) -> None:
    create_genesis(store, DISPATCH, T0, name="dc")
    g = store.block(0)
    assert g is not None and len(g.txs) == 1
    f = P.verify(g.header, DISPATCH.public_key).fields
    assert (f[2], f[3], f[5], f[7]) == (0, P.ZERO32, 1, DISPATCH.id)
    tx = P.verify(g.txs[0], DISPATCH.public_key).fields
    assert (tx[2], tx[3], tx[4][1], tx[4][3], tx[6]) == (1, "register", "dispatch", "dc",
                                                          DISPATCH.id)
    assert store.participants() == [Participant(DISPATCH.id, "dispatch",
                                                DISPATCH.public_key.raw, "dc", 1)]
    with pytest.raises(StorageError, match="genesis is sealed once"):
        create_genesis(store, DISPATCH, T0)


def test_closed_store_refuses_use(store: BlockStore) -> None:
    create_genesis(store, DISPATCH, T0)
    store.close()
    for call in (store.height, lambda: store.block(0), store.participants,
                 lambda: store.receipt(b"\x00" * 32), lambda: store.append(1, b"", [], ZERO_ROOT)):
        with pytest.raises(StorageError, match=r"after close|closed"):
            call()


# --- SQLite only ------------------------------------------------------------------------------
def test_sqlite_reopens_with_everything(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    s = SQLiteBlockStore(path)
    b, txs = build(s, tmp_path)
    before = (s.participants(), s.anchors(FOG.id), [s.block(h) for h in range(4)],
              s.anchored(FOG.id))
    s.close()
    b.fog.close()
    s2 = SQLiteBlockStore(path)
    try:
        assert (s2.participants(), s2.anchors(FOG.id), [s2.block(h) for h in range(4)],
                s2.anchored(FOG.id)) == before
        assert s2.receipt(P.digest(txs["fault"])) == Receipt(P.digest(txs["fault"]), 3, 1)
    finally:
        s2.close()


def test_sqlite_readonly(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    with pytest.raises(StorageError, match="no such chain file"):
        SQLiteBlockStore(path, readonly=True)
    s = SQLiteBlockStore(path)
    create_genesis(s, DISPATCH, T0)
    ro = SQLiteBlockStore(path, readonly=True)  # beside the writer, like verify-chain
    try:
        assert ro.height() == 0 and ro.block(0) == s.block(0)
        with pytest.raises(StorageError, match="read-only"):
            ro.append(1, b"", [], ZERO_ROOT)
    finally:
        ro.close()
        s.close()


def test_sqlite_refuses_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE entries (idx INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="not a MeterLedger chain"):
        SQLiteBlockStore(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=7")
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="chain format 7"):
        SQLiteBlockStore(path)


def test_sqlite_file_settings(tmp_path: Path) -> None:
    s = SQLiteBlockStore(tmp_path / "chain.db")
    try:
        assert s._w is not None
        assert s._w.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._w.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        s.close()
