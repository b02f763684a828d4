"""The Ledger interface, what it answers with, its errors, and the transaction rules.

`Ledger` is the seam between the dispatch center's service (HTTP API, CLI) and a chain
backend. The embedded backend (aggregator.embedded) has one sealer, the dispatch key; a
multi-party backend running on a BFT engine implements the same interface and applies the
same `Validator` to each ordered transaction. Consensus stays behind the seam: nothing here
knows how blocks are agreed on.

`Validator` is the state machine of docs/PROTOCOL.md section 15 as a function of (tx bytes,
State): it returns the `Effect` of a valid transaction or raises a ChainError with a stable
reason. The State it reads (participants with their last nonce, each fog's last anchored
checkpoint, which fog each instruction named, which transactions are on the chain) is
derived from the blocks alone, so verify-chain rebuilds it by replaying them with the same
Validator. Checks, in order (the first failure is reported):

    SPEC section 3 structure        too_large, malformed, bad_tag, ... (protocol.parse)
    already on the chain            duplicate (with the existing receipt)
    message type 12                 wrong_type
    sender registered               unregistered
    signature, schema, body rules   bad_signature, bad_fields, ... (protocol/chaintx)
    field 6 = this chain's id       wrong_chain
    nonce = last + 1                nonce_reused (<= last), nonce_gap (> last + 1)
    sender's role may send the kind not_permitted
    per kind                        already_registered; anchor_* (chaintx.checked_anchor,
                                    aggregates included); unknown_fog and unknown_rules
                                    (instruction); unknown_instruction and not_permitted
                                    (report from another fog); rules_version and
                                    rules_registered (rules)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from meterledger import wire as P
from meterledger.wire import anchor as A
from meterledger.wire import chain as C
from meterledger.wire.cbor import ProtocolError

DISPATCH, FOG = "dispatch", "fog"
INT64_MAX = 2**63 - 1  # SQLite integers; larger anchored sizes/times are refused
# the role a sender needs for each kind; a report needs to be from the instruction's fog
PERMITTED = {C.REGISTER: DISPATCH, C.INSTRUCTION: DISPATCH, C.ANCHOR: FOG, C.FAULT: FOG,
             C.RULES: DISPATCH}


# --- errors ----------------------------------------------------------------------------------
class AggregatorError(Exception):
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


class NotFoundError(AggregatorError):
    """A block or transaction the chain does not hold."""


class UnavailableError(AggregatorError):
    """The ledger takes no transactions now: it is closing, or its storage failed."""


class StorageError(AggregatorError):
    """The store cannot read or write, or holds something this code would not have written."""


def _refuse(e: ProtocolError) -> ChainError:
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


# --- the state the rules read ----------------------------------------------------------------------
@dataclass(frozen=True)
class Effect:
    """What one valid transaction changes in the state derived from the chain."""

    raw: bytes
    digest: bytes
    sender: bytes
    nonce: int
    kind: str
    registers: Participant | None = None  # register: the new participant (nonce 0)
    anchor_first: int = 0  # anchor: height of the first checkpoint carried
    anchor_head: A.AnchoredHead | None = None  # anchor: the newest one carried
    instruction_fog: bytes | None = None  # instruction: the fog it names
    aggregates: tuple[CarriedAggregate, ...] = ()  # anchor: the aggregates carried
    rules: RuleSet | None = None  # rules: the rule set registered


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


class MemoryState:
    """State in dicts, optionally layered over a base State: the replay state of
    verify-chain, and the overlay of not-yet-sealed transactions in the embedded backend."""

    def __init__(self, base: State | None = None) -> None:
        self.base = base
        self.participants: dict[bytes, Participant] = {}
        self.heads: dict[bytes, A.AnchoredHead] = {}
        self.instructions: dict[bytes, bytes] = {}
        self.receipts: dict[bytes, Receipt] = {}
        self.aggregate_fogs: dict[bytes, bytes] = {}
        self.rule_versions: dict[str, int] = {}
        self.rule_names: dict[bytes, str] = {}
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

    def absorb(self, other: MemoryState) -> None:
        """Take over everything `other` (a stage layered over this state) applied."""
        self.participants.update(other.participants)
        self.heads.update(other.heads)
        self.instructions.update(other.instructions)
        self.receipts.update(other.receipts)
        self.aggregate_fogs.update(other.aggregate_fogs)
        self.rule_versions.update(other.rule_versions)
        self.rule_names.update(other.rule_names)
        self.aggregate_views += other.aggregate_views
        self.rule_views += other.rule_views

    def apply(self, e: Effect, receipt: Receipt | None = None) -> None:
        if e.registers is not None:
            self.participants[e.registers.id] = e.registers
        sender = self.participant(e.sender)
        if sender is None:
            raise StorageError(f"effect of {e.digest.hex()} names sender {e.sender.hex()}, "
                               "who is not registered")
        self.participants[e.sender] = replace(sender, nonce=e.nonce)
        if e.anchor_head is not None:
            self.heads[e.sender] = e.anchor_head
        if e.instruction_fog is not None:
            self.instructions[e.digest] = e.instruction_fog
        for a in e.aggregates:
            self.aggregate_fogs[a.digest] = e.sender
        if e.rules is not None:
            self.rule_versions[e.rules.name] = e.rules.version
            self.rule_names[e.rules.digest] = e.rules.name
        if receipt is not None:
            self.receipts[e.digest] = receipt
            h, i = receipt.height, receipt.index
            self.aggregate_views += [AggregateView(h, i, a.digest, e.sender, a.feeder, a.ivl,
                                                   a.rev, a.msg) for a in e.aggregates]
            if e.rules is not None:
                r = e.rules
                self.rule_views.append(RuleSetView(h, i, r.name, r.version, r.digest, r.text))


# --- the rules ----------------------------------------------------------------------------------------
class Validator:
    """Transaction rules of docs/PROTOCOL.md section 15 over a State (see the module doc)."""

    def __init__(self, chain: bytes) -> None:
        self.chain = chain
        self._keys: dict[bytes, P.PublicKey] = {}

    def _key(self, pub: bytes) -> P.PublicKey:
        key = self._keys.get(pub)
        if key is None:
            try:
                key = self._keys[pub] = P.PublicKey(pub)
            except ProtocolError as e:  # registered keys were checked; a tampered store
                raise StorageError(f"registered key {pub.hex()[:16]}...: {e}") from None
        return key

    def check(self, raw: bytes, state: State) -> Effect:
        """The effect of transaction `raw` on `state`; raises ChainError."""
        try:
            m = P.parse(raw, schema=False)
        except ProtocolError as e:
            raise _refuse(e) from None
        known = state.receipt(m.digest)
        if known is not None:
            raise DuplicateError(known)
        if m.type != C.TX:
            raise ChainError("wrong_type", f"message type {m.type} is not a transaction (12)")
        sender = state.participant(m.kid)
        if sender is None:
            raise ChainError("unregistered", f"sender {m.kid.hex()} is not a registered "
                                             "participant of this chain")
        try:
            f = P.verify_message(m, self._key(sender.pub)).fields
        except ProtocolError as e:
            raise _refuse(e) from None
        self._check_chain(f)
        nonce, kind, body = f[2], f[3], f[4]
        if nonce <= sender.nonce:
            raise ChainError("nonce_reused", f"nonce {nonce} of {sender.id.hex()} is not above "
                                             f"its last used nonce {sender.nonce}")
        if nonce > sender.nonce + 1:
            raise ChainError("nonce_gap", f"nonce {nonce} of {sender.id.hex()} skips ahead: "
                                          f"the next one is {sender.nonce + 1}")
        need = PERMITTED.get(kind)
        if need is not None and sender.role != need:
            raise ChainError("not_permitted", f"a {kind} must come from a {need} participant; "
                                              f"{sender.id.hex()} is a {sender.role}")
        effect = Effect(raw, m.digest, sender.id, nonce, kind)
        if kind == C.REGISTER:
            new = P.party_id(body[2])
            if state.participant(new) is not None:
                raise ChainError("already_registered", f"{new.hex()} is registered already")
            return replace(effect, registers=Participant(new, body[1], body[2], body[3], 0))
        if kind == C.ANCHOR:
            def carried(d: bytes) -> bool:  # carried by an earlier anchor of this fog
                return state.aggregate_fog(d) == sender.id

            try:
                checked = A.checked_anchor(body, self._key(sender.pub),
                                           state.anchored(sender.id), carried)
            except ProtocolError as e:
                raise _refuse(e) from None
            cps = checked.checkpoints
            head = A.AnchoredHead.of(cps[-1])
            big = [v for a in checked.aggregates for v in (a.fields[2], a.fields[16])
                   if v > INT64_MAX]
            if max(head.size, head.t) > INT64_MAX or big:
                raise ChainError("bad_fields", "the newest checkpoint's size or t, or an "
                                               "aggregate's ivl or rev, is beyond 2^63-1, "
                                               "which this chain does not store")
            # an aggregate is signed by the fog that carries it, so no other fog's anchor can
            # have carried the same bytes: `carried` covers every earlier copy
            return replace(effect, anchor_first=cps[0].fields[2], anchor_head=head,
                           aggregates=tuple(CarriedAggregate.of(a)
                                            for a in checked.aggregates))
        if kind == C.INSTRUCTION:
            fog = state.participant(body[1])
            if fog is None or fog.role != FOG:
                raise ChainError("unknown_fog", f"the instruction names {body[1].hex()}, which "
                                                "is not a registered fog")
            if 7 in body and state.rules_name(body[7]) is None:
                raise ChainError("unknown_rules", f"the instruction cites rule set "
                                                  f"{body[7].hex()}, which is not registered")
            return replace(effect, instruction_fog=fog.id)
        if kind == C.RULES:
            name, version, digest = body[1], body[2], body[4]
            last = state.rules_version(name)
            if version <= last:
                raise ChainError("rules_version", f"rule set {name!r} is at version {last}; "
                                                  f"version {version} is not newer")
            known_as = state.rules_name(digest)
            if known_as is not None:
                raise ChainError("rules_registered", f"this text ({digest.hex()}) is "
                                                     f"registered already as {known_as!r}")
            if version > INT64_MAX:
                raise ChainError("bad_fields", "version is beyond 2^63-1, which this chain "
                                               "does not store")
            return replace(effect, rules=RuleSet(name, version, digest, body[3]))
        if kind == C.REPORT:
            named = state.instruction_fog(body[1])
            if named is None:
                raise ChainError("unknown_instruction", f"no instruction {body[1].hex()} is on "
                                                        "the chain")
            if named != sender.id:
                raise ChainError("not_permitted", f"instruction {body[1].hex()} names fog "
                                                  f"{named.hex()}, not {sender.id.hex()}")
        return effect

    def _check_chain(self, f: P.Fields) -> None:
        if f[6] != self.chain:
            raise ChainError("wrong_chain", f"the transaction is for chain {f[6].hex()}, this "
                                            f"is chain {self.chain.hex()}")

    def check_genesis(self, raw: bytes) -> Effect:
        """Genesis' one transaction: the chain's dispatch key registering itself (role
        dispatch, nonce 1), the only transaction whose sender is not registered yet."""
        try:
            m = P.parse(raw, schema=False)
        except ProtocolError as e:
            raise _refuse(e) from None
        f: dict[Any, Any] = m.fields
        body = f.get(4)
        if (m.type != C.TX or f.get(3) != C.REGISTER or not isinstance(body, dict)
                or not isinstance(body.get(2), bytes)):
            raise ChainError("bad_genesis", "genesis must hold one register transaction: the "
                                            "dispatch key registering itself")
        try:
            P.verify_message(m, P.PublicKey(body[2]))
        except ProtocolError as e:  # kid_mismatch: the key registered is not the signer's
            raise _refuse(e) from None
        self._check_chain(f)
        if m.kid != self.chain:
            raise ChainError("bad_genesis", f"the chain id {self.chain.hex()} must be the id of "
                                            f"the dispatch key registering itself, not {m.kid.hex()}")
        if body[1] != DISPATCH or f[2] != 1:
            raise ChainError("bad_genesis", "the genesis registration must have role "
                                            f"dispatch and nonce 1, not {body[1]!r} and {f[2]}")
        me = Participant(m.kid, DISPATCH, body[2], body[3], 0)
        return Effect(raw, m.digest, m.kid, 1, C.REGISTER, registers=me)
