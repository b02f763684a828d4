"""Chain messages as JSON by name: a type-12 transaction (its body's keys named per kind, an
anchor's checkpoints and aggregates decoded in place), a type-13 block header, any SPEC
message. Pure, for the chain API's `decoded` views and anyone reading a block offline.

Names are those of the type registry (`meterledger.wire.types.NAMES`, which
`meterledger.wire.names` feeds) and of `BODY_NAMES` below; bytes are lowercase hex, maps
with integer keys (an instruction's args) get their keys as decimal strings, times stay
integers (unix seconds), as `tools.reading decode` prints them. The structure is checked
(SPEC section 3, `parse` without the schema), the signature is not: the chain checked it.
"""

from __future__ import annotations

from typing import Any

from meterledger.errors import ProtocolError
from meterledger.wire import billing as BL
from meterledger.wire import carbon as CB
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import dr as DR
from meterledger.wire import market as MK
from meterledger.wire import trace as DV
from meterledger.wire.cose import digest, parse
from meterledger.wire.names import TYPE_NAMES, to_json
from meterledger.wire.types import NAMES

__all__ = ["BODY_NAMES", "decode_header", "decode_message", "decode_tx", "tx_kind"]

# the body of each transaction kind (meterledger/wire/chain.py BODIES), by name
BODY_NAMES: dict[str, dict[int, str]] = {
    C.REGISTER: {1: "role", 2: "pub", 3: "name"},
    C.ANCHOR: {1: "checkpoints", 2: "proof", 3: "aggregates", 4: "statements"},
    C.INSTRUCTION: {1: "fog", 2: "op", 3: "args", 4: "not_after", 5: "devs", 6: "why",
                    7: "rule"},
    C.REPORT: {1: "instruction", 2: "done", 3: "rejected", 4: "failed", 5: "entries",
               6: "detail"},
    C.FAULT: {1: "kind", 2: "detail", 3: "t", 4: "action", 5: "entries", 6: "meters",
              7: "start", 8: "end"},
    C.RULES: {1: "name", 2: "version", 3: "text", 4: "digest"},
    **GC.BODY_NAMES,
    **CB.BODY_NAMES,
    **MK.BODY_NAMES,
    **BL.BODY_NAMES,
    **DV.BODY_NAMES,
    **DR.BODY_NAMES,
}
_CARRIED = {1: "checkpoints", 3: "aggregates", 4: "statements"}  # an anchor's messages, decoded in place


def _named(fields: dict[Any, Any]) -> dict[str, Any]:
    # key 0 is every payload's type; 1 and 17 the meter's and the fog's id where a type's
    # own names say nothing else (as tools.reading names them)
    names = {0: "type", 1: "dev", 17: "fog", **NAMES.get(fields.get(0, -1), {})}
    return {names.get(k, str(k)): to_json(v) for k, v in fields.items()}


def decode_message(raw: bytes) -> dict[str, Any]:
    """Any SPEC message: its digest, type name and fields by name (a transaction's body
    too). Raises ProtocolError for bytes that are not a well-formed message."""
    m = parse(raw, schema=False)
    if m.type == C.TX:
        return decode_tx(raw)
    return {"digest": m.digest.hex(), "type_name": TYPE_NAMES.get(m.type, str(m.type)),
            **_named(m.fields)}


def _carried(raw: Any) -> dict[str, Any]:
    """One message an anchor carries; one that does not parse is shown with its reason."""
    if not isinstance(raw, bytes):
        return {"error": "bad_fields", "raw": to_json(raw)}
    try:
        return decode_message(raw)
    except ProtocolError as e:
        return {"error": e.reason, "raw": raw.hex(), "digest": digest(raw).hex()}


def _body(kind: Any, body: Any) -> Any:
    if not isinstance(body, dict):
        return to_json(body)
    names = BODY_NAMES.get(kind, {}) if isinstance(kind, str) else {}
    out: dict[str, Any] = {}
    for key, value in body.items():
        if kind == C.ANCHOR and key in _CARRIED and isinstance(value, list):
            out[_CARRIED[key]] = [_carried(v) for v in value]
        else:
            out[names.get(key, str(key))] = to_json(value)
    return out


def decode_tx(raw: bytes) -> dict[str, Any]:
    """A type-12 transaction: digest, type 12, `from` (the sender's id), nonce, kind, body
    (by name), t, chain. Raises ProtocolError if it is no well-formed transaction."""
    m = parse(raw, schema=False)
    if m.type != C.TX:
        raise ProtocolError("bad_fields", f"message type {m.type} is not a transaction (12)")
    out: dict[str, Any] = {"digest": m.digest.hex(), "type_name": TYPE_NAMES[C.TX]}
    for key, value in _named(m.fields).items():
        out[key] = value
    out["body"] = _body(m.fields.get(3), m.fields.get(4))
    return out


def decode_header(raw: bytes) -> dict[str, Any]:
    """A type-13 block header: hash (its digest), type 13, sealer, height, prev, txroot,
    ntx, t, chain. Raises ProtocolError if it is no well-formed header."""
    m = parse(raw, schema=False)
    if m.type != C.BLOCK:
        raise ProtocolError("bad_fields", f"message type {m.type} is not a block header (13)")
    return {"hash": m.digest.hex(), "type_name": TYPE_NAMES[C.BLOCK], **_named(m.fields)}


def tx_kind(raw: bytes) -> str:
    """A transaction's kind (its field 3); ProtocolError if it has none."""
    kind = parse(raw, schema=False).fields.get(3)
    if not isinstance(kind, str):
        raise ProtocolError("bad_fields", "the transaction has no kind")
    return kind
