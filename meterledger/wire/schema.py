"""The payload schema language of docs/PROTOCOL.md section 4 and the message-type record.

A schema maps payload keys to kinds: "u" uint, "i" int, "b" any bstr, "b8"/"b32"/"b65" bstr
of that length, "t" tstr, "m" map, "a" array, "bool"; a trailing "?" marks an optional key.
Each message type is one `MessageType` (its number, the key holding the signer id, its
schema and its rule); `meterledger.wire.types` holds the one registry of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meterledger.errors import ProtocolError

__all__ = ["Fields", "MessageType", "Rule", "bad_fields", "check_schema", "is_int", "predicate"]

Fields = dict[int, Any]
Rule = Callable[[Fields], None]


def bad_fields(msg: str) -> ProtocolError:
    return ProtocolError("bad_fields", msg)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_MISSING = object()
_PREDICATES: dict[str, Callable[[Any], bool]] = {
    "u": lambda v: is_int(v) and v >= 0, "i": is_int,
    "b": lambda v: isinstance(v, bytes), "t": lambda v: isinstance(v, str),
    "m": lambda v: isinstance(v, dict), "a": lambda v: isinstance(v, list),
    "bool": lambda v: isinstance(v, bool),
}


def _predicate(kind: str) -> Callable[[Any], bool]:
    """The check of one schema kind (without its optional mark); ValueError if unknown."""
    pred = _PREDICATES.get(kind)
    if pred is None:
        if not (kind[:1] == "b" and kind[1:].isdigit()):
            raise ValueError(f"unknown schema kind {kind!r}")
        size = int(kind[1:])

        def pred(v: Any) -> bool:
            return isinstance(v, bytes) and len(v) == size

        _PREDICATES[kind] = pred
    return pred



# the public name of the kind check; chain bodies use the same language
predicate = _predicate


@dataclass(frozen=True)
class MessageType:
    """One SPEC message type: `signer_field` is the payload key whose value must equal the
    COSE kid; `rule` runs after the schema's key and kind checks passed."""

    type: int
    signer_field: int
    schema: Mapping[int, str]
    rule: Rule | None = None

    def __post_init__(self) -> None:
        if self.schema.get(0) != "u" or self.signer_field not in self.schema:
            raise ValueError("schema needs key 0 (type, 'u') and the signer field")
        for kind in self.schema.values():
            _predicate(kind.removesuffix("?"))  # raises on a typo


def check_schema(t: int, fields: Fields, schema: Mapping[int, str]) -> None:
    """Raise ProtocolError("bad_fields") unless `fields` has exactly the keys of `schema`
    (optional ones may be absent) with the right CBOR kinds."""
    for key in fields:
        if key not in schema:
            raise bad_fields(f"type {t} has no field {key!r}")
    for key, kind in schema.items():
        v = fields.get(key, _MISSING)
        if kind[-1] == "?":
            if v is _MISSING:
                continue
            kind = kind[:-1]
        elif v is _MISSING:
            raise bad_fields(f"type {t} is missing field {key}")
        if v.__class__ is int and kind == "u":  # the common case, inline
            if v >= 0:
                continue
        elif _predicate(kind)(v):
            continue
        raise bad_fields(f"type {t} field {key} must be {kind}")
