"""Main dispatch chain messages: type 12 (transaction) and type 13 (block header).

SPEC section 4 leaves type 12 to the project (docs/PROTOCOL.md section 15); type 13 is ours.
Both are ordinary SPEC COSE_Sign1 messages, so every section 3 rule (4096-byte limit,
deterministic CBOR, low-S, kid = signer field) holds for them too.

Pure: schemas, builders, the per-kind body rules and the block's transaction tree. The SPEC
section 8 anchor rule is `meterledger.wire.anchor`. The chain applies these rules with its
state, the fog checks its own transactions with them before sending, the audit verifier
uses the parsers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from meterledger.errors import ProtocolError
from meterledger.wire import billing as BL
from meterledger.wire import carbon as CB
from meterledger.wire import certificates as GC
from meterledger.wire import dr as DR
from meterledger.wire import market as MK
from meterledger.wire import merkle
from meterledger.wire import trace as DV
from meterledger.wire.keys import PublicKey
from meterledger.wire.meter import ZERO32, command_args_error
from meterledger.wire.schema import (
    COUNT_MAX,
    TIME_MAX,
    Fields,
    MessageType,
    Range,
    check_ranges,
    is_int,
    predicate,
    range_error,
)

TX, BLOCK = 12, 13
# registry: the green-certificate registry authority; notary: a cross-chain notary (section
# 25); holder: anyone else holding certificates or allowances (a retailer, a consumer);
# utility: the company that bills customers under approved tariffs (section 28); operator:
# a field technician or engineer, the key bound to the person named (section 29)
ROLES = ("dispatch", "fog", "regulator", "plant", "market", "registry", "notary", "holder",
         "utility", "operator")
REGISTER, ANCHOR, INSTRUCTION, REPORT, FAULT = "register", "anchor", "instruction", "report", "fault"
RULES = "rules"
KINDS = (REGISTER, ANCHOR, INSTRUCTION, REPORT, FAULT, RULES, *GC.KINDS, *CB.KINDS, *MK.KINDS,
         *BL.KINDS, *DV.KINDS, *DR.KINDS)

# body schemas per kind, in the schema language of protocol.SCHEMAS
BODIES: dict[str, dict[int, str]] = {
    REGISTER: {1: "t", 2: "b65", 3: "t"},                       # role, pub, name
    ANCHOR: {1: "a", 2: "a", 3: "a?", 4: "a?"},                 # checkpoints, proof, aggregates,
                                                                # statements
    INSTRUCTION: {1: "b8", 2: "t", 3: "m", 4: "u", 5: "a", 6: "t", 7: "b?"},
    REPORT: {1: "b32", 2: "u", 3: "u", 4: "u", 5: "a", 6: "t"},  # instr, done/rej/failed, entries
    FAULT: {1: "t", 2: "t", 3: "u", 4: "t", 5: "a",             # kind, detail, t, action, entries,
            6: "a?", 7: "u?", 8: "u?"},                         # a closed outage: meters, start, end
    RULES: {1: "t", 2: "u", 3: "t", 4: "b32"},                  # name, version, text, digest
    **GC.BODIES,                                                # section 25
    **CB.BODIES,                                                # section 26
    **MK.BODIES,                                                # section 27
    **BL.BODIES,                                                # section 28
    **DV.BODIES,                                                # section 29
    **DR.BODIES,                                                # section 30
}


# a closed outage record (a `fault` of kind "outage" with body keys 6-8, docs/PROTOCOL.md
# section 18) names at most this many meters; a fog splits a larger outage into several
OUTAGE = "outage"
OUTAGE_METERS_MAX = 128

# the range of every body field (meterledger.wire.schema: a value, a length, a count);
# free texts and lists are bounded by the 4096-byte message they travel in
TEXT_MAX = 4096
BODY_RANGES: dict[str, dict[int, Range]] = {
    REGISTER: {1: (1, 16), 3: (0, 64)},
    ANCHOR: {1: (0, TEXT_MAX), 2: (0, 128), 3: (0, TEXT_MAX), 4: (0, TEXT_MAX)},
    INSTRUCTION: {2: (1, 16), 3: (0, 8), 4: (0, TIME_MAX), 5: (0, TEXT_MAX), 6: (0, TEXT_MAX),
                  7: (0, 32)},
    REPORT: {2: (0, COUNT_MAX), 3: (0, COUNT_MAX), 4: (0, COUNT_MAX), 5: (0, TEXT_MAX),
             6: (0, TEXT_MAX)},
    FAULT: {1: (1, 32), 2: (0, TEXT_MAX), 3: (0, TIME_MAX), 4: (0, TEXT_MAX), 5: (0, TEXT_MAX),
            6: (1, OUTAGE_METERS_MAX), 7: (0, TIME_MAX), 8: (0, TIME_MAX)},
    RULES: {1: (1, 64), 2: (1, COUNT_MAX), 3: (0, TEXT_MAX)},
    **GC.BODY_RANGES,
    **CB.BODY_RANGES,
    **MK.BODY_RANGES,
    **BL.BODY_RANGES,
    **DV.BODY_RANGES,
    **DR.BODY_RANGES,
}
for _kind, _schema in BODIES.items():  # (a kind of fixed-length byte strings only has none)
    check_ranges(_schema, BODY_RANGES.get(_kind, {}), f"{_kind} body")


class ChainTxError(ProtocolError):
    """A transaction or anchor the chain must refuse; `reason` is a stable code."""


def body_error(kind: str, msg: str) -> ChainTxError:
    return ChainTxError("bad_fields", f"{kind} body: {msg}")


def _check_body(kind: str, body: dict[Any, Any]) -> None:
    schema = BODIES[kind]
    for key in body:
        if key not in schema:
            raise body_error(kind, f"no field {key!r}")
    for key, kind_ in schema.items():
        optional = kind_.endswith("?")
        kind_ = kind_.removesuffix("?")
        if key not in body:
            if optional:
                continue
            raise body_error(kind, f"missing field {key}")
        if not predicate(kind_)(body[key]):
            raise body_error(kind, f"field {key} must be {kind_}")
        r = BODY_RANGES.get(kind, {}).get(key)
        err = range_error(body[key], r) if r is not None else None
        if err is not None:
            raise body_error(kind, f"field {key} {err}")


def _all(items: list[Any], pred: Any) -> bool:
    return all(pred(x) for x in items)


def _register_rules(body: dict[int, Any]) -> None:
    if body[1] not in ROLES:
        raise body_error(REGISTER, f"role must be one of {', '.join(ROLES)}")
    try:
        PublicKey(body[2])
    except ProtocolError as e:
        raise body_error(REGISTER, f"pub: {e}") from None


def _anchor_rules(body: dict[int, Any]) -> None:
    if not body[1]:
        raise body_error(ANCHOR, "carries no checkpoint")
    for name, items, pred in (
            ("checkpoints", body[1], lambda x: isinstance(x, bytes)),
            ("proof", body[2], lambda x: isinstance(x, bytes) and len(x) == 32),
            ("aggregates", body.get(3, []), lambda x: isinstance(x, bytes)),
            ("statements", body.get(4, []), lambda x: isinstance(x, bytes))):
        if not _all(items, pred):
            raise body_error(ANCHOR, f"{name} has an item of the wrong kind")


def _instruction_rules(body: dict[int, Any]) -> None:
    err = command_args_error(body[2], body[3])
    if err:
        raise body_error(INSTRUCTION, err)
    if body[2] in ("time", "reboot"):
        raise body_error(INSTRUCTION, f"op {body[2]!r} is the fog's own business, not "
                                      "dispatch's")
    if not _all(body[5], lambda x: isinstance(x, bytes) and len(x) == 8):
        raise body_error(INSTRUCTION, "devs must be 8-byte meter ids")


def _rules_rules(body: dict[int, Any]) -> None:
    if body[4] != rules_digest(body[3]):
        raise body_error(RULES, "digest is not the SHA-256 of the text's UTF-8 bytes")


def _entries_rules(kind: str) -> Callable[[dict[int, Any]], None]:
    def rule(body: dict[int, Any]) -> None:
        if not _all(body[5], lambda x: is_int(x) and 0 <= x <= COUNT_MAX):
            raise body_error(kind, f"entries must be log indices (uint <= {COUNT_MAX})")
    return rule


def _fault_rules(body: dict[int, Any]) -> None:
    """A fault's entries are log indices; a closed outage record (keys 6 meters, 7 start,
    8 end, all or none) names sorted distinct meter ids and an outage that began before it
    ended, of kind "outage", ended by the report's time t (key 3)."""
    _entries_rules(FAULT)(body)
    closed = [k for k in (6, 7, 8) if k in body]
    if not closed:
        return
    if len(closed) != 3:
        raise body_error(FAULT, "meters (6), start (7) and end (8) come all together or not "
                                f"at all; the body has only {closed}")
    if body[1] != OUTAGE:
        raise body_error(FAULT, f"meters, start and end make a closed outage record: kind "
                                f"must be {OUTAGE!r}, not {body[1]!r}")
    meters = body[6]
    if not _all(meters, lambda x: isinstance(x, bytes) and len(x) == 8):
        raise body_error(FAULT, "meters must be 8-byte meter ids")
    if any(meters[i] >= meters[i + 1] for i in range(len(meters) - 1)):
        raise body_error(FAULT, "meters must be sorted ascending, each once")
    if body[7] >= body[8]:
        raise body_error(FAULT, f"an outage's start ({body[7]}) must be before its end "
                                f"({body[8]})")
    if body[8] > body[3]:
        raise body_error(FAULT, f"an outage's end ({body[8]}) is after the report's time t "
                                f"({body[3]}): report an outage once it has ended")


