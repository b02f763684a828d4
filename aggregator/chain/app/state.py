"""The chain state the transaction rules read, the effects that change it, and its root.

`State` is what a kind's rule may ask (participants with their last nonce, each fog's last
anchored checkpoint, which fog each instruction names, which transactions are on the chain,
anchored aggregates, registered rule sets). It is derived from the blocks alone, so
verify-chain rebuilds it by replaying them with the same Validator.

An `Effect` is what one valid transaction changes. Each kind has its own Effect subclass
(aggregator.chain.app.kinds) whose `apply` makes its writes through a `StateWriter`; the
common part (the transaction itself, the sender's nonce) is written by `apply_effect`. The
writers are the stores (SQLite, memory), the in-memory `MemoryState`, and `WriteSet`, which
records every write as a (table, key, value) leaf for the state root.

The state root (docs/PROTOCOL.md section 15, "state root"): after block h,

    root(h) = SHA-256("meterledger/state/v1" || root(h-1) || uint64be(h) || MTH(leaves(h)))

and root(h) = root(h-1) for a block with no transaction accepted; with root(-1) = 32 zero
bytes and leaves(h) the deterministic CBOR of [table, key, value]
for each key block h wrote (the last write of a key in the block wins), sorted bytewise,
hashed as an RFC 9162 tree. The state is the fold of the blocks' write sets, so two replicas
with the same root hold the same state; it uses integers and bytes only (no clock, no dict
order), ready to serve as a BFT engine's app hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from aggregator.chain.ledger import (
    AggregateView,
    CarriedAggregate,
    Participant,
    Receipt,
    RuleSet,
    RuleSetView,
    StorageError,
)
from meterledger.wire import anchor as A
from meterledger.wire import merkle
from meterledger.wire.cbor import decode, encode

INT64_MAX = 2**63 - 1  # SQLite integers; larger values are refused by the rules
ZERO_ROOT = bytes(32)
_ROOT_TAG = b"meterledger/state/v1"
_DELETED = object()  # a WriteSet's mark of a deleted application record


# --- effects -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Effect:
    """What one valid transaction changes: the common part. Kinds that change more of the
    state subclass it and override `apply` and `stored_ints`."""

    raw: bytes
    digest: bytes
    sender: bytes
    nonce: int
    kind: str

    def common(self) -> tuple[bytes, bytes, bytes, int, str]:
        """The common fields, in order, for building a kind's Effect from this one."""
        return self.raw, self.digest, self.sender, self.nonce, self.kind

    def apply(self, w: StateWriter, at: Receipt | None) -> None:
        """The kind's own writes (none for a kind that only records the transaction)."""

    def stored_ints(self) -> Iterable[int]:
        """Every integer this effect stores, for the store's 64-bit check."""
        return (self.nonce,)


class StateWriter(Protocol):
    """Where effects write. `at` is the transaction's place on the chain; None while it is
    only validated (the embedded backend's overlay of the unsealed pool)."""

    def put_tx(self, digest: bytes, at: Receipt | None, raw: bytes) -> None: ...

    def put_participant(self, p: Participant) -> None: ...

    def put_nonce(self, pid: bytes, nonce: int) -> None: ...

    def put_anchor(self, fog: bytes, at: Receipt | None, digest: bytes, first: int,
                   head: A.AnchoredHead) -> None: ...

    def put_instruction(self, digest: bytes, fog: bytes, at: Receipt | None,
                        raw: bytes) -> None: ...

    def put_aggregate(self, fog: bytes, at: Receipt | None, pos: int,
                      a: CarriedAggregate) -> None: ...

    def put_rules(self, rules: RuleSet, at: Receipt | None) -> None: ...

    def put_record(self, table: str, key: bytes, value: Any) -> None:
        """An application's state (certificates, carbon, ...): `value` is CBOR-encodable
        (ints, bytes, texts, lists, maps), replacing any earlier value of (table, key);
        None deletes the key."""
        ...


def apply_effect(w: StateWriter, e: Effect, at: Receipt | None) -> None:
    """All writes of one effect, in the one order every writer sees: the transaction, the
    kind's own writes (a registration first creates its participant, which genesis needs
    before its sender's nonce is set), then the sender's nonce."""
    w.put_tx(e.digest, at, e.raw)
    e.apply(w, at)
    w.put_nonce(e.sender, e.nonce)


