"""Strict deterministic CBOR for the SPEC section 2 subset, written for CPython speed.

An independent implementation of the same rules as firmware/core/cbor.py (the host never
imports the firmware; tests/wire/test_protocol.py cross-checks the two on golden vectors,
mutations and random bytes). The decoder accepts exactly one encoding per value, RFC 8949
section 4.2.1 "core deterministic": shortest integer and length heads, definite lengths,
map keys sorted bytewise by their encoding with no duplicates. Allowed: unsigned and
negative integers, byte and text strings, arrays, maps and booleans; tags only where the
caller allows them (tag 18 on the COSE envelope).

Failures raise CBORError (a ProtocolError) with the firmware's reason codes, and where one
input breaks several rules the FIRST one met by the firmware's decoder is reported: the
checks below run in the same order (head, shortest form, length available, depth, ...).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from meterledger.errors import ProtocolError

__all__ = ["INT64_MAX", "INT64_MIN", "CBORError", "ProtocolError", "Tag", "decode", "encode", "head",
           "item_end"]

MAX_DEPTH = 8
_U64 = 1 << 64
# smallest value each head width may carry (shortest form), indexed by additional info
_MIN_FOR_AI = {24: 24, 25: 1 << 8, 26: 1 << 16, 27: 1 << 32}
_WIDTH_FOR_AI = {24: 1, 25: 2, 26: 4, 27: 8}


class CBORError(ProtocolError):
    """Decoding or encoding failed: malformed, not_deterministic, forbidden_type,
    trailing_bytes (decoding) or unencodable (encoding)."""


@dataclass(frozen=True)
class Tag:
    tag: int
    value: Any


# --- encoder ---------------------------------------------------------------------------------
def head(major: int, val: int) -> bytes:
    """The shortest head for major type `major` with argument `val`."""
    mt = major << 5
    if val < 24:
        return bytes((mt | val,))
    if val < 0x100:
        return bytes((mt | 24, val))
    if val < 0x10000:
        return bytes((mt | 25,)) + val.to_bytes(2, "big")
    if val < 0x100000000:
        return bytes((mt | 26,)) + val.to_bytes(4, "big")
    if val < _U64:
        return bytes((mt | 27,)) + val.to_bytes(8, "big")
    raise CBORError("unencodable", "integer out of CBOR range")


def _first(kv: tuple[bytes, Any]) -> bytes:
    return kv[0]


def _enc(out: list[bytes], obj: Any) -> None:
    if obj is True:
        out.append(b"\xf5")
    elif obj is False:
        out.append(b"\xf4")
    elif isinstance(obj, int):
        out.append(head(0, obj) if obj >= 0 else head(1, -1 - obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        b = bytes(obj)
        out.append(head(2, len(b)))
        out.append(b)
    elif isinstance(obj, str):
        b = obj.encode()
        out.append(head(3, len(b)))
        out.append(b)
    elif isinstance(obj, (list, tuple)):
        out.append(head(4, len(obj)))
        for item in obj:
            _enc(out, item)
    elif isinstance(obj, dict):
        items = sorted(((encode(k), v) for k, v in obj.items()), key=_first)
        for i in range(1, len(items)):
            if items[i][0] == items[i - 1][0]:
                raise CBORError("unencodable", "duplicate map key")
        out.append(head(5, len(items)))
        for kb, v in items:
            out.append(kb)
            _enc(out, v)
    elif isinstance(obj, Tag):
        out.append(head(6, obj.tag))
        _enc(out, obj.value)
    else:
        raise CBORError("unencodable", f"type not allowed in v1 payloads: {type(obj).__name__}")


def encode(obj: Any) -> bytes:
    """Deterministic encoding (RFC 8949 section 4.2.1: map keys in bytewise order)."""
    out: list[bytes] = []
    _enc(out, obj)
    return b"".join(out)


# --- decoder ---------------------------------------------------------------------------------
def _truncated(pos: int) -> CBORError:
    return CBORError("malformed", f"truncated CBOR at byte {pos}")


# SPEC section 2: every integer lies in [-2^63, 2^63 - 1], so every party can store it
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _out_of_range(value: int, end: int) -> CBORError:
    return CBORError("out_of_range", f"integer {value} ending at byte {end} is outside "
                                     "[-2^63, 2^63 - 1]")


# long: one function per CBOR item keeps the checks in the firmware's order, and is the hot path
def _item(data: bytes, pos: int, depth: int, tags: Collection[int] | None) -> tuple[Any, int]:
    if pos >= len(data):
        raise _truncated(pos)
    ib = data[pos]
    major = ib >> 5
    ai = ib & 31
    pos += 1
    if major == 7:
        if ai == 20:
            return False, pos
        if ai == 21:
            return True, pos
        if ai == 31:
            raise CBORError("not_deterministic", f"indefinite-length break at byte {pos - 1}")
        raise CBORError("forbidden_type", f"simple value or float not allowed in v1 (byte {pos - 1})")
    if ai < 24:
        val = ai
    elif ai < 28:
        end = pos + _WIDTH_FOR_AI[ai]
        if end > len(data):
            raise _truncated(pos)
        val = int.from_bytes(data[pos:end], "big")
        if val < _MIN_FOR_AI[ai]:
            raise CBORError("not_deterministic", f"integer/length not in shortest form at byte {pos - 1}")
        pos = end
    elif ai == 31:
        raise CBORError("not_deterministic", f"indefinite length at byte {pos - 1}")
    else:
        raise CBORError("malformed", f"reserved additional info at byte {pos - 1}")
    if major == 0:
        if val > INT64_MAX:
            raise _out_of_range(val, pos)
        return val, pos
    if major == 2:
        end = pos + val
        if end > len(data):
            raise _truncated(pos)
        return data[pos:end], end
    if major == 1:
        if val > INT64_MAX:
            raise _out_of_range(-1 - val, pos)
        return -1 - val, pos
    if major == 3:
        end = pos + val
        if end > len(data):
            raise _truncated(pos)
        try:
            return data[pos:end].decode(), end
        except UnicodeError:
            raise CBORError("malformed", "text string is not valid UTF-8") from None
    if depth >= MAX_DEPTH:
        raise CBORError("malformed", f"nesting deeper than {MAX_DEPTH}")
    depth += 1
    if major == 5:
        # every key and value takes at least one byte: no huge allocations, and the
        # firmware reports this truncation before looking at any entry
        if pos + 2 * val > len(data):
            raise _truncated(pos)
        return _map(data, pos, val, depth)
    if major == 4:
        if pos + val > len(data):
            raise _truncated(pos)
        arr: list[Any] = []
        for _ in range(val):
            item, pos = _item(data, pos, depth, None)
            arr.append(item)
        return arr, pos
    # major 6: a tag, allowed only where the caller says (the COSE envelope)
    if tags is None or val not in tags:
        raise CBORError("forbidden_type", f"tag {val} not allowed here")
    value, pos = _item(data, pos, depth, None)
    return Tag(val, value), pos


# long: the common items inlined, for the same reason as _item
def _map(data: bytes, pos: int, count: int, depth: int) -> tuple[dict[Any, Any], int]:
    """The entries of a map whose head _item has read. Same checks in the same order as
    _item, with the common items inlined (CPython call overhead dominates decoding): keys
    0..23, unsigned integers, short byte strings. Everything else goes through _item."""
    size = len(data)
    out: dict[Any, Any] = {}
    last = b""
    for _ in range(count):
        if pos >= size:
            raise _truncated(pos)
        ib = data[pos]
        if ib < 24:  # uint key 0..23, the keys of every v1 payload
            key: Any = ib
            kb = _ONE_BYTE[ib]
            pos += 1
        else:
            kstart = pos
            key, pos = _item(data, pos, depth, None)
            if isinstance(key, bool) or not isinstance(key, (int, str, bytes)):
                raise CBORError("forbidden_type", "map key must be an integer or a string")
            kb = data[kstart:pos]
        if kb <= last:  # b"" sorts before every encoded key
            if kb == last:
                raise CBORError("not_deterministic", f"duplicate map key {key!r}")
            raise CBORError("not_deterministic", f"map keys not in sorted order at {key!r}")
        last = kb
        if pos >= size:
            raise _truncated(pos)
        ib = data[pos]
        if ib < 24:
            out[key] = ib
            pos += 1
        elif ib < 28:  # uint with a 1, 2, 4 or 8 byte argument
            start = pos + 1
            end = start + _WIDTH_FOR_AI[ib]
            if end > size:
                raise _truncated(start)
            v = int.from_bytes(data[start:end], "big")
            if v < _MIN_FOR_AI[ib]:
                raise CBORError("not_deterministic", f"integer/length not in shortest form at byte {pos}")
            if v > INT64_MAX:
                raise _out_of_range(v, end)
            out[key] = v
            pos = end
        elif 0x40 <= ib < 0x58:  # bstr shorter than 24 bytes
            start = pos + 1
            end = start + ib - 0x40
            if end > size:
                raise _truncated(start)
            out[key] = data[start:end]
            pos = end
        elif ib == 0x58 and pos + 1 < size and data[pos + 1] >= 24:  # bstr of 24..255 bytes
            start = pos + 2
            end = start + data[pos + 1]
            if end > size:
                raise _truncated(start)
            out[key] = data[start:end]
            pos = end
        else:
            out[key], pos = _item(data, pos, depth, None)
    return out, pos


_ONE_BYTE = tuple(bytes((i,)) for i in range(24))


def item_end(data: bytes, pos: int = 0, tags: Collection[int] | None = None) -> int:
    """Where the one deterministic CBOR item starting at `pos` ends (e.g. to split an array
    of messages without copying); the item is checked as strictly as by decode()."""
    return _item(data, pos, 0, tags)[1]


def decode(data: bytes, tags: Collection[int] | None = None) -> Any:
    """Decode exactly one deterministic CBOR item that fills all of `data`.

    Maps come back as dict, arrays as list, byte strings as bytes, tagged items (only tags
    in `tags`, and only at the top level) as Tag."""
    if not isinstance(data, bytes):
        data = bytes(data)
    obj, pos = _item(data, 0, 0, tags)
    if pos != len(data):
        raise CBORError("trailing_bytes", f"{len(data) - pos} trailing bytes after the CBOR item")
    return obj