# the body rules per kind, run after the body schema (BODIES) held
BODY_RULES: dict[str, Callable[[dict[int, Any]], None]] = {
    REGISTER: _register_rules, ANCHOR: _anchor_rules, INSTRUCTION: _instruction_rules,
    RULES: _rules_rules, REPORT: _entries_rules(REPORT), FAULT: _fault_rules,
    **GC.BODY_RULES,
    **CB.BODY_RULES,
    **MK.BODY_RULES,
    **BL.BODY_RULES,
    **DV.BODY_RULES,
    **DR.BODY_RULES,
}


def _tx_rules(f: Fields) -> None:
    kind, body = f[3], f[4]
    if kind not in BODIES:
        raise ChainTxError("bad_fields", f"unknown transaction kind {kind!r}")
    _check_body(kind, body)
    BODY_RULES[kind](body)


def _block_rules(f: Fields) -> None:
    if f[2] == 0 and f[3] != ZERO32:
        raise ChainTxError("bad_fields", "prev must be 32 zero bytes at height 0 (genesis)")


_TX_TYPE = MessageType(TX, 1, {0: "u", 1: "b8", 2: "u", 3: "t", 4: "m", 5: "u", 6: "b8"}, _tx_rules,
                       {2: (1, COUNT_MAX), 3: (1, 16), 4: (0, 16), 5: (0, TIME_MAX)},
                       {1: "from", 2: "nonce", 3: "kind", 4: "body", 5: "t", 6: "chain"})