# --- the state the rules read ----------------------------------------------------------------------
class State(Protocol):
    def participant(self, pid: bytes) -> Participant | None: ...

    def anchored(self, fog: bytes) -> A.AnchoredHead | None:
        """The fog's newest anchored checkpoint, None before its first anchor."""
        ...

    def instruction_fog(self, digest: bytes) -> bytes | None:
        """The fog an instruction on the chain names; None if there is no such instruction."""
        ...

    def receipt(self, digest: bytes) -> Receipt | None: ...

    def aggregate_fog(self, digest: bytes) -> bytes | None:
        """The fog whose anchor carried aggregate `digest`; None if none did."""
        ...

    def rules_version(self, name: str) -> int:
        """The newest registered version of rule set `name`; 0 if none is."""
        ...

    def rules_name(self, digest: bytes) -> str | None:
        """The name of registered rule set `digest`; None if it is not registered."""
        ...

    def record(self, table: str, key: bytes) -> Any:
        """An application's value of (table, key) as written (put_record); None if none."""
        ...

    def next_record(self, table: str, after: bytes) -> tuple[bytes, Any] | None:
        """The application record of `table` with the smallest key above `after` (bytewise),
        None if there is none: how a rule finds what a range holds."""
        ...

    def chain_time(self) -> int:
        """The block time (unix s) of the newest block before the transaction's own: the
        only clock a rule reads (deadlines, compliance periods), the same on every replica
        and in every replay; 0 before the genesis."""
        ...


class MemoryState:
    """State in dicts, optionally layered over a base State: the replay state of
    verify-chain, and the overlay of not-yet-sealed transactions in the embedded backend.
    A StateWriter."""

    def __init__(self, base: State | None = None) -> None:
        self.base = base
        self.participants: dict[bytes, Participant] = {}
        self.heads: dict[bytes, A.AnchoredHead] = {}
        self.instructions: dict[bytes, bytes] = {}
        self.receipts: dict[bytes, Receipt] = {}
        self.aggregate_fogs: dict[bytes, bytes] = {}
        self.rule_versions: dict[str, int] = {}
        self.rule_names: dict[bytes, str] = {}
        self.records: dict[tuple[str, bytes], Any] = {}
        # the chain time its rules read, when it is not the base's (a replay's, the embedded
        # backend's overlay while a block is being sealed)
        self.time: int | None = None
        # views of what was applied with a receipt (a replay's, a memory store's), in order
        self.aggregate_views: list[AggregateView] = []
        self.rule_views: list[RuleSetView] = []

    def participant(self, pid: bytes) -> Participant | None:
        p = self.participants.get(pid)
        return p if p is not None or self.base is None else self.base.participant(pid)

    def anchored(self, fog: bytes) -> A.AnchoredHead | None:
        h = self.heads.get(fog)
        return h if h is not None or self.base is None else self.base.anchored(fog)

    def instruction_fog(self, digest: bytes) -> bytes | None:
        f = self.instructions.get(digest)
        return f if f is not None or self.base is None else self.base.instruction_fog(digest)

    def receipt(self, digest: bytes) -> Receipt | None:
        r = self.receipts.get(digest)
        return r if r is not None or self.base is None else self.base.receipt(digest)

    def aggregate_fog(self, digest: bytes) -> bytes | None:
        f = self.aggregate_fogs.get(digest)
        return f if f is not None or self.base is None else self.base.aggregate_fog(digest)

    def rules_version(self, name: str) -> int:
        v = self.rule_versions.get(name)
        if v is not None:
            return v
        return 0 if self.base is None else self.base.rules_version(name)

    def rules_name(self, digest: bytes) -> str | None:
        n = self.rule_names.get(digest)
        return n if n is not None or self.base is None else self.base.rules_name(digest)

    def record(self, table: str, key: bytes) -> Any:
        k = (table, key)
        if k in self.records:  # None: deleted here, whatever the base holds
            return self.records[k]
        return None if self.base is None else self.base.record(table, key)

    def next_record(self, table: str, after: bytes) -> tuple[bytes, Any] | None:
        mine = min(((k, v) for (t, k), v in self.records.items()
                    if t == table and k > after and v is not None),
                   key=lambda kv: kv[0], default=None)
        low = after
        while True:  # the base's next key, unless this layer deleted or replaced it
            below = None if self.base is None else self.base.next_record(table, low)
            if below is None or (table, below[0]) not in self.records:
                break
            low = below[0]
        candidates = [c for c in (mine, below) if c is not None]
        return min(candidates, key=lambda kv: kv[0]) if candidates else None

    def chain_time(self) -> int:
        if self.time is not None:
            return self.time
        return 0 if self.base is None else self.base.chain_time()

    def absorb(self, other: MemoryState) -> None:
        """Take over everything `other` (a stage layered over this state) applied."""
        self.participants.update(other.participants)
        self.heads.update(other.heads)
        self.instructions.update(other.instructions)
        self.receipts.update(other.receipts)
        self.aggregate_fogs.update(other.aggregate_fogs)
        self.rule_versions.update(other.rule_versions)
        self.rule_names.update(other.rule_names)
        self.records.update(other.records)
        self.aggregate_views += other.aggregate_views
        self.rule_views += other.rule_views

    def apply(self, e: Effect, receipt: Receipt | None = None) -> None:
        apply_effect(self, e, receipt)

    # StateWriter
    def put_tx(self, digest: bytes, at: Receipt | None, raw: bytes) -> None:
        if at is not None:
            self.receipts[digest] = at

    def put_participant(self, p: Participant) -> None:
        self.participants[p.id] = p

    def put_nonce(self, pid: bytes, nonce: int) -> None:
        sender = self.participant(pid)
        if sender is None:
            raise StorageError(f"an effect names sender {pid.hex()}, who is not registered")
        self.participants[pid] = replace(sender, nonce=nonce)

    def put_anchor(self, fog: bytes, at: Receipt | None, digest: bytes, first: int,
                   head: A.AnchoredHead) -> None:
        self.heads[fog] = head

    def put_instruction(self, digest: bytes, fog: bytes, at: Receipt | None,
                        raw: bytes) -> None:
        self.instructions[digest] = fog

    def put_aggregate(self, fog: bytes, at: Receipt | None, pos: int,
                      a: CarriedAggregate) -> None:
        self.aggregate_fogs[a.digest] = fog
        if at is not None:
            self.aggregate_views.append(AggregateView(at.height, at.index, a.digest, fog,
                                                      a.feeder, a.ivl, a.rev, a.msg))

    def put_rules(self, rules: RuleSet, at: Receipt | None) -> None:
        self.rule_versions[rules.name] = rules.version
        self.rule_names[rules.digest] = rules.name
        if at is not None:
            self.rule_views.append(RuleSetView(at.height, at.index, rules.name, rules.version,
                                               rules.digest, rules.text))

    def put_record(self, table: str, key: bytes, value: Any) -> None:
        # as a store gives it back (tuples become lists), so replay and store compare equal
        self.records[(table, key)] = None if value is None else decode(encode(value))


