"""The Ledger seam: the interface the chain's applications and service talk to, what it
answers with, and its errors.

`Ledger` is the seam between the dispatch chain's applications (dispatch now; market,
certificates, carbon and settlement next), its service (HTTP API, CLI) and a chain backend.
The embedded backend (aggregator.chain.backends.embedded) has one sealer, the dispatch key; a
multi-party backend running on a BFT engine implements the same interface and applies the same
state machine (aggregator.chain.app) to each ordered transaction. Consensus stays behind the
seam: nothing here knows how blocks are agreed on. Applications import this module only,
never a backend or a store (an import-linter contract checks it).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meterledger import errors
from meterledger import wire as P

DISPATCH, FOG = "dispatch", "fog"
INT64_MAX = 2**63 - 1  # SQLite integers; larger anchored sizes/times are refused


# --- errors ----------------------------------------------------------------------------------
class AggregatorError(errors.MeterLedgerError):
    """Every error the aggregator raises on purpose; the message says what was wrong."""


class ChainError(AggregatorError):
    """A transaction the chain refuses. `reason` is a stable code, `detail` says exactly what."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DuplicateError(ChainError):
    """The exact same transaction is already on the chain; `receipt` says where."""

    def __init__(self, receipt: Receipt) -> None:
        super().__init__("duplicate", f"transaction {receipt.digest.hex()} is already in "
                                      f"block {receipt.height} at index {receipt.index}")
        self.receipt = receipt


class NotFoundError(AggregatorError, errors.NotFoundError):
    """A block or transaction the chain does not hold."""


class UnavailableError(AggregatorError, errors.UnavailableError):
    """The ledger takes no transactions now: it is closing, or its storage failed."""


class StorageError(AggregatorError, errors.StorageError):
    """The store cannot read or write, or holds something this code would not have written."""


def refuse(e: errors.ProtocolError) -> ChainError:
    return ChainError(e.reason, str(e))


# --- what the ledger answers with ---------------------------------------------------------------
@dataclass(frozen=True)
class Receipt:
    """Where a transaction landed: its digest, block height and index in the block."""

    digest: bytes
    height: int
    index: int


@dataclass(frozen=True)
class Participant:
    id: bytes
    role: str
    pub: bytes
    name: str
    nonce: int  # the last nonce used (0: none yet)


@dataclass(frozen=True)
class Head:
    height: int
    hash: bytes
    header: bytes
    chain: bytes
    sealer_pub: bytes
    # the state root after this block (aggregator.chain.app.state), the app hash a BFT
    # engine would agree on; empty only on a store that could not compute it
    state_root: bytes = b""
    # who agrees on blocks: "embedded" (one sealer, sealer_pub) or "cometbft" (a validator
    # set; header is then the app's block record and sealer_pub is empty)
    engine: str = "embedded"


@dataclass(frozen=True)
class Block:
    height: int
    hash: bytes
    header: bytes
    txs: tuple[bytes, ...]


@dataclass(frozen=True)
class TxView:
    """A transaction with its inclusion path in its block's txroot (RFC 9162)."""

    digest: bytes
    height: int
    index: int
    tx: bytes
    path: tuple[bytes, ...]
    header: bytes
    # the consortium's proof that the validators committed it: CometBFT's signed header of
    # its block and the transaction's proof in the header's data hash (PROTOCOL section 23)
    finality: dict[str, Any] | None = None


@dataclass(frozen=True)
class AnchorView:
    """One accepted anchor of a fog: checkpoint heights first..last, its head's size/root."""

    height: int
    index: int
    digest: bytes
    first: int
    last: int
    size: int
    root: bytes
    # the time field of the newest checkpoint it carried (its head's); not part of equality:
    # a view is the same anchor whether or not its reader asked for the time
    t: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class InstructionView:
    height: int
    index: int
    digest: bytes
    tx: bytes


@dataclass(frozen=True)
class CarriedAggregate:
    """A type-11 aggregate an anchor carried (its `fog` is the anchor's sender)."""

    digest: bytes
    feeder: str
    ivl: int
    rev: int
    msg: bytes

    @classmethod
    def of(cls, m: P.Message) -> CarriedAggregate:
        return cls(m.digest, m.fields[1], m.fields[2], m.fields[16], m.raw)


@dataclass(frozen=True)
class AggregateView:
    """An anchored aggregate: the anchor's block height and index, and the aggregate."""

    height: int
    index: int
    digest: bytes
    fog: bytes
    feeder: str
    ivl: int
    rev: int
    msg: bytes


@dataclass(frozen=True)
class RuleSet:
    """A registered rule set (a `rules` transaction's body); its id is `digest`."""

    name: str
    version: int
    digest: bytes
    text: str


@dataclass(frozen=True)
class RuleSetView:
    height: int
    index: int
    name: str
    version: int
    digest: bytes
    text: str


@dataclass(frozen=True)
class TxRecord:
    """A transaction where it landed: block height, index in the block, digest, bytes."""

    height: int
    index: int
    digest: bytes
    tx: bytes