_BLOCK_TYPE = MessageType(BLOCK, 1, {0: "u", 1: "b8", 2: "u", 3: "b32", 4: "b32", 5: "u", 6: "u",
                                     7: "b8"}, _block_rules,
                          {2: (0, COUNT_MAX), 5: (0, COUNT_MAX), 6: (0, TIME_MAX)},
                          {1: "sealer", 2: "height", 3: "prev", 4: "txroot", 5: "ntx", 6: "t",
                           7: "chain"})
TYPES = (_TX_TYPE, _BLOCK_TYPE)


# --- builders ------------------------------------------------------------------------------
def tx(sender: bytes, nonce: int, kind: str, body: dict[int, Any], t: int,
       chain: bytes) -> Fields:
    return {0: TX, 1: sender, 2: nonce, 3: kind, 4: body, 5: t, 6: chain}


def register_body(role: str, pub: bytes, name: str = "") -> dict[int, Any]:
    return {1: role, 2: pub, 3: name}


def anchor_body(checkpoints: Sequence[bytes], proof: Sequence[bytes],
                aggregates: Sequence[bytes] = (),
                statements: Sequence[bytes] = ()) -> dict[int, Any]:
    body: dict[int, Any] = {1: list(checkpoints), 2: list(proof)}
    if aggregates:
        body[3] = list(aggregates)
    if statements:
        body[4] = list(statements)
    return body


def instruction_body(fog: bytes, op: str, args: dict[int, Any], not_after: int,
                     devs: Sequence[bytes] = (), why: str = "",
                     rule: bytes | None = None) -> dict[int, Any]:
    body: dict[int, Any] = {1: fog, 2: op, 3: args, 4: not_after, 5: list(devs), 6: why}
    if rule is not None:
        body[7] = rule
    return body


def rules_digest(text: str) -> bytes:
    """A rule set's id: SHA-256 of its text's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).digest()


def rules_body(name: str, version: int, text: str) -> dict[int, Any]:
    return {1: name, 2: version, 3: text, 4: rules_digest(text)}


def report_body(instruction: bytes, done: int, rejected: int, failed: int,
                entries: Sequence[int], detail: str = "") -> dict[int, Any]:
    return {1: instruction, 2: done, 3: rejected, 4: failed, 5: list(entries), 6: detail}


def fault_body(kind: str, detail: str, t: int, action: str, entries: Sequence[int] = (), *,
               meters: Sequence[bytes] | None = None, start: int | None = None,
               end: int | None = None) -> dict[int, Any]:
    """A fault's body; with meters, start and end, a closed outage record (section 18: the
    meters that lost supply from start to end, sorted ascending, at most OUTAGE_METERS_MAX).
    Keys are set as given, so the rules, not the builder, say what is wrong."""
    body: dict[int, Any] = {1: kind, 2: detail, 3: t, 4: action, 5: list(entries)}
    if meters is not None:
        body[6] = list(meters)
    if start is not None:
        body[7] = start
    if end is not None:
        body[8] = end
    return body


def block_header(sealer: bytes, height: int, prev: bytes, txroot: bytes, ntx: int, t: int,
                 chain: bytes) -> Fields:
    return {0: BLOCK, 1: sealer, 2: height, 3: prev, 4: txroot, 5: ntx, 6: t, 7: chain}


# --- a block's transactions as an RFC 9162 tree ---------------------------------------------
def tx_root(txs: Sequence[bytes]) -> bytes:
    """Root of the block's transactions (leaves = exact tx bytes, in block order)."""
    return merkle.root_from_leaf_hashes([merkle.leaf_hash(t) for t in txs])


def tx_path(txs: Sequence[bytes], index: int) -> list[bytes]:
    """Inclusion path of txs[index] in tx_root(txs)."""
    hashes = [merkle.leaf_hash(t) for t in txs]

    def subtree(lo: int, hi: int) -> bytes:
        return merkle.root_from_leaf_hashes(hashes[lo:hi])

    return merkle.inclusion_path(index, len(txs), subtree)

