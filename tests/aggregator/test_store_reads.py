"""The block stores' reads for the dashboard (both stores, one contract): a fog's newest
anchors with their checkpoint time, anchors per fog, and transactions of one kind newest
first between heights."""

from __future__ import annotations

from pathlib import Path

from aggregator.chain.ledger import TxRecord
from aggregator.chain.store import BlockStore
from meterledger import wire as P
from meterledger.wire import chain as C
from tests.aggregator.test_store import DISPATCH, FOG, build, store
from tests.kit.chainkit import T0

__all__ = ["store"]  # the fixture, both stores


def test_newest_anchors_with_their_checkpoint_time_and_counts(store: BlockStore,
                                                              tmp_path: Path) -> None:
    b, txs = build(store, tmp_path)
    try:
        every = store.anchors(FOG.id)
        assert [a.digest for a in every] == [P.digest(txs["anchor1"]), P.digest(txs["anchor2"])]
        assert [a.t for a in every] == [T0, T0]  # FogSide.grow seals its checkpoints at T0
        assert store.anchors(FOG.id, 1) == every[1:] and store.anchors(FOG.id, 1)[0].t == T0
        assert store.anchors(FOG.id, 5) == every and store.anchors(FOG.id, 0) == []
        assert store.anchor_counts() == {FOG.id: 2}
        assert store.anchors(DISPATCH.id, 3) == []
    finally:
        b.fog.close()


def test_transactions_of_one_kind_newest_first(store: BlockStore, tmp_path: Path) -> None:
    b, txs = build(store, tmp_path)  # blocks: 1 reg; 2 anchor1, instr, report; 3 anchor2, fault
    try:
        def rec(name: str, h: int, i: int) -> TxRecord:
            return TxRecord(h, i, P.digest(txs[name]), txs[name])

        assert store.txs_of_kind(C.ANCHOR, -1, None, None) == [rec("anchor2", 3, 0),
                                                                rec("anchor1", 2, 0)]
        assert store.txs_of_kind(C.ANCHOR, -1, None, 1) == [rec("anchor2", 3, 0)]
        assert store.txs_of_kind(C.ANCHOR, 2, None, None) == [rec("anchor2", 3, 0)]
        assert store.txs_of_kind(C.ANCHOR, -1, 3, None) == [rec("anchor1", 2, 0)]
        assert store.txs_of_kind(C.INSTRUCTION, -1, None, 5) == [rec("instr", 2, 1)]
        assert store.txs_of_kind(C.INSTRUCTION, 2, None, 5) == []
        assert store.txs_of_kind(C.REPORT, 1, 3, None) == [rec("report", 2, 2)]
        assert store.txs_of_kind(C.REGISTER, -1, None, None)[-1].height == 0  # the genesis
        assert store.txs_of_kind(C.RULES, -1, None, None) == []
        assert store.txs_of_kind(C.FAULT, -1, 0, None) == []
    finally:
        b.fog.close()
