"""Block storage: the interface, shared by the SQLite store and its in-memory twin.

A `BlockStore` holds blocks 0..height() and the state derived from them (what the Validator
reads: participants with their last nonce, anchors, instructions, anchored aggregates,
registered rule sets, the transaction index), written together with each block, plus the
state root after each block. The derived state is a cache of the blocks, which verify-chain
rebuilds by replaying them. One contract test suite runs against both implementations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from aggregator.chain.app.state import INT64_MAX, Effect
from aggregator.chain.ledger import (
    AggregateView,
    AnchorView,
    Block,
    InstructionView,
    Participant,
    Receipt,
    RuleSetView,
    StorageError,
    TxRecord,
)
from meterledger import wire as P
from meterledger.errors import ProtocolError
from meterledger.wire import anchor as A
from meterledger.wire import chain as C

# a stored block is what the Ledger answers with: header, its digest and the transactions
StoredBlock = Block


class BlockStore(Protocol):
    """Blocks 0..height() and the state derived from them (also an app.state.State)."""

    def height(self) -> int:
        """Height of the newest block; -1 while the store holds none (before genesis)."""
        ...

    def block(self, height: int) -> StoredBlock | None: ...

    def append(self, height: int, header: bytes, effects: Sequence[Effect],
               state_root: bytes, block_hash: bytes | None = None) -> None:
        """Add block `height` (= height() + 1) with the transactions of `effects`, in order,
        their effects on the derived state and the state root after it: all or nothing,
        durable on return. The block's hash is the header's digest unless `block_hash` says
        otherwise (the consortium's: CometBFT's block hash)."""
        ...

    def state_root(self, height: int) -> bytes | None:
        """The state root stored with block `height`; None if none is (a chain written
        before state roots existed, until the ledger fills them in)."""
        ...

    def put_state_roots(self, roots: Sequence[tuple[int, bytes]]) -> None:
        """Store the state roots of existing blocks (computed by replaying them)."""
        ...

    # app.state.State
    def participant(self, pid: bytes) -> Participant | None: ...

    def anchored(self, fog: bytes) -> A.AnchoredHead | None: ...

    def instruction_fog(self, digest: bytes) -> bytes | None: ...

    def receipt(self, digest: bytes) -> Receipt | None: ...

    def aggregate_fog(self, digest: bytes) -> bytes | None: ...

    def rules_version(self, name: str) -> int: ...

    def rules_name(self, digest: bytes) -> str | None: ...

    def record(self, table: str, key: bytes) -> Any: ...

    def next_record(self, table: str, after: bytes) -> tuple[bytes, Any] | None: ...

    def chain_time(self) -> int: ...

    # queries
    def records(self, table: str, prefix: bytes = b"", after: bytes | None = None,
                limit: int | None = None) -> list[tuple[bytes, Any]]:
        """An application's (key, value) pairs of `table` whose key starts with `prefix`,
        in key order (bytewise), only keys above `after` when given, at most `limit`."""
        ...

    def participants(self) -> list[Participant]:
        """In registration order."""
        ...

    def anchors(self, fog: bytes, last: int | None = None) -> list[AnchorView]:
        """Oldest first; only the newest `last` when given."""
        ...

    def anchor_counts(self) -> dict[bytes, int]:
        """Anchors per fog, for every fog that anchored."""
        ...

    def txs_of_kind(self, kind: str, after_height: int, before_height: int | None,
                    limit: int | None) -> list[TxRecord]:
        """Transactions of `kind` in blocks after_height < h < before_height, newest first,
        at most `limit`."""
        ...

    def instructions(self, fog: bytes, after_height: int) -> list[InstructionView]: ...

    def instruction_page(self, fog: bytes | None, after_height: int,
                         before_height: int | None, limit: int | None) -> list[TxRecord]:
        """Instructions (naming `fog`, or any) in blocks after_height < h < before_height,
        newest first, at most `limit`."""
        ...

    def reports(self, instructions: Sequence[bytes]) -> dict[bytes, list[TxRecord]]:
        """The report transactions answering each instruction (by digest), oldest first;
        one with none is left out."""
        ...

    def aggregates(self, fog: bytes | None, feeder: str | None,
                   after_height: int) -> list[AggregateView]:
        """In chain order, then the order the anchor carried them."""
        ...

    def rules(self) -> list[RuleSetView]:
        """In chain order."""
        ...

    def close(self) -> None: ...



def check_append(store: BlockStore, height: int, effects: Sequence[Effect]) -> None:
    if height != store.height() + 1:
        raise StorageError(f"block {height} cannot follow block {store.height()}")
    for e in effects:
        if max(e.stored_ints()) > INT64_MAX:
            raise StorageError(f"transaction {e.digest.hex()} holds a value beyond 2^63-1")


def header_time(header: bytes) -> int:
    """A stored header's block time (unix s): an embedded chain's signed type-13 header (t,
    key 6), or a consortium's block record (CometBFT's header time, key 5)."""
    try:
        m = P.parse(header, schema=False)
        if m.type == C.BLOCK:
            return int(m.fields[6])
    except (ProtocolError, KeyError, TypeError, ValueError):
        pass
    try:
        return int(P.decode(header)[5])
    except (ProtocolError, KeyError, TypeError, ValueError) as e:
        raise StorageError(f"a stored block header has no time: {e}") from None


def newest_time(store: BlockStore) -> int:
    """The block time of the store's newest block; 0 before the genesis."""
    b = store.block(store.height())
    return 0 if b is None else header_time(b.header)
