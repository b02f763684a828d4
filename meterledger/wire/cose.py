"""SPEC section 3 on the host: COSE_Sign1 (ES256) envelopes, parsed with every reject rule
in the firmware's order (docs/PROTOCOL.md section 3), verified and signed.

An independent CPython implementation of firmware/core/cose.py; tests check both accept the
same messages and reject the same bytes with the same first reason. Typical use on the fog,
where the signer is only known from the kid:

    m = parse(raw, schema=False)        # structure, encoding, kid, r/s range, low-S
    key = registry[m.kid]               # unknown kid: the caller's policy
    verify_message(m, key)              # kid_mismatch, bad_signature, then bad_fields

`verify(raw, key)` does the same in one call when the key is known up front.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from meterledger.errors import ProtocolError
from meterledger.wire.cbor import INT64_MAX, CBORError, Tag, decode, encode, head
from meterledger.wire.keys import HALF_N, N, PublicKey, SigningKey
from meterledger.wire.meter import READING
from meterledger.wire.schema import Fields
from meterledger.wire.schema import is_int as _is_int
from meterledger.wire.types import (
    RULES,
    SCHEMAS,
    SIGNER_FIELD,
    check_field_ranges,
    check_fields,
)

__all__ = ["MAX_MESSAGE", "PROTECTED", "TAG_SIGN1", "Message", "check_message_fields", "digest",
           "parse", "sign1", "sign1_encoded", "to_be_signed", "verify", "verify_message"]

MAX_MESSAGE = 4096
PROTECTED = b"\xa1\x01\x26"  # {1: -7}, alg ES256
TAG_SIGN1 = 18
_KID = 4
# ToBeSigned up to the payload bstr: ["Signature1", h'A10126', h'', ...
_TBS_PREFIX = b"\x84\x6aSignature1\x43\xa1\x01\x26\x40"
# the only valid envelope starts 18([h'A10126', {4: h'<8 bytes>'}, ... and ends h'<64>'])
_ENV_PREFIX = b"\xd2\x84\x43\xa1\x01\x26\xa1\x04\x48"
_SIG_HEAD = b"\x58\x40"


# --- the reading fast path ------------------------------------------------------------------
# A v1 reading has one deterministic encoding: keys 0..8 (and 9) in order, shortest heads.
# parse() recognises that layout byte for byte and builds the same dict decode() would, and
# the key and kind checks of the schema are then already done. Any other byte sequence,
# valid or not, goes through the strict decoder and check_fields(), so every result and
# rejection reason is the generic one (tests/wire/test_fastpath.py checks both agree).
_READING_SCHEMA = SCHEMAS[READING]
_READING_SCHEMA_V1 = dict(_READING_SCHEMA)
# head byte -> (argument width, smallest argument in shortest form), majors 0 and 1
_WIDE = {0x18: (1, 24), 0x19: (2, 1 << 8), 0x1A: (4, 1 << 16), 0x1B: (8, 1 << 32),
         0x38: (1, 24), 0x39: (2, 1 << 8), 0x3A: (4, 1 << 16), 0x3B: (8, 1 << 32)}
_READING_HEAD = b"\x00\x01\x01\x48"  # 0: 1, 1: bstr(8)
_PREV_HEAD = b"\x08\x58\x20"  # 8: bstr(32)


# long: written out flat: CPython's call overhead is most of its cost
def _reading_fields(p: bytes) -> Fields | None:
    """decode(p) if p is a type-1 payload in its deterministic layout, else None.

    Written out flat (no helper calls): CPython's call overhead is most of its cost."""
    try:
        h = p[0]
        if (h != 0xA9 and h != 0xAA) or p[1:5] != _READING_HEAD:
            return None
        n = len(p)
        f: Fields = {0: READING, 1: p[5:13]}
        pos = 13
        for key in (2, 3, 4, 5, 6, 7):  # uints
            if p[pos] != key:
                return None
            b = p[pos + 1]
            if b < 24:
                f[key] = b
                pos += 2
                continue
            w = _WIDE.get(b)
            if w is None or b > 0x1B:
                return None
            end = pos + 2 + w[0]
            v = int.from_bytes(p[pos + 2:end], "big")
            if v < w[1] or end > n or v > INT64_MAX:  # the decoder names what is wrong
                return None
            f[key] = v
            pos = end
        if p[pos:pos + 3] != _PREV_HEAD:
            return None
        end = pos + 35
        f[8] = p[pos + 3:end]
        if h == 0xA9:
            return f if end == n else None
        b = p[end + 1]
        if p[end] != 9 or not 0xA0 <= b < 0xB8:  # 9: a map of fewer than 24 entries
            return None
        pos, last = end + 2, -1
        q: dict[int, int] = {}
        for _ in range(b - 0xA0):
            k = p[pos]
            if not last < k < 24:  # one-byte uint keys, ascending: the sorted order
                return None
            b = p[pos + 1]
            if b < 0x18:
                v, pos = b, pos + 2
            elif 0x20 <= b < 0x38:
                v, pos = 0x1F - b, pos + 2
            else:  # any integer, as decode() reads it (the rules judge the value)
                w = _WIDE.get(b)
                if w is None:
                    return None
                end = pos + 2 + w[0]
                v = int.from_bytes(p[pos + 2:end], "big")
                if v < w[1] or end > n or v > INT64_MAX:
                    return None
                v = v if b < 0x20 else -1 - v
                pos = end
            q[k] = v
            last = k
        f[9] = q
        return f if pos == n else None
    except IndexError:
        return None


