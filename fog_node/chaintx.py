"""Main dispatch chain messages: type 12 (transaction) and type 13 (block header).

SPEC section 4 leaves type 12 to the project (docs/PROTOCOL.md section 15); type 13 is ours.
Both are ordinary SPEC COSE_Sign1 messages, so every section 3 rule (4096-byte limit,
deterministic CBOR, low-S, kid = signer field) holds for them too.

This module is pure: schemas, builders, the per-kind body rules, the block's transaction
tree, and the SPEC section 8 anchor rule as a function of (anchor body, fog key, what the
chain last anchored for that fog, which aggregates it already holds; docs/PROTOCOL.md section 19). The aggregator applies it with its state; the fog node
uses it to check its own anchors before sending them; the audit verifier uses the parsers.
It lives in fog_node because the fog signs anchors and the fog never imports aggregator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fog_node import merkle
from fog_node import protocol as P
from fog_node.cbor import ProtocolError

TX, BLOCK = 12, 13
ROLES = ("dispatch", "fog", "regulator", "plant", "market")
REGISTER, ANCHOR, INSTRUCTION, REPORT, FAULT = "register", "anchor", "instruction", "report", "fault"
RULES = "rules"
KINDS = (REGISTER, ANCHOR, INSTRUCTION, REPORT, FAULT, RULES)

# body schemas per kind, in the schema language of protocol.SCHEMAS
BODIES: dict[str, dict[int, str]] = {
    REGISTER: {1: "t", 2: "b65", 3: "t"},                       # role, pub, name
    ANCHOR: {1: "a", 2: "a", 3: "a?"},                          # checkpoints, proof, aggregates
    INSTRUCTION: {1: "b8", 2: "t", 3: "m", 4: "u", 5: "a", 6: "t", 7: "b?"},
    REPORT: {1: "b32", 2: "u", 3: "u", 4: "u", 5: "a", 6: "t"},  # instr, done/rej/failed, entries
    FAULT: {1: "t", 2: "t", 3: "u", 4: "t", 5: "a"},            # kind, detail, t, action, entries
    RULES: {1: "t", 2: "u", 3: "t", 4: "b32"},                  # name, version, text, digest
}


class ChainTxError(ProtocolError):
    """A transaction or anchor the chain must refuse; `reason` is a stable code."""


def _body_error(kind: str, msg: str) -> ChainTxError:
    return ChainTxError("bad_fields", f"{kind} body: {msg}")


def _check_body(kind: str, body: dict[Any, Any]) -> None:
    schema = BODIES[kind]
    for key in body:
        if key not in schema:
            raise _body_error(kind, f"no field {key!r}")
    for key, kind_ in schema.items():
        optional = kind_.endswith("?")
        kind_ = kind_.removesuffix("?")
        if key not in body:
            if optional:
                continue
            raise _body_error(kind, f"missing field {key}")
        if not P._predicate(kind_)(body[key]):
            raise _body_error(kind, f"field {key} must be {kind_}")


def _all(items: list[Any], pred: Any) -> bool:
    return all(pred(x) for x in items)


def _tx_rules(f: P.Fields) -> None:
    kind, body = f[3], f[4]
    if kind not in BODIES:
        raise ChainTxError("bad_fields", f"unknown transaction kind {kind!r}")
    if f[2] < 1:
        raise ChainTxError("bad_fields", "nonce must be >= 1")
    _check_body(kind, body)
    if kind == REGISTER:
        if body[1] not in ROLES:
            raise _body_error(kind, f"role must be one of {', '.join(ROLES)}")
        try:
            P.PublicKey(body[2])
        except ProtocolError as e:
            raise _body_error(kind, f"pub: {e}") from None
    elif kind == ANCHOR:
        if not body[1]:
            raise _body_error(kind, "carries no checkpoint")
        for name, items, pred in (
                ("checkpoints", body[1], lambda x: isinstance(x, bytes)),
                ("proof", body[2], lambda x: isinstance(x, bytes) and len(x) == 32),
                ("aggregates", body.get(3, []), lambda x: isinstance(x, bytes))):
            if not _all(items, pred):
                raise _body_error(kind, f"{name} has an item of the wrong kind")
    elif kind == INSTRUCTION:
        err = P.command_args_error(body[2], body[3])
        if err:
            raise _body_error(kind, err)
        if body[2] in ("time", "reboot"):
            raise _body_error(kind, f"op {body[2]!r} is the fog's own business, not dispatch's")
        if not _all(body[5], lambda x: isinstance(x, bytes) and len(x) == 8):
            raise _body_error(kind, "devs must be 8-byte meter ids")
    elif kind == RULES:
        if not body[1]:
            raise _body_error(kind, "name must not be empty")
        if body[2] < 1:
            raise _body_error(kind, "version must be >= 1")
        if body[4] != rules_digest(body[3]):
            raise _body_error(kind, "digest is not the SHA-256 of the text's UTF-8 bytes")
    elif kind in (REPORT, FAULT):
        if not _all(body[5], lambda x: P._is_int(x) and x >= 0):
            raise _body_error(kind, "entries must be log indices (uint)")


def _block_rules(f: P.Fields) -> None:
    if f[2] == 0 and f[3] != P.ZERO32:
        raise ChainTxError("bad_fields", "prev must be 32 zero bytes at height 0 (genesis)")


P.register_type(TX, 1, {0: "u", 1: "b8", 2: "u", 3: "t", 4: "m", 5: "u", 6: "b8"}, _tx_rules)
P.register_type(BLOCK, 1, {0: "u", 1: "b8", 2: "u", 3: "b32", 4: "b32", 5: "u", 6: "u",
                           7: "b8"}, _block_rules)


# --- builders ------------------------------------------------------------------------------
def tx(sender: bytes, nonce: int, kind: str, body: dict[int, Any], t: int,
       chain: bytes) -> P.Fields:
    return {0: TX, 1: sender, 2: nonce, 3: kind, 4: body, 5: t, 6: chain}


def register_body(role: str, pub: bytes, name: str = "") -> dict[int, Any]:
    return {1: role, 2: pub, 3: name}


def anchor_body(checkpoints: Sequence[bytes], proof: Sequence[bytes],
                aggregates: Sequence[bytes] = ()) -> dict[int, Any]:
    body: dict[int, Any] = {1: list(checkpoints), 2: list(proof)}
    if aggregates:
        body[3] = list(aggregates)
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


def fault_body(kind: str, detail: str, t: int, action: str,
               entries: Sequence[int] = ()) -> dict[int, Any]:
    return {1: kind, 2: detail, 3: t, 4: action, 5: list(entries)}


def block_header(sealer: bytes, height: int, prev: bytes, txroot: bytes, ntx: int, t: int,
                 chain: bytes) -> P.Fields:
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


# --- SPEC section 8: the anchor rule ----------------------------------------------------------
@dataclass(frozen=True)
class AnchoredHead:
    """What the chain holds for a fog after an anchor: its newest anchored checkpoint."""

    height: int
    size: int
    root: bytes
    digest: bytes
    t: int

    @classmethod
    def of(cls, cp: P.Message) -> AnchoredHead:
        f = cp.fields
        return cls(f[2], f[3], f[4], cp.digest, f[6])


@dataclass(frozen=True)
class CheckedAnchor:
    """What a valid anchor carries: its checkpoints and aggregates, each parsed and checked."""

    checkpoints: list[P.Message]
    aggregates: list[P.Message]


def check_anchor(body: dict[int, Any], fog: P.PublicKey, last: AnchoredHead | None,
                 known_aggregate: Callable[[bytes], bool] = lambda d: False) -> list[P.Message]:
    """The checkpoints an anchor body carries, each checked; raises ChainTxError.
    See checked_anchor for the rules; this is its checkpoints."""
    return checked_anchor(body, fog, last, known_aggregate).checkpoints


def checked_anchor(body: dict[int, Any], fog: P.PublicKey, last: AnchoredHead | None,
                   known_aggregate: Callable[[bytes], bool] = lambda d: False) -> CheckedAnchor:
    """The checkpoints and aggregates an anchor body carries, each checked; raises
    ChainTxError.

    The body carries every checkpoint the fog sealed since its last anchored one, oldest
    first, so the whole side-chain is on the main chain: each is a type-6 message signed by
    the fog; heights continue by one and prev links each to the one before (the first to
    `last`, or height 1 with zero prev for a fog's first anchor); sizes and times never go
    backwards; and the RFC 9162 consistency proof from `last` (size, root) to the newest
    carried checkpoint verifies, so anchored history cannot be rewritten.

    Then the aggregates (anchor_aggregates), whose prev chains must be whole and whose
    closes the checkpoints commit to must be on the chain: `known_aggregate(digest)` says
    whether an earlier anchor of this fog carried that aggregate."""
    if not isinstance(body.get(1), list) or not body[1]:
        raise _body_error(ANCHOR, "carries no checkpoint")
    out: list[P.Message] = []
    prev_height = last.height if last else 0
    prev_digest = last.digest if last else P.ZERO32
    size = last.size if last else 0
    t = last.t if last else 0
    for i, raw in enumerate(body[1]):
        try:
            parsed = P.parse(raw, schema=False)
            if parsed.kid != fog.id:
                raise ChainTxError("anchor_wrong_fog",
                                   f"checkpoint {i} was signed by {parsed.kid.hex()}, "
                                   f"not by the sending fog {fog.id_hex}")
            cp = P.verify_message(parsed, fog) if parsed.type == P.CHECKPOINT else None
        except ChainTxError:
            raise
        except ProtocolError as e:
            raise ChainTxError("anchor_bad_checkpoint",
                               f"checkpoint {i}: {e.reason}: {e}") from None
        if cp is None:
            raise ChainTxError("anchor_bad_checkpoint", f"checkpoint {i} is not a type-6 message")
        f = cp.fields
        if f[2] != prev_height + 1:
            raise ChainTxError("anchor_height",
                               f"checkpoint {i} has height {f[2]}, expected {prev_height + 1}")
        if f[5] != prev_digest:
            raise ChainTxError("anchor_prev", f"checkpoint {i} (height {f[2]}) does not link "
                               "to the previous checkpoint through prev")
        if f[3] < size:
            raise ChainTxError("anchor_size_shrank",
                               f"checkpoint {i} has size {f[3]}, below the previous {size}")
        if f[6] < t:
            raise ChainTxError("anchor_t_backwards",
                               f"checkpoint {i} has t {f[6]}, before the previous {t}")
        prev_height, prev_digest, size, t = f[2], cp.digest, f[3], f[6]
        out.append(cp)
    newest = out[-1].fields
    first_size = last.size if last else 0
    first_root = last.root if last else merkle.EMPTY_ROOT
    try:
        merkle.verify_consistency(first_size, newest[3], first_root, newest[4], body[2])
    except merkle.MerkleError as e:
        raise ChainTxError("anchor_consistency",
                           f"consistency proof from size {first_size} to {newest[3]}: {e}") from None
    aggs = anchor_aggregates(body, fog, known_aggregate)
    _check_closes(out, aggs, known_aggregate)
    return CheckedAnchor(out, aggs)


def anchor_aggregates(body: dict[int, Any], fog: P.PublicKey,
                      known_aggregate: Callable[[bytes], bool] = lambda d: False
                      ) -> list[P.Message]:
    """The type-11 aggregates an anchor body carries (key 3), in order; raises ChainTxError.

    Each must be a type-11 message signed by the sending fog, carried once and never
    carried before (`anchor_bad_aggregate`); each with a non-zero prev must follow an
    aggregate carried earlier in this anchor or by an earlier anchor of this fog
    (`anchor_aggregate_chain`), so an interval close's hash chain is anchored whole, in
    order, from its first entry."""
    items = body.get(3, [])
    if not isinstance(items, list):
        raise _body_error(ANCHOR, "field 3 must be a")
    out: list[P.Message] = []
    seen: set[bytes] = set()
    for i, raw in enumerate(items):
        if not isinstance(raw, bytes):
            raise ChainTxError("anchor_bad_aggregate", f"aggregate {i} is not a byte string")
        try:
            parsed = P.parse(raw, schema=False)
            if parsed.type != P.AGGREGATE:
                raise ChainTxError("anchor_bad_aggregate", f"aggregate {i} is a type "
                                   f"{parsed.type} message, not type 11")
            if parsed.kid != fog.id:
                raise ChainTxError("anchor_bad_aggregate",
                                   f"aggregate {i} was signed by {parsed.kid.hex()}, not by "
                                   f"the sending fog {fog.id_hex}")
            agg = P.verify_message(parsed, fog)
        except ChainTxError:
            raise
        except ProtocolError as e:
            raise ChainTxError("anchor_bad_aggregate",
                               f"aggregate {i}: {e.reason}: {e}") from None
        d = agg.digest
        if d in seen:
            raise ChainTxError("anchor_bad_aggregate", f"aggregate {i} ({d.hex()}) is carried "
                               "twice in this anchor")
        if known_aggregate(d):
            raise ChainTxError("anchor_bad_aggregate", f"aggregate {i} ({d.hex()}) was "
                               "carried by an earlier anchor already")
        prev = agg.fields[15]
        if prev != P.ZERO32 and prev not in seen and not known_aggregate(prev):
            raise ChainTxError("anchor_aggregate_chain",
                               f"aggregate {i} ({agg.fields[1]!r}, ivl {agg.fields[2]}) has "
                               f"prev {prev.hex()}, which is neither carried before it in this "
                               "anchor nor by an earlier anchor of this fog")
        seen.add(d)
        out.append(agg)
    return out


def _check_closes(cps: list[P.Message], aggs: list[P.Message],
                  known_aggregate: Callable[[bytes], bool]) -> None:
    """Every checkpoint's agg (the last aggregate of an interval close) is on the chain:
    carried here (with the checkpoint's ivl) or by an earlier anchor of this fog."""
    carried = {a.digest: a for a in aggs}
    for i, cp in enumerate(cps):
        f = cp.fields
        if 8 not in f:
            continue
        agg = carried.get(f[8])
        if agg is None:
            if known_aggregate(f[8]):
                continue
            raise ChainTxError("anchor_missing_aggregate",
                               f"checkpoint {i} (height {f[2]}) commits to aggregate "
                               f"{f[8].hex()}, which neither this anchor nor an earlier one "
                               "of this fog carries")
        if agg.fields[2] != f.get(7):
            raise ChainTxError("anchor_aggregate_ivl",
                               f"checkpoint {i} (height {f[2]}) closes interval {f.get(7)} but "
                               f"its aggregate {f[8].hex()} is for interval {agg.fields[2]}")
