"""What both backends answer straight from their block store: the Ledger seam's reads of
derived state (participants, anchors, instructions and their reports, aggregates, rule
sets, transactions by kind). One mixin, so a read added to the store is added to every
backend once; a backend gives `_reads` (the store it reads now) and keeps what differs
(head, blocks, transactions, block_meta, latencies, validators) itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aggregator.chain.ledger import (
    AggregateView,
    AnchorView,
    InstructionView,
    Participant,
    RuleSetView,
    TxRecord,
)
from aggregator.chain.store import BlockStore


class StoreReads:
    @property
    def _reads(self) -> BlockStore:
        raise NotImplementedError

    def anchors(self, fog: bytes, last: int | None = None) -> list[AnchorView]:
        return self._reads.anchors(fog, last)

    def anchor_counts(self) -> dict[bytes, int]:
        return self._reads.anchor_counts()

    def txs_of_kind(self, kind: str, after_height: int = -1, before_height: int | None = None,
                    limit: int | None = None) -> list[TxRecord]:
        return self._reads.txs_of_kind(kind, after_height, before_height, limit)

    def instructions(self, fog: bytes, after_height: int = -1) -> list[InstructionView]:
        return self._reads.instructions(fog, after_height)

    def instruction_page(self, fog: bytes | None, after_height: int = -1,
                         before_height: int | None = None,
                         limit: int | None = None) -> list[TxRecord]:
        return self._reads.instruction_page(fog, after_height, before_height, limit)

    def reports(self, instructions: Sequence[bytes]) -> dict[bytes, list[TxRecord]]:
        return self._reads.reports(instructions)

    def aggregates(self, fog: bytes | None = None, feeder: str | None = None,
                   after_height: int = -1) -> list[AggregateView]:
        return self._reads.aggregates(fog, feeder, after_height)

    def rules(self) -> list[RuleSetView]:
        return self._reads.rules()

    def participant(self, pid: bytes) -> Participant | None:
        return self._reads.participant(pid)

    def participants(self) -> list[Participant]:
        return self._reads.participants()

    def app_record(self, table: str, key: bytes) -> Any:
        return self._reads.record(table, key)

    def app_records(self, table: str, prefix: bytes = b"", after: bytes | None = None,
                limit: int | None = None) -> list[tuple[bytes, Any]]:
        return self._reads.records(table, prefix, after, limit)