def check_message_fields(m: Message) -> None:
    """check_fields(m.fields), without the key and kind checks that parse() already proved
    for a reading in its deterministic layout (while the built-in reading schema is in
    force); the ranges and every rule still run."""
    if m.layout_checked and SCHEMAS.get(READING) is _READING_SCHEMA \
            and _READING_SCHEMA == _READING_SCHEMA_V1:
        check_field_ranges(m.fields)
        rule = RULES.get(READING)
        if rule is not None:
            rule(m.fields)
    else:
        check_fields(m.fields)


# --- COSE_Sign1 ------------------------------------------------------------------------------
def to_be_signed(payload: bytes) -> bytes:
    return _TBS_PREFIX + head(2, len(payload)) + payload


def digest(raw: bytes) -> bytes:
    """Message digest (SPEC section 3): SHA-256 of the whole COSE_Sign1, tag included."""
    return hashlib.sha256(raw).digest()


@dataclass(frozen=True)
class Message:
    """A parsed COSE_Sign1. Equality and hash are those of `raw`, which determines the rest."""

    raw: bytes
    kid: bytes = field(compare=False)
    payload: bytes = field(compare=False)
    fields: Fields = field(compare=False)
    signature: bytes = field(compare=False)
    # set by parse() when the payload had the one deterministic layout of a v1 reading:
    # its keys and kinds are then known to match the built-in schema, only rules remain
    layout_checked: bool = field(default=False, compare=False, repr=False)

    @property
    def type(self) -> int:
        t: int = self.fields[0]
        return t

    @property
    def digest(self) -> bytes:
        return digest(self.raw)

    @property
    def tbs(self) -> bytes:
        return to_be_signed(self.payload)


