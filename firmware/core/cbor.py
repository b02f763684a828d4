# Deterministic CBOR (RFC 8949 section 4.2.1) for the subset SPEC section 2 allows:
# unsigned/negative integers, byte and text strings, arrays, maps and booleans, plus tag 18
# for the COSE_Sign1 envelope only. The decoder rejects every non-deterministic encoding,
# so one logical message has exactly one byte string.
from core.compat import const

_MAX_DEPTH = const(8)
_U64 = 0x10000000000000000


class CBORError(ValueError):
    """reason is a short stable code (for counters); the message says what was wrong."""

    def __init__(self, reason, msg):
        super().__init__(msg)
        self.reason = reason


class Tag:
    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and other.tag == self.tag and other.value == self.value


def _head(buf, major, val):
    mt = major << 5
    if val < 24:
        buf.append(mt | val)
    elif val < 0x100:
        buf.append(mt | 24)
        buf.append(val)
    elif val < 0x10000:
        buf.append(mt | 25)
        buf.extend(val.to_bytes(2, "big"))
    elif val < 0x100000000:
        buf.append(mt | 26)
        buf.extend(val.to_bytes(4, "big"))
    elif val < _U64:
        buf.append(mt | 27)
        buf.extend(val.to_bytes(8, "big"))
    else:
        raise CBORError("unencodable", "integer out of CBOR range")


def _enc(buf, obj):
    if obj is True:
        buf.append(0xF5)
    elif obj is False:
        buf.append(0xF4)
    elif isinstance(obj, int):
        if obj >= 0:
            _head(buf, 0, obj)
        else:
            _head(buf, 1, -1 - obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(buf, 2, len(obj))
        buf.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode()
        _head(buf, 3, len(b))
        buf.extend(b)
    elif isinstance(obj, (list, tuple)):
        _head(buf, 4, len(obj))
        for item in obj:
            _enc(buf, item)
    elif isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            kb = bytearray()
            _enc(kb, k)
            items.append((bytes(kb), v))
        items.sort(key=lambda kv: kv[0])
        _head(buf, 5, len(items))
        last = None
        for kb, v in items:
            if kb == last:
                raise CBORError("unencodable", "duplicate map key")
            last = kb
            buf.extend(kb)
            _enc(buf, v)
    elif isinstance(obj, Tag):
        _head(buf, 6, obj.tag)
        _enc(buf, obj.value)
    else:
        raise CBORError("unencodable", "type not allowed in v1 payloads: " + str(type(obj)))


def encode(obj):
    buf = bytearray()
    _enc(buf, obj)
    return bytes(buf)


_INT64_MAX = 0x7FFFFFFFFFFFFFFF


def _need(data, pos, n):
    if pos + n > len(data):
        raise CBORError("malformed", "truncated CBOR at byte " + str(pos))


def _item(data, pos, depth, tags):
    _need(data, pos, 1)
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
            raise CBORError("not_deterministic", "indefinite-length break at byte " + str(pos - 1))
        raise CBORError("forbidden_type", "simple value or float not allowed in v1 (byte " + str(pos - 1) + ")")
    if ai < 24:
        val = ai
    elif ai < 28:
        n = 1 << (ai - 24)
        _need(data, pos, n)
        val = int.from_bytes(data[pos:pos + n], "big")
        pos += n
        # shortest form: each width is only allowed for values the smaller one can't hold
        if val < (24 if n == 1 else 1 << (4 * n)):
            raise CBORError("not_deterministic", "integer/length not in shortest form at byte " + str(pos - n - 1))
    elif ai == 31:
        raise CBORError("not_deterministic", "indefinite length at byte " + str(pos - 1))
    else:
        raise CBORError("malformed", "reserved additional info at byte " + str(pos - 1))
    if major < 2 and val > _INT64_MAX:  # SPEC section 2: integers lie in [-2^63, 2^63 - 1]
        raise CBORError("out_of_range", "integer outside [-2^63, 2^63 - 1] before byte " + str(pos))
    if major == 0:
        return val, pos
    if major == 1:
        return -1 - val, pos
    if major == 2 or major == 3:
        _need(data, pos, val)
        raw = bytes(data[pos:pos + val])
        pos += val
        if major == 2:
            return raw, pos
        try:
            return raw.decode(), pos
        except UnicodeError:
            raise CBORError("malformed", "text string is not valid UTF-8")
    if depth >= _MAX_DEPTH:
        raise CBORError("malformed", "nesting deeper than " + str(_MAX_DEPTH))
    if major == 4:
        _need(data, pos, val)  # every item takes at least one byte: no huge allocations
        out = []
        for _ in range(val):
            item, pos = _item(data, pos, depth + 1, None)
            out.append(item)
        return out, pos
    if major == 5:
        _need(data, pos, 2 * val)
        out = {}
        last = None
        for _ in range(val):
            kstart = pos
            key, pos = _item(data, pos, depth + 1, None)
            if not isinstance(key, (int, str, bytes)) or isinstance(key, bool):
                raise CBORError("forbidden_type", "map key must be an integer or a string")
            kb = data[kstart:pos]
            if last is not None and kb <= last:
                if kb == last:
                    raise CBORError("not_deterministic", "duplicate map key " + repr(key))
                raise CBORError("not_deterministic", "map keys not in sorted order at " + repr(key))
            last = kb
            value, pos = _item(data, pos, depth + 1, None)
            out[key] = value
        return out, pos
    # major 6: a tag, allowed only where the caller says (the COSE envelope)
    if tags is None or val not in tags:
        raise CBORError("forbidden_type", "tag " + str(val) + " not allowed here")
    value, pos = _item(data, pos, depth + 1, None)
    return Tag(val, value), pos


def decode(data, tags=None):
    """Decode exactly one deterministic CBOR item that fills all of data."""
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    obj, pos = _item(data, 0, 0, tags)
    if pos != len(data):
        raise CBORError("trailing_bytes", str(len(data) - pos) + " trailing bytes after the CBOR item")
    return obj
