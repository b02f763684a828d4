"""The in-memory twin of the SQLite block store (tests, benchmarks)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from aggregator.chain.app.state import Effect, MemoryState, apply_effect
from aggregator.chain.ledger import (
    AggregateView,
    AnchorView,
    CarriedAggregate,
    InstructionView,
    Participant,
    Receipt,
    RuleSet,
    RuleSetView,
    StorageError,
    TxRecord,
)
from aggregator.chain.store.base import StoredBlock, check_append, newest_time
from meterledger import wire as P
from meterledger.wire import anchor as A
from meterledger.wire import chain as C


class _Views:
    """A StateWriter keeping the per-fog anchor and instruction lists the queries answer."""

    def __init__(self) -> None:
        self.anchors: dict[bytes, list[AnchorView]] = {}
        self.instructions: dict[bytes, list[InstructionView]] = {}
        self.all_instructions: list[tuple[bytes, InstructionView]] = []  # (fog, view)
        self.reports: dict[bytes, list[TxRecord]] = {}  # by the instruction answered

    def put_tx(self, digest: bytes, at: Receipt | None, raw: bytes) -> None:
        f = P.parse(raw, schema=False).fields
        body = f.get(4)
        if at is not None and f.get(3) == C.REPORT and isinstance(body, dict) \
                and isinstance(body.get(1), bytes):
            self.reports.setdefault(body[1], []).append(
                TxRecord(at.height, at.index, digest, raw))

    def put_participant(self, p: Participant) -> None:
        pass

    def put_nonce(self, pid: bytes, nonce: int) -> None:
        pass

    def put_anchor(self, fog: bytes, at: Receipt | None, digest: bytes, first: int,
                   head: A.AnchoredHead) -> None:
        assert at is not None
        self.anchors.setdefault(fog, []).append(AnchorView(
            at.height, at.index, digest, first, head.height, head.size, head.root, head.t))

    def put_instruction(self, digest: bytes, fog: bytes, at: Receipt | None,
                        raw: bytes) -> None:
        assert at is not None
        view = InstructionView(at.height, at.index, digest, raw)
        self.instructions.setdefault(fog, []).append(view)
        self.all_instructions.append((fog, view))

    def put_aggregate(self, fog: bytes, at: Receipt | None, pos: int,
                      a: CarriedAggregate) -> None:
        pass

    def put_rules(self, rules: RuleSet, at: Receipt | None) -> None:
        pass

    def put_record(self, table: str, key: bytes, value: Any) -> None:
        pass


class MemoryBlockStore:
    """BlockStore in memory (tests); behaves like SQLiteBlockStore but forgets on close."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._blocks: list[StoredBlock] | None = []
        self._state = MemoryState()
        self._views = _Views()
        self._roots: dict[int, bytes] = {}

    def _live(self) -> list[StoredBlock]:
        if self._blocks is None:
            raise StorageError("the memory block store was used after close()")
        return self._blocks

    def height(self) -> int:
        with self._lock:
            return len(self._live()) - 1

    def chain_time(self) -> int:
        return newest_time(self)

    def block(self, height: int) -> StoredBlock | None:
        with self._lock:
            blocks = self._live()
            return blocks[height] if 0 <= height < len(blocks) else None

    def append(self, height: int, header: bytes, effects: Sequence[Effect],
               state_root: bytes, block_hash: bytes | None = None) -> None:
        with self._lock:
            blocks = self._live()
            check_append(self, height, effects)
            stage = MemoryState(self._state)  # all or nothing: apply to a stage first
            for i, e in enumerate(effects):
                if self._state.receipt(e.digest) or e.digest in stage.receipts:
                    raise StorageError(f"transaction {e.digest.hex()} is stored already")
                stage.apply(e, Receipt(e.digest, height, i))
            self._state.absorb(stage)
            for i, e in enumerate(effects):
                apply_effect(self._views, e, Receipt(e.digest, height, i))
            blocks.append(StoredBlock(height, block_hash or P.digest(header), header,
                                      tuple(e.raw for e in effects)))
            self._roots[height] = state_root

    def state_root(self, height: int) -> bytes | None:
        with self._lock:
            self._live()
            return self._roots.get(height)

    def put_state_roots(self, roots: Sequence[tuple[int, bytes]]) -> None:
        with self._lock:
            self._live()
            self._roots.update(roots)

    def participant(self, pid: bytes) -> Participant | None:
        with self._lock:
            self._live()
            return self._state.participant(pid)

    def anchored(self, fog: bytes) -> A.AnchoredHead | None:
        with self._lock:
            self._live()
            return self._state.anchored(fog)

    def instruction_fog(self, digest: bytes) -> bytes | None:
        with self._lock:
            self._live()
            return self._state.instruction_fog(digest)

    def receipt(self, digest: bytes) -> Receipt | None:
        with self._lock:
            self._live()
            return self._state.receipt(digest)

    def participants(self) -> list[Participant]:
        with self._lock:
            self._live()
            return list(self._state.participants.values())

    def anchors(self, fog: bytes, last: int | None = None) -> list[AnchorView]:
        with self._lock:
            self._live()
            views = self._views.anchors.get(fog, [])
            if last is not None:
                views = views[max(0, len(views) - max(0, last)):]
            return list(views)

    def anchor_counts(self) -> dict[bytes, int]:
        with self._lock:
            self._live()
            return {fog: len(views) for fog, views in self._views.anchors.items()}

    def txs_of_kind(self, kind: str, after_height: int, before_height: int | None,
                    limit: int | None) -> list[TxRecord]:
        with self._lock:
            blocks = list(self._live())
        out: list[TxRecord] = []
        top = len(blocks) if before_height is None else min(len(blocks), before_height)
        for b in reversed(blocks[max(0, after_height + 1):max(0, top)]):
            for i in range(len(b.txs) - 1, -1, -1):
                if limit is not None and len(out) >= limit:
                    return out
                raw = b.txs[i]
                if P.parse(raw, schema=False).fields.get(3) == kind:
                    out.append(TxRecord(b.height, i, P.digest(raw), raw))
        return out

    def instructions(self, fog: bytes, after_height: int) -> list[InstructionView]:
        with self._lock:
            self._live()
            return [i for i in self._views.instructions.get(fog, []) if i.height > after_height]

    def instruction_page(self, fog: bytes | None, after_height: int,
                         before_height: int | None, limit: int | None) -> list[TxRecord]:
        with self._lock:
            self._live()
            out = [TxRecord(i.height, i.index, i.digest, i.tx)
                   for f, i in reversed(self._views.all_instructions)
                   if (fog is None or f == fog) and after_height < i.height
                   and (before_height is None or i.height < before_height)]
            return out if limit is None else out[:max(0, limit)]

    def reports(self, instructions: Sequence[bytes]) -> dict[bytes, list[TxRecord]]:
        with self._lock:
            self._live()
            return {d: list(self._views.reports[d]) for d in instructions
                    if d in self._views.reports}

    def aggregates(self, fog: bytes | None, feeder: str | None,
                   after_height: int) -> list[AggregateView]:
        with self._lock:
            self._live()
            return [a for a in self._state.aggregate_views
                    if (fog is None or a.fog == fog) and (feeder is None or a.feeder == feeder)
                    and a.height > after_height]

    def rules(self) -> list[RuleSetView]:
        with self._lock:
            self._live()
            return list(self._state.rule_views)

    def aggregate_fog(self, digest: bytes) -> bytes | None:
        with self._lock:
            self._live()
            return self._state.aggregate_fog(digest)

    def rules_version(self, name: str) -> int:
        with self._lock:
            self._live()
            return self._state.rules_version(name)

    def rules_name(self, digest: bytes) -> str | None:
        with self._lock:
            self._live()
            return self._state.rules_name(digest)

    def record(self, table: str, key: bytes) -> Any:
        with self._lock:
            self._live()
            return self._state.record(table, key)

    def next_record(self, table: str, after: bytes) -> tuple[bytes, Any] | None:
        with self._lock:
            self._live()
            return self._state.next_record(table, after)

    def records(self, table: str, prefix: bytes = b"", after: bytes | None = None,
                limit: int | None = None) -> list[tuple[bytes, Any]]:
        with self._lock:
            self._live()
            out = sorted((k, v) for (t, k), v in self._state.records.items()
                         if t == table and v is not None and k.startswith(prefix)
                         and (after is None or k > after))
            return out if limit is None else out[:max(0, limit)]

    def close(self) -> None:
        with self._lock:
            self._blocks = None