def _envelope(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(kid, payload, signature) of a well-formed envelope, else the firmware's reason."""
    n = len(raw)
    # fast path: the single deterministic encoding of a well-formed envelope. When it does
    # not match byte for byte, the strict decoder below finds and names the fault.
    if n >= 84 and raw.startswith(_ENV_PREFIX):
        b = raw[17]
        start, size = 0, -1
        if 0x40 <= b < 0x58:
            start, size = 18, b - 0x40
        elif b == 0x58 and raw[18] >= 24:
            start, size = 19, raw[18]
        elif b == 0x59 and raw[18]:
            start, size = 20, int.from_bytes(raw[18:20], "big")
        end = start + size
        if size >= 0 and end + 66 == n and raw[end:end + 2] == _SIG_HEAD:
            return raw[9:17], raw[start:end], raw[end + 2:]
    try:
        env = decode(raw, (TAG_SIGN1,))
    except CBORError as e:
        raise CBORError(e.reason, f"envelope: {e}") from None
    if not isinstance(env, Tag) or env.tag != TAG_SIGN1:
        raise ProtocolError("bad_tag", "not a tagged COSE_Sign1 (CBOR tag 18)")
    arr = env.value
    if not isinstance(arr, list) or len(arr) != 4:
        raise ProtocolError("bad_structure", "COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, sig = arr
    if protected != PROTECTED:
        raise ProtocolError("bad_protected", "protected header must be h'A10126' (alg ES256 only)")
    if not isinstance(unprotected, dict) or list(unprotected) != [_KID]:
        raise ProtocolError("bad_kid", "unprotected header must be exactly {4: kid}")
    kid = unprotected[_KID]
    if not isinstance(kid, bytes) or len(kid) != 8:
        raise ProtocolError("bad_kid", "kid must be a byte string of 8 bytes")
    if not isinstance(payload, bytes):
        raise ProtocolError("bad_structure", "payload must be a byte string")
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise ProtocolError("bad_signature_encoding", "signature must be 64 bytes (r || s)")
    return kid, payload, sig


def parse(raw: bytes, schema: bool = True) -> Message:
    """Every SPEC section 3 check but the signature, in the firmware's order; with `schema`
    also the payload schema (bad_fields). Raises ProtocolError."""
    if len(raw) > MAX_MESSAGE:
        raise ProtocolError("too_large", f"message is {len(raw)} bytes, more than {MAX_MESSAGE}")
    raw = bytes(raw)
    kid, payload, sig = _envelope(raw)
    fields = _reading_fields(payload)
    layout = fields is not None
    if fields is None:
        try:
            fields = decode(payload)
        except CBORError as e:
            raise CBORError(e.reason, f"payload: {e}") from None
    t: Any = fields.get(0) if isinstance(fields, dict) else None
    if not _is_int(t):
        raise ProtocolError("bad_payload", "payload must be a map with an integer type at key 0")
    signer_key = SIGNER_FIELD.get(t)
    if signer_key is None:
        raise ProtocolError("unknown_type", f"unknown message type {t}")
    if fields.get(signer_key) != kid:
        raise ProtocolError("kid_mismatch",
                            f"kid does not equal the payload's signer field (key {signer_key})")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (1 <= r < N and 1 <= s < N):
        raise ProtocolError("sig_out_of_range", "signature r or s outside [1, n-1]")
    if s > HALF_N:
        raise ProtocolError("high_s", "signature s is not low-S (s > n/2)")
    m = Message(raw, kid, payload, fields, sig, layout)
    if schema:
        check_message_fields(m)
    return m


def verify_message(m: Message, key: PublicKey, schema: bool = True) -> Message:
    """The signer and signature checks of a parse()d message, then (by default) its schema."""
    if m.kid != key.id:
        raise ProtocolError("kid_mismatch", "message was signed by a different party")
    if not key.verify(m.signature, to_be_signed(m.payload)):
        raise ProtocolError("bad_signature", "ECDSA signature does not verify")
    if schema:
        check_message_fields(m)
    return m


def verify(raw: bytes, key: PublicKey, schema: bool = True) -> Message:
    """parse() + kid == key.id + ECDSA signature + schema, reasons in the table's order."""
    return verify_message(parse(raw, schema=False), key, schema)


def sign1(key: SigningKey, fields: Fields, check: bool = True) -> bytes:
    """The SPEC COSE_Sign1 of a payload map. With `check` (default) the fog refuses to sign
    what a receiver would reject: the signer field must be key.id, the schema must hold and
    the message must fit in MAX_MESSAGE."""
    raw = sign1_encoded(key, encode(fields))
    if check:
        parse(raw)
    return raw


def sign1_encoded(key: SigningKey, payload: bytes) -> bytes:
    """The COSE_Sign1 of an already encoded payload (e.g. ack_payload()), unchecked."""
    return (_ENV_PREFIX + key.id + head(2, len(payload)) + payload + _SIG_HEAD
            + key.sign(to_be_signed(payload)))

