"""The block stores' reads for the dashboard (both stores, one contract): a fog's newest
anchors with their checkpoint time, anchors per fog, and transactions of one kind newest
first between heights, reports by the instruction they answer, instruction pages; the
SQLite store's read indexes filled in for a file written before them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aggregator.chain.ledger import TxRecord
from aggregator.chain.store import BlockStore
from aggregator.chain.store.sqlite import SQLiteBlockStore
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


def test_reports_by_the_instruction_they_answer_and_instruction_pages(
        store: BlockStore, tmp_path: Path) -> None:
    b, txs = build(store, tmp_path)  # block 2: anchor1, instr, report (answering instr)
    try:
        instr = P.digest(txs["instr"])
        assert store.reports([instr]) == {instr: [TxRecord(2, 2, P.digest(txs["report"]),
                                                           txs["report"])]}
        assert store.reports([P.digest(txs["anchor1"])]) == {} and store.reports([]) == {}
        one = TxRecord(2, 1, instr, txs["instr"])
        assert store.instruction_page(FOG.id, -1, None, None) == [one]
        assert store.instruction_page(None, 1, 3, 1) == [one]  # only block 2
        assert store.instruction_page(FOG.id, 2, None, None) == []
        assert store.instruction_page(DISPATCH.id, -1, None, None) == []
        assert store.instruction_page(FOG.id, -1, None, 0) == []
    finally:
        b.fog.close()


def test_an_older_file_gets_its_indexes_filled_in_chunks(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "chain.db"
    s = SQLiteBlockStore(path)
    b, txs = build(s, tmp_path)
    b.fog.close()
    s.close()
    db = sqlite3.connect(path)  # as the code before the read indexes left it
    db.executescript("DROP TABLE reports; DROP TABLE anchor_counts; DROP TABLE reports_backfill")
    db.close()
    chunks: list[int] = []
    real = SQLiteBlockStore._backfill_reports

    def counted(self: SQLiteBlockStore, chunk: int | None = None) -> None:
        chunks.append(1)
        real(self, 1)  # one block per write transaction

    monkeypatch.setattr(SQLiteBlockStore, "_backfill_reports", counted)
    s = SQLiteBlockStore(path)
    try:
        assert s._backfilling is not None
        s._backfilling.join(30)
        instr = P.digest(txs["instr"])
        assert [r.tx for r in s.reports([instr])[instr]] == [txs["report"]]
        assert s.anchor_counts() == {FOG.id: 2}
        assert s._rows("SELECT * FROM reports_backfill") == [] and chunks == [1]
    finally:
        s.close()
    s = SQLiteBlockStore(path)  # done: no second backfill
    try:
        assert s._backfilling is None and s.anchor_counts() == {FOG.id: 2}
    finally:
        s.close()