# --- the state root ----------------------------------------------------------------------------------
class WriteSet:
    """A StateWriter that records what a block writes as (table, key) -> value."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, Any], Any] = {}

    def _put(self, table: str, key: Any, value: Any) -> None:
        self.values[(table, key)] = value

    def put_tx(self, digest: bytes, at: Receipt | None, raw: bytes) -> None:
        if at is None:
            raise StorageError("the state root needs every transaction's place on the chain")
        self._put("tx", digest, [at.height, at.index])

    def put_participant(self, p: Participant) -> None:
        self._put("participant", p.id, [p.role, p.pub, p.name])

    def put_nonce(self, pid: bytes, nonce: int) -> None:
        self._put("nonce", pid, nonce)

    def put_anchor(self, fog: bytes, at: Receipt | None, digest: bytes, first: int,
                   head: A.AnchoredHead) -> None:
        self._put("anchored", fog, [head.height, head.size, head.root, head.digest, head.t])

    def put_instruction(self, digest: bytes, fog: bytes, at: Receipt | None,
                        raw: bytes) -> None:
        self._put("instruction", digest, fog)

    def put_aggregate(self, fog: bytes, at: Receipt | None, pos: int,
                      a: CarriedAggregate) -> None:
        self._put("aggregate", a.digest, fog)

    def put_rules(self, rules: RuleSet, at: Receipt | None) -> None:
        self._put("rules", rules.digest, [rules.name, rules.version])
        self._put("rules_version", rules.name, rules.version)

    def put_record(self, table: str, key: bytes, value: Any) -> None:
        # an application's tables are named "<app>.<what>" (no clash with the above); a
        # deletion is the leaf [table, key], without a value
        self._put(table, key, _DELETED if value is None else value)

    def leaves(self) -> list[bytes]:
        """The deterministic CBOR [table, key, value] of every write, sorted bytewise."""
        return sorted(encode([t, k] if v is _DELETED else [t, k, v])
                      for (t, k), v in self.values.items())


def block_state_root(prev_root: bytes, height: int, effects: Sequence[Effect]) -> bytes:
    """The state root after block `height` holding `effects` (in block order). A block that
    changes nothing (the consortium's empty blocks, or all its transactions refused) keeps
    the previous root: CometBFT makes a block to publish every new app hash, so a root that
    moved with the height alone would never let it stop making blocks."""
    if not effects:
        return prev_root
    ws = WriteSet()
    for i, e in enumerate(effects):
        apply_effect(ws, e, Receipt(e.digest, height, i))
    tree = merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in ws.leaves()])
    return hashlib.sha256(_ROOT_TAG + prev_root + height.to_bytes(8, "big") + tree).digest()
