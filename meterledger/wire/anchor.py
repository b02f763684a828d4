"""SPEC section 8, the anchor rule, as a pure function of (anchor body, fog key, what the
chain last anchored for that fog, which aggregates it already holds; docs/PROTOCOL.md
sections 15 and 19). The chain applies it with its state; the fog checks its own anchors
with it before sending them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meterledger.errors import ProtocolError
from meterledger.wire import merkle
from meterledger.wire.chain import ANCHOR, ChainTxError, body_error
from meterledger.wire.cooked import AGGREGATE, STATEMENT
from meterledger.wire.cose import Message, parse, verify_message
from meterledger.wire.keys import PublicKey
from meterledger.wire.meter import CHECKPOINT, ZERO32

__all__ = ["AnchoredHead", "CheckedAnchor", "anchor_aggregates", "anchor_statements",
           "check_anchor", "checked_anchor"]


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
    def of(cls, cp: Message) -> AnchoredHead:
        f = cp.fields
        return cls(f[2], f[3], f[4], cp.digest, f[6])


@dataclass(frozen=True)
class CheckedAnchor:
    """What a valid anchor carries: its checkpoints, aggregates and energy statements, each
    parsed and checked."""

    checkpoints: list[Message]
    aggregates: list[Message]
    statements: list[Message]


def check_anchor(body: dict[int, Any], fog: PublicKey, last: AnchoredHead | None,
                 known_aggregate: Callable[[bytes], bool] = lambda d: False) -> list[Message]:
    """The checkpoints an anchor body carries, each checked; raises ChainTxError.
    See checked_anchor for the rules; this is its checkpoints."""
    return checked_anchor(body, fog, last, known_aggregate).checkpoints


# long: the SPEC section 8 rule in the order its reasons are reported
def checked_anchor(body: dict[int, Any], fog: PublicKey, last: AnchoredHead | None,
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
        raise body_error(ANCHOR, "carries no checkpoint")
    out: list[Message] = []
    prev_height = last.height if last else 0
    prev_digest = last.digest if last else ZERO32
    size = last.size if last else 0
    t = last.t if last else 0
    for i, raw in enumerate(body[1]):
        try:
            parsed = parse(raw, schema=False)
            if parsed.kid != fog.id:
                raise ChainTxError("anchor_wrong_fog",
                                   f"checkpoint {i} was signed by {parsed.kid.hex()}, "
                                   f"not by the sending fog {fog.id_hex}")
            cp = verify_message(parsed, fog) if parsed.type == CHECKPOINT else None
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
    return CheckedAnchor(out, aggs, anchor_statements(body, fog))


def anchor_aggregates(body: dict[int, Any], fog: PublicKey,
                      known_aggregate: Callable[[bytes], bool] = lambda d: False
                      ) -> list[Message]:
    """The type-11 aggregates an anchor body carries (key 3), in order; raises ChainTxError.

    Each must be a type-11 message signed by the sending fog, carried once and never
    carried before (`anchor_bad_aggregate`); each with a non-zero prev must follow an
    aggregate carried earlier in this anchor or by an earlier anchor of this fog
    (`anchor_aggregate_chain`), so an interval close's hash chain is anchored whole, in
    order, from its first entry."""
    items = body.get(3, [])
    if not isinstance(items, list):
        raise body_error(ANCHOR, "field 3 must be a")
    out: list[Message] = []
    seen: set[bytes] = set()
    for i, raw in enumerate(items):
        agg = _signed_item(raw, fog, AGGREGATE, f"aggregate {i}", "anchor_bad_aggregate")
        d = agg.digest
        if d in seen:
            raise ChainTxError("anchor_bad_aggregate", f"aggregate {i} ({d.hex()}) is carried "
                               "twice in this anchor")
        if known_aggregate(d):
            raise ChainTxError("anchor_bad_aggregate", f"aggregate {i} ({d.hex()}) was "
                               "carried by an earlier anchor already")
        prev = agg.fields[15]
        if prev != ZERO32 and prev not in seen and not known_aggregate(prev):
            raise ChainTxError("anchor_aggregate_chain",
                               f"aggregate {i} ({agg.fields[1]!r}, ivl {agg.fields[2]}) has "
                               f"prev {prev.hex()}, which is neither carried before it in this "
                               "anchor nor by an earlier anchor of this fog")
        seen.add(d)
        out.append(agg)
    return out


def _check_closes(cps: list[Message], aggs: list[Message],
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


def anchor_statements(body: dict[int, Any], fog: PublicKey) -> list[Message]:
    """The type-14 energy statements an anchor body carries (key 4), in order; raises
    ChainTxError `anchor_bad_statement` for an item that is not a type-14 message signed by
    the sending fog, or a second statement of the same meter and interval in this anchor.
    Whether an earlier anchor stated that meter and interval is the chain's state to say
    (`anchor_statement_repeated`, aggregator.chain.app.kinds.anchor)."""
    items = body.get(4, [])
    if not isinstance(items, list):
        raise body_error(ANCHOR, "field 4 must be a")
    out: list[Message] = []
    seen: set[tuple[bytes, int]] = set()
    for i, raw in enumerate(items):
        st = _signed_item(raw, fog, STATEMENT, f"statement {i}", "anchor_bad_statement")
        key = (st.fields[1], st.fields[2])
        if key in seen:
            raise ChainTxError("anchor_bad_statement",
                               f"statement {i} states meter {key[0].hex()} interval {key[1]} "
                               "a second time in this anchor")
        seen.add(key)
        out.append(st)
    return out


def _signed_item(raw: Any, fog: PublicKey, type_: int, label: str, reason: str) -> Message:
    """One message an anchor carries: bytes of a type-`type_` message signed by the sending
    fog, checked (schema and signature); ChainTxError `reason` naming `label` otherwise."""
    if not isinstance(raw, bytes):
        raise ChainTxError(reason, f"{label} is not a byte string")
    try:
        parsed = parse(raw, schema=False)
        if parsed.type != type_:
            raise ChainTxError(reason, f"{label} is a type {parsed.type} message, not type "
                                       f"{type_}")
        if parsed.kid != fog.id:
            raise ChainTxError(reason, f"{label} was signed by {parsed.kid.hex()}, not by the "
                                       f"sending fog {fog.id_hex}")
        return verify_message(parsed, fog)
    except ChainTxError:
        raise
    except ProtocolError as e:
        raise ChainTxError(reason, f"{label}: {e.reason}: {e}") from None