@dataclass(frozen=True)
class BlockMeta:
    """What a block's header says, whichever engine agreed on it."""

    height: int
    time: int  # block time, unix seconds
    header: dict[str, Any]  # the header's fields by name, JSON-ready (bytes as hex)
    # who sealed (embedded: the sealer's 8-byte id) or proposed it (consortium: the
    # validator's 20-byte address; empty when CometBFT cannot say, and for block 0)
    proposer: bytes = b""
    proposer_name: str = ""  # the sealer's participant name, the validator's name


@dataclass(frozen=True)
class Latency:
    """One transaction's commit latency as its submitter saw it: submit to committed."""

    height: int  # the block that holds it
    at: float  # when it was committed, unix seconds (the node's wall clock)
    ms: float


class LatencyRing:
    """The newest `size` commit latencies, in memory; safe from any thread."""

    def __init__(self, size: int = 1024) -> None:
        self._lock = threading.Lock()
        self._ring: deque[Latency] = deque(maxlen=size)

    def add(self, height: int, at: float, ms: float) -> None:
        with self._lock:
            self._ring.append(Latency(height, at, max(0.0, ms)))

    def newest(self, limit: int) -> list[Latency]:
        """Up to `limit`, newest first."""
        with self._lock:
            items = list(self._ring)
        return items[::-1][:max(0, limit)]


@dataclass
class LedgerStats:
    """Counters since the ledger was opened, for /metrics."""

    accepted: dict[str, int] = field(default_factory=dict)  # by kind
    rejected: dict[str, int] = field(default_factory=dict)  # by reason
    blocks_sealed: int = 0
    anchors: int = 0
    pending: int = 0


class Ledger(Protocol):
    """The dispatch chain as the service sees it. Blocking calls, safe from any thread."""

    @property
    def chain_id(self) -> bytes: ...

    def submit(self, tx_raw: bytes) -> Receipt:
        """Validate and include a transaction; returns once its block is sealed and durable.
        Raises ChainError (DuplicateError with the receipt) or UnavailableError."""
        ...

    def head(self) -> Head: ...

    def block(self, height: int) -> Block:
        """Raises NotFoundError above the head."""
        ...

    def tx(self, digest: bytes) -> TxView:
        """Raises NotFoundError for a digest not on the chain."""
        ...

    def anchors(self, fog: bytes, last: int | None = None) -> list[AnchorView]:
        """The fog's accepted anchors, oldest first (only the newest `last` if given)."""
        ...

    def anchor_counts(self) -> dict[bytes, int]:
        """How many anchors each fog that anchored has on the chain."""
        ...

    def txs_of_kind(self, kind: str, after_height: int = -1, before_height: int | None = None,
                    limit: int | None = None) -> list[TxRecord]:
        """The transactions of one kind in blocks after_height < h < before_height, newest
        first, at most `limit`."""
        ...

    def block_meta(self, blocks: Sequence[Block], proposers: bool = True) -> list[BlockMeta]:
        """What each block's header says (its time, its fields by name) and, with
        `proposers`, who sealed or proposed it (the consortium asks CometBFT)."""
        ...

    def latencies(self, limit: int) -> list[Latency]:
        """The newest commit latencies this ledger measured (at most `limit`), newest
        first."""
        ...

    def validators(self, commits: int = 20) -> dict[str, Any]:
        """Who agrees on blocks, JSON-ready: the sealer (embedded), or the validators with
        whether each is up, its height and which signed each of the last `commits` commits
        (consortium; docs/PROTOCOL.md section 15, GET /v1/validators)."""
        ...

    def instructions(self, fog: bytes, after_height: int = -1) -> list[InstructionView]:
        """Instructions naming the fog in blocks above after_height, in chain order."""
        ...

    def instruction_page(self, fog: bytes | None, after_height: int = -1,
                         before_height: int | None = None,
                         limit: int | None = None) -> list[TxRecord]:
        """Instructions (naming `fog`, or any) in blocks after_height < h < before_height,
        newest first, at most `limit` (read from an index, never a scan)."""
        ...

    def reports(self, instructions: Sequence[bytes]) -> dict[bytes, list[TxRecord]]:
        """The report transactions answering each instruction (by digest), oldest first,
        from the index the store keeps as blocks are appended; one with none is left out."""
        ...

    def aggregates(self, fog: bytes | None = None, feeder: str | None = None,
                   after_height: int = -1) -> list[AggregateView]:
        """Anchored aggregates (of one fog, one feeder name) in blocks above after_height,
        in chain order (within an anchor, in the order it carried them)."""
        ...

    def rules(self) -> list[RuleSetView]:
        """Registered rule sets, in chain order."""
        ...

    def participant(self, pid: bytes) -> Participant | None: ...

    def participants(self) -> list[Participant]: ...

    def app_record(self, table: str, key: bytes) -> Any:
        """An application's state: the value of (table, key), None if none (the kinds'
        tables, docs/PROTOCOL.md section 25)."""
        ...

    def app_records(self, table: str, prefix: bytes = b"", after: bytes | None = None,
                limit: int | None = None) -> list[tuple[bytes, Any]]:
        """An application's (key, value) pairs of `table` with keys starting with `prefix`,
        in key order, keys above `after` only when given, at most `limit`."""
        ...

    def stats(self) -> LedgerStats: ...

    def close(self) -> None: ...


