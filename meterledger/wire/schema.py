"""The payload schema language of docs/PROTOCOL.md section 4 and the message-type record.

A schema maps payload keys to kinds: "u" uint, "i" int, "b" any bstr, "b8"/"b32"/"b65" bstr
of that length, "t" tstr, "m" map, "a" array, "bool"; a trailing "?" marks an optional key.
Each message type is one `MessageType` (its number, the key holding the signer id, its
schema, the range of every field and its rule); `meterledger.wire.types` holds the one
registry of them.

Ranges (SPEC section 2): every field but a boolean or a fixed-length byte string has one,
inclusive: the value of an integer, the length of a text or byte string (in bytes), the
number of entries of a map or an array. Integers in general lie in [-2^63, 2^63 - 1] (the
decoder refuses any other, reason `out_of_range`); a field's own range is narrower where
the field's meaning bounds it, and a value outside it is `bad_fields`, naming the field and
the range. The table is docs/PROTOCOL.md section 4a; a test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meterledger.errors import ProtocolError
from meterledger.wire.cbor import INT64_MAX, INT64_MIN

__all__ = ["COUNT_MAX", "INT64_MAX", "INT64_MIN", "SEQ_MAX", "TIME_MAX", "Fields", "MessageType",
           "Range", "Rule", "bad_fields", "check_schema", "field_label", "is_int", "predicate",
           "range_error"]

Fields = dict[int, Any]
Rule = Callable[[Fields], None]
Range = tuple[int, int]

# a meter's seq and a command's cid travel as u32 on RS485 (SPEC section 6)
SEQ_MAX = 2**32 - 1
# Unix seconds: until 2106-02-07, the u32 range every meter can keep
TIME_MAX = 2**32 - 1
# heights, sizes, counts and indices: exact in every JSON reader (IEEE doubles, JavaScript)
COUNT_MAX = 2**53 - 1
# the kinds whose fields need a range; fixed-length bstr ("b8") and "bool" need none
_RANGED = ("u", "i", "t", "b", "m", "a")


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


def check_ranges(schema: Mapping[int, str], ranges: Mapping[int, Range], what: str) -> None:
    """ValueError unless every field of `schema` that needs a range has one within its kind's
    bounds (uint: [0, 2^63-1]; int: [-2^63, 2^63-1]; lengths and counts from 0)."""
    for key, kind in schema.items():
        base = kind.removesuffix("?")
        _predicate(base)  # raises on a typo
        if base not in _RANGED or key == 0:  # key 0 is the type: its registry entry
            continue
        r = ranges.get(key)
        if r is None:
            raise ValueError(f"{what} field {key} ({base}) has no range")
        lo, hi = r
        floor = INT64_MIN if base == "i" else 0
        if not floor <= lo <= hi <= INT64_MAX:
            raise ValueError(f"{what} field {key}: range {r} is not within [{floor}, 2^63-1]")
    for key in ranges:
        if key not in schema:
            raise ValueError(f"{what}: a range for field {key}, which the schema lacks")


@dataclass(frozen=True)
class MessageType:
    """One SPEC message type: `signer_field` is the payload key whose value must equal the
    COSE kid; `ranges` the inclusive range of every field that needs one (module doc);
    `rule` runs after the schema's key, kind and range checks passed."""

    type: int
    signer_field: int
    schema: Mapping[int, str]
    rule: Rule | None = None
    ranges: Mapping[int, Range] = field(default_factory=dict)
    names: Mapping[int, str] = field(default_factory=dict)  # for messages: "field 2 (seq)"

    def __post_init__(self) -> None:
        if self.schema.get(0) != "u" or self.signer_field not in self.schema:
            raise ValueError("schema needs key 0 (type, 'u') and the signer field")
        check_ranges(self.schema, self.ranges, f"type {self.type}")


def range_error(value: Any, r: Range) -> str | None:
    """What is wrong with `value` for its range (None if nothing): an integer's value, the
    length of a text (UTF-8 bytes) or byte string, the number of a map's or array's entries."""
    lo, hi = r
    if value.__class__ is int:
        return None if lo <= value <= hi else f"is {value}, outside [{lo}, {hi}]"
    if isinstance(value, str):
        n = len(value.encode())
        what = "bytes of UTF-8"
    elif isinstance(value, bytes):
        n, what = len(value), "bytes"
    elif isinstance(value, dict | list):
        n, what = len(value), "entries"
    else:
        return None
    return None if lo <= n <= hi else f"has {n} {what}, outside [{lo}, {hi}]"


def field_label(t: int, key: Any, names: Mapping[int, str] | None) -> str:
    """'type 1 field 2 (seq)': how errors name a field."""
    name = names.get(key) if names is not None and isinstance(key, int) else None
    return f"type {t} field {key!r}" + (f" ({name})" if name else "")


def check_schema(t: int, fields: Fields, schema: Mapping[int, str],
                 ranges: Mapping[int, Range] | None = None,
                 names: Mapping[int, str] | None = None) -> None:
    """Raise ProtocolError("bad_fields") unless `fields` has exactly the keys of `schema`
    (optional ones may be absent) with the right CBOR kinds, each within its range."""
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
            if v < 0:
                raise bad_fields(f"{field_label(t, key, names)} must be {kind}")
        elif not _predicate(kind)(v):
            raise bad_fields(f"{field_label(t, key, names)} must be {kind}")
        r = ranges.get(key) if ranges is not None else None
        if r is not None:
            err = range_error(v, r)
            if err is not None:
                raise bad_fields(f"{field_label(t, key, names)} {err}")
