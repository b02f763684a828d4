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

    def anchors(self, fog: bytes) -> list[AnchorView]:
        """The fog's accepted anchors, oldest first."""
        ...

    def instructions(self, fog: bytes, after_height: int = -1) -> list[InstructionView]:
        """Instructions naming the fog in blocks above after_height, in chain order."""
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

    def stats(self) -> LedgerStats: ...

    def close(self) -> None: ...


