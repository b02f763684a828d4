"""SPEC sections 1-4 on the fog node: keys, COSE_Sign1 (ES256) and the payload schemas.

An independent CPython implementation of the rules the meter firmware implements in
firmware/core (cose.py, messages.py, keys.py); the fog never imports the firmware, and
tests/test_fog_protocol.py checks that both accept the same messages and reject the same
bytes with the same first reason (docs/PROTOCOL.md section 3, checked in that order).

Typical use on the fog, where the signer is only known from the kid:

    m = parse(raw, schema=False)        # structure, encoding, kid, r/s range, low-S
    key = registry[m.kid]               # unknown kid: the caller's policy
    verify_message(m, key)              # kid_mismatch, bad_signature, then bad_fields

`verify(raw, key)` does the same in one call when the key is known up front. Message types
the fog defines later (10 estimate, 11 aggregate, 12 main-chain transaction) are added with
register_type(), which fills SIGNER_FIELD, SCHEMAS and RULES.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fog_node.cbor import CBORError, ProtocolError, Tag, decode, encode, head

__all__ = [
    "ACK", "AGGREGATE", "AGGREGATE_ALERTS", "BIRTH", "CHECKPOINT", "CLOCK_STEPPED", "CLOCK_UNSYNCED", "COMMAND", "ENROLLMENT",
    "ENROLLMENT_STATUSES", "ESTIMATE", "ESTIMATE_KINDS", "ESTIMATE_METHODS",
    "FIELD_PRIME", "FLAG_NAMES", "HALF_N", "INTERVALS", "MAX_MESSAGE",
    "PARTIAL", "POWER_FAIL", "PROTECTED", "READING", "REGISTER_RESET", "RESULT", "RESULT_DONE",
    "RESULT_FAILED", "RESULT_REJECTED", "RULES", "SCHEMAS", "SIGNER_FIELD", "SKIPPED",
    "SOURCE_ERROR", "TAG_SIGN1", "TAMPER", "ZERO32", "Fields", "Message", "N", "ProtocolError",
    "PublicKey", "Rule", "SigningKey", "ack", "ack_payload", "check_fields",
    "check_message_fields", "checkpoint", "command", "command_args_error", "digest",
    "enrollment", "flag_names", "parse", "party_id", "reading", "register_type", "rfc6979_sign",
    "sign1", "sign1_encoded", "to_be_signed", "verify", "verify_message",
]

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 group order
HALF_N = N >> 1
FIELD_PRIME = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF  # P-256's p
MAX_MESSAGE = 4096
PROTECTED = b"\xa1\x01\x26"  # {1: -7}, alg ES256
TAG_SIGN1 = 18
_KID = 4
# ToBeSigned up to the payload bstr: ["Signature1", h'A10126', h'', ...
_TBS_PREFIX = b"\x84\x6aSignature1\x43\xa1\x01\x26\x40"
# the only valid envelope starts 18([h'A10126', {4: h'<8 bytes>'}, ... and ends h'<64>'])
_ENV_PREFIX = b"\xd2\x84\x43\xa1\x01\x26\xa1\x04\x48"
_SIG_HEAD = b"\x58\x40"

READING, BIRTH, ACK, COMMAND, RESULT, CHECKPOINT, ENROLLMENT = 1, 2, 3, 4, 5, 6, 8
CLOCK_UNSYNCED, POWER_FAIL, PARTIAL, REGISTER_RESET = 0x01, 0x02, 0x04, 0x08
TAMPER, SOURCE_ERROR, CLOCK_STEPPED, SKIPPED = 0x10, 0x20, 0x40, 0x80
FLAG_NAMES = ((0x01, "CLOCK_UNSYNCED"), (0x02, "POWER_FAIL"), (0x04, "PARTIAL"),
              (0x08, "REGISTER_RESET"), (0x10, "TAMPER"), (0x20, "SOURCE_ERROR"),
              (0x40, "CLOCK_STEPPED"), (0x80, "SKIPPED"))
ZERO32 = bytes(32)
INTERVALS = (60, 300, 900, 1800, 3600)
RESULT_DONE, RESULT_REJECTED, RESULT_FAILED = 0, 1, 2
ENROLLMENT_STATUSES = ("active", "revoked")

Fields = dict[int, Any]
Rule = Callable[[Fields], None]

# payload key holding the signer id (must equal the kid), per message type (SPEC section 4)
SIGNER_FIELD: dict[int, int] = {1: 1, 2: 1, 5: 1, 3: 17, 4: 17, 6: 17, 8: 17}
# kinds: "u" uint, "i" int, "b" any bstr, "b8"/"b32"/"b65" bstr of that length, "t" tstr,
# "m" map, "a" array, "bool"; a trailing "?" marks an optional field
SCHEMAS: dict[int, dict[int, str]] = {
    READING: {0: "u", 1: "b8", 2: "u", 3: "u", 4: "u", 5: "u", 6: "u", 7: "u", 8: "b32", 9: "m?"},
    BIRTH: {0: "u", 1: "b8", 10: "b65", 11: "t", 12: "u", 13: "u", 14: "t", 15: "t", 4: "u",
            16: "b8"},
    ACK: {0: "u", 1: "b8", 2: "u", 3: "b32", 4: "u", 17: "b8"},
    COMMAND: {0: "u", 1: "b8", 2: "u", 3: "t", 4: "m", 5: "u", 6: "b", 17: "b8"},
    RESULT: {0: "u", 1: "b8", 2: "u", 3: "u", 4: "t", 5: "u"},
    CHECKPOINT: {0: "u", 17: "b8", 2: "u", 3: "u", 4: "b32", 5: "b32", 6: "u", 7: "u?",
                 8: "b32?"},
    ENROLLMENT: {0: "u", 1: "b8", 10: "b65", 18: "t", 19: "t", 6: "u", 17: "b8"},
}


def _bad(msg: str) -> ProtocolError:
    return ProtocolError("bad_fields", msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def party_id(pub: bytes) -> bytes:
    """SPEC section 1: the first 8 bytes of SHA-256 of the 65-byte public key."""
    return hashlib.sha256(pub).digest()[:8]


# --- schemas -------------------------------------------------------------------------------
_MISSING = object()
_PREDICATES: dict[str, Callable[[Any], bool]] = {
    "u": lambda v: _is_int(v) and v >= 0, "i": _is_int,
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


def check_fields(fields: Fields) -> None:
    """Raise ProtocolError("bad_fields") unless the payload matches its type's schema and
    rules (docs/PROTOCOL.md section 4): no unknown key, no missing key, right CBOR kinds."""
    t: Any = fields.get(0)
    schema = SCHEMAS.get(t) if _is_int(t) else None
    if schema is None:
        raise _bad(f"no schema for message type {t!r}")
    for key in fields:
        if key not in schema:
            raise _bad(f"type {t} has no field {key!r}")
    for key, kind in schema.items():
        v = fields.get(key, _MISSING)
        if kind[-1] == "?":
            if v is _MISSING:
                continue
            kind = kind[:-1]
        elif v is _MISSING:
            raise _bad(f"type {t} is missing field {key}")
        if v.__class__ is int and kind == "u":  # the common case, inline
            if v >= 0:
                continue
        elif _predicate(kind)(v):
            continue
        raise _bad(f"type {t} field {key} must be {kind}")
    rule = RULES.get(t)
    if rule is not None:
        rule(fields)


def _reading_rules(f: Fields) -> None:
    if f[2] < 1:
        raise _bad("seq must be >= 1")
    if f[4] < 1:
        raise _bad("dur must be >= 1 second")
    if f[7] > 0xFF:
        raise _bad("flags has bits v1 does not define")
    if not f[7] & CLOCK_UNSYNCED and f[3] % f[4]:
        raise _bad("t is not a multiple of dur and CLOCK_UNSYNCED is not set")
    if f[2] == 1 and f[8] != ZERO32:
        raise _bad("prev must be 32 zero bytes when seq = 1")
    for k, v in f.get(9, {}).items():
        if k not in (1, 2, 3, 4, 5) or not _is_int(v) or (k != 5 and v < 0):
            raise _bad(f"q has a bad entry {k!r}")


def _pub_matches_dev(f: Fields) -> None:
    if party_id(f[10]) != f[1]:
        raise _bad("dev is not the id of pub")


def command_args_error(op: Any, args: dict[Any, Any]) -> str | None:
    """None if (op, args) is a valid v1 command (SPEC type 4), else what is wrong."""
    one = list(args) == [1]
    if op == "relay":
        if not one or not isinstance(args[1], bool):
            return "relay takes {1: bool}"
    elif op == "limit":
        if not one or not _is_int(args[1]) or args[1] < 0:
            return "limit takes {1: max W >= 0}"
    elif op == "interval":
        if not one or not _is_int(args[1]) or args[1] not in INTERVALS:
            return "interval takes {1: one of 60, 300, 900, 1800, 3600}"
    elif op == "time":
        if not one or not _is_int(args[1]) or args[1] < 0:
            return "time takes {1: Unix seconds}"
    elif op in ("ping", "reboot"):
        if args:
            return f"{op} takes no arguments"
    else:
        return f"unknown op {op!r}"
    return None


def _command_rules(f: Fields) -> None:
    err = command_args_error(f[3], f[4])
    if err:
        raise _bad(err)


def _result_rules(f: Fields) -> None:
    if f[3] > 2:
        raise _bad("status must be 0 (done), 1 (rejected) or 2 (failed)")


def _checkpoint_rules(f: Fields) -> None:
    if f[2] < 1:
        raise _bad("height must be >= 1")
    if f[2] == 1 and f[5] != ZERO32:
        raise _bad("prev must be 32 zero bytes at height 1")


def _enrollment_rules(f: Fields) -> None:
    _pub_matches_dev(f)
    if f[18] not in ENROLLMENT_STATUSES:
        raise _bad("status must be 'active' or 'revoked'")


RULES: dict[int, Rule] = {
    READING: _reading_rules, BIRTH: _pub_matches_dev, COMMAND: _command_rules,
    RESULT: _result_rules, CHECKPOINT: _checkpoint_rules, ENROLLMENT: _enrollment_rules,
}


def register_type(type_: int, signer_field: int, schema: dict[int, str],
                  rule: Rule | None = None) -> None:
    """Define a message type (e.g. 10 estimate, 11 aggregate, 12 main-chain tx)."""
    if schema.get(0) != "u" or signer_field not in schema:
        raise ValueError("schema needs key 0 (type, 'u') and the signer field")
    for kind in schema.values():
        _predicate(kind.removesuffix("?"))  # raises on a typo
    SIGNER_FIELD[type_] = signer_field
    SCHEMAS[type_] = dict(schema)
    if rule is not None:
        RULES[type_] = rule
    else:
        RULES.pop(type_, None)


# --- type 10: estimate and supersession (docs/VEE.md; built by fog_node.vee) ---------------
# One type, two kinds. "estimate": the fog's split of the exact register difference between
# two readings of one meter over the intervals between them. "supersede": a later true
# reading of that meter makes an estimate obsolete (nothing is overwritten; the fog logs new
# estimates for what is still missing). Both are signed by the fog (key 17).
ESTIMATE = 10
ESTIMATE_KINDS = ("estimate", "supersede")
ESTIMATE_METHODS = ("linear", "profile", "none")  # "none": energy unknown (register reset)
_ESTIMATE_KEYS = {  # the keys each kind must carry, and no others
    "estimate": frozenset((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17)),
    "supersede": frozenset((0, 1, 2, 3, 11, 12, 13, 17)),
}


def _estimate_rules(f: Fields) -> None:
    kind = f[2]
    keys = _ESTIMATE_KEYS.get(kind)
    if keys is None:
        raise _bad("kind must be 'estimate' or 'supersede'")
    missing, extra = sorted(keys - f.keys()), sorted(f.keys() - keys)
    if missing:
        raise _bad(f"type 10 kind {kind!r} is missing field {missing[0]}")
    if extra:
        raise _bad(f"type 10 kind {kind!r} has no field {extra[0]}")
    if kind == "supersede":
        if f[13] < 1:
            raise _bad("seq of the superseding reading must be >= 1")
        return
    if f[4] not in ESTIMATE_METHODS:
        raise _bad("method must be 'linear', 'profile' or 'none'")
    if f[6] < 1:
        raise _bad("from_seq must be >= 1")
    if f[8] <= f[6]:
        raise _bad("to_seq must be greater than from_seq")
    ivls = f[10]
    if not ivls:
        raise _bad("ivls must not be empty")
    width = 1 if f[4] == "none" else 3
    shape = "[end]" if width == 1 else "[end, imp, exp]"
    last = f[9]
    for i, item in enumerate(ivls):
        if not (isinstance(item, list) and len(item) == width
                and all(_is_int(v) and v >= 0 for v in item)):
            raise _bad(f"ivls item {i} must be {shape} of uints")
        if item[0] <= last:
            raise _bad(f"ivls item {i} must end after the previous one (or start)")
        last = item[0]


register_type(ESTIMATE, 17, {0: "u", 1: "b8", 2: "t", 3: "u", 4: "t?", 5: "b32?", 6: "u?",
                             7: "b32?", 8: "u?", 9: "u?", 10: "a?", 11: "b32?", 12: "b32?",
                             13: "u?", 17: "b8"}, _estimate_rules)


# --- type 11: aggregate (docs/PROTOCOL.md section 18; built by fog_node.cooking) ----------
# The cooked data of one feeder for one interval, signed by the fog. The entries of one
# interval close (one per reported feeder, in feeder-name order) are hash-chained through
# `prev`, so the checkpoint's `agg` (the digest of the last one) commits to all of them.
# A revision (rev >= 1) is logged when late readings change an interval already reported;
# it names the entry it revises in `replaces`. Nothing is overwritten.
AGGREGATE = 11
AGGREGATE_ALERTS = ("loss_high", "loss_negative", "outage", "voltage_low", "voltage_high",
                    "tamper", "silent")


def _aggregate_rules(f: Fields) -> None:
    if not f[1]:
        raise _bad("feeder name must not be empty")
    if f[3] not in INTERVALS or f[2] % f[3]:
        raise _bad("dur must be a v1 interval and ivl a multiple of it")
    if f[7] + f[8] > f[6]:
        raise _bad("measured + estimated meters exceed the feeder's meters")
    if f[9] > f[4] + f[5]:
        raise _bad("estimated Wh exceed the interval's import + export")
    if (11 in f) != (12 in f) or (11 in f and f[11] > f[12]):
        raise _bad("v_min and v_max come together, v_min <= v_max")
    if not all(isinstance(a, str) and a in AGGREGATE_ALERTS for a in f[13]):
        raise _bad(f"alerts must be drawn from {', '.join(AGGREGATE_ALERTS)}")
    if len(set(f[13])) != len(f[13]) or list(f[13]) != sorted(f[13]):
        raise _bad("alerts must be sorted and distinct")
    if (f[16] == 0) == (18 in f):
        raise _bad("replaces is present exactly when rev >= 1")
    groups = f.get(20)
    if groups is not None and not (groups and all(isinstance(g, str) and g for g in groups)):
        raise _bad("merged must list the merged feeders' names")


register_type(AGGREGATE, 17, {0: "u", 1: "t", 2: "u", 3: "u", 4: "u", 5: "u", 6: "u", 7: "u",
                              8: "u", 9: "u", 10: "i?", 11: "u?", 12: "u?", 13: "a", 14: "u",
                              15: "b32", 16: "u", 17: "b8", 18: "b32?", 19: "b32", 20: "a?"},
              _aggregate_rules)


# --- the reading fast path ------------------------------------------------------------------
# A v1 reading has one deterministic encoding: keys 0..8 (and 9) in order, shortest heads.
# parse() recognises that layout byte for byte and builds the same dict decode() would, and
# the key and kind checks of the schema are then already done. Any other byte sequence,
# valid or not, goes through the strict decoder and check_fields(), so every result and
# rejection reason is the generic one (tests/test_fastpath.py checks both agree).
_READING_SCHEMA = SCHEMAS[READING]
_READING_SCHEMA_V1 = dict(_READING_SCHEMA)
# head byte -> (argument width, smallest argument in shortest form), majors 0 and 1
_WIDE = {0x18: (1, 24), 0x19: (2, 1 << 8), 0x1A: (4, 1 << 16), 0x1B: (8, 1 << 32),
         0x38: (1, 24), 0x39: (2, 1 << 8), 0x3A: (4, 1 << 16), 0x3B: (8, 1 << 32)}
_READING_HEAD = b"\x00\x01\x01\x48"  # 0: 1, 1: bstr(8)
_PREV_HEAD = b"\x08\x58\x20"  # 8: bstr(32)


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
            if v < w[1] or end > n:
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
                if v < w[1] or end > n:
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
    force); every rule still runs."""
    if m.layout_checked and SCHEMAS.get(READING) is _READING_SCHEMA \
            and _READING_SCHEMA == _READING_SCHEMA_V1:
        rule = RULES.get(READING)
        if rule is not None:
            rule(m.fields)
    else:
        check_fields(m.fields)


# --- keys ----------------------------------------------------------------------------------
class PublicKey:
    """A party's P-256 public key: SEC1 uncompressed (65 bytes) and its 8-byte id."""

    __slots__ = ("_key", "id", "raw")

    def __init__(self, raw: bytes) -> None:
        raw = bytes(raw)
        if len(raw) != 65 or raw[0] != 4:
            raise ProtocolError("bad_public_key",
                                "public key must be 65 bytes SEC1 uncompressed (0x04 || X || Y)")
        if max(int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:], "big")) >= FIELD_PRIME:
            raise ProtocolError("bad_public_key", "public key is not a point on P-256")
        try:
            self._key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            raise ProtocolError("bad_public_key", "public key is not a point on P-256") from None
        self.raw = raw
        self.id = party_id(raw)

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    @property
    def key(self) -> ec.EllipticCurvePublicKey:
        return self._key

    def verify(self, signature: bytes, data: bytes) -> bool:
        """ECDSA P-256/SHA-256 over data, signature r || s (64 bytes); no low-S rule here."""
        der = utils.encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                         int.from_bytes(signature[32:], "big"))
        try:
            self._key.verify(der, data, _ECDSA)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.id_hex})"


_ECDSA = ec.ECDSA(hashes.SHA256())


@functools.cache
def _deterministic_ecdsa() -> ec.ECDSA | None:
    """cryptography's RFC 6979 mode (cryptography >= 43 with OpenSSL >= 3.2), or None."""
    try:
        alg = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
        ec.generate_private_key(ec.SECP256R1()).sign(b"probe", alg)
    except (TypeError, UnsupportedAlgorithm):
        return None
    return alg


def rfc6979_sign(d: int, data: bytes) -> tuple[int, int]:
    """RFC 6979 (HMAC-SHA256) ECDSA over SHA-256(data) in Python, with the nonce point from
    cryptography: the fallback when OpenSSL has no deterministic mode. Not constant time."""
    h1 = hashlib.sha256(data).digest()
    e = int.from_bytes(h1, "big")
    x = d.to_bytes(32, "big") + (e % N).to_bytes(32, "big")  # int2octets(d) || bits2octets(h1)

    def mac(k: bytes, m: bytes) -> bytes:
        return hmac.digest(k, m, "sha256")

    v, k = b"\x01" * 32, b"\x00" * 32
    k = mac(k, v + b"\x00" + x)
    v = mac(k, v)
    k = mac(k, v + b"\x01" + x)
    v = mac(k, v)
    while True:
        v = mac(k, v)
        nonce = int.from_bytes(v, "big")
        if 1 <= nonce < N:
            point = ec.derive_private_key(nonce, ec.SECP256R1()).public_key().public_numbers()
            r = point.x % N
            s = pow(nonce, -1, N) * (e + r * d) % N
            if r and s:
                return r, s
        k = mac(k, v + b"\x00")
        v = mac(k, v)


class SigningKey:
    """A P-256 private key that signs the SPEC way: RFC 6979 nonce, then low-S."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("SPEC keys are P-256")
        self._key = key
        self._d = key.private_numbers().private_value
        self.public_key = PublicKey(key.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint))
        self.id = self.public_key.id

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_int(cls, d: int) -> SigningKey:
        if not 1 <= d < N:
            raise ValueError("private scalar outside [1, n-1]")
        return cls(ec.derive_private_key(d, ec.SECP256R1()))

    @classmethod
    def from_bytes(cls, private: bytes) -> SigningKey:
        if len(private) != 32:
            raise ValueError("private key must be 32 bytes")
        return cls.from_int(int.from_bytes(private, "big"))

    def private_bytes(self) -> bytes:
        return self._d.to_bytes(32, "big")

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    def sign(self, data: bytes) -> bytes:
        """64-byte r || s over SHA-256(data), deterministic (RFC 6979) and low-S."""
        alg = _deterministic_ecdsa()
        if alg is not None:
            r, s = utils.decode_dss_signature(self._key.sign(data, alg))
        else:
            r, s = rfc6979_sign(self._d, data)
        if s > HALF_N:
            s = N - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def __repr__(self) -> str:
        return f"SigningKey({self.id_hex})"


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


# --- builders of the payloads the fog signs (SPEC section 4) ------------------------------
def ack(dev: bytes, seq: int, digest: bytes, t: int, fog: bytes) -> Fields:
    return {0: ACK, 1: dev, 2: seq, 3: digest, 4: t, 17: fog}


def ack_payload(dev: bytes, seq: int, digest: bytes, t: int, fog: bytes) -> bytes:
    """encode(ack(...)), built by concatenation: the fog signs one ack per meter per group,
    and the generic encoder's recursion and key sorting cost as much as the signature's
    Python side. Keys 0, 1, 2, 3, 4, 17 encode as single bytes in that (sorted) order."""
    if (type(dev) is bytes and type(digest) is bytes and type(fog) is bytes
            and type(seq) is int and type(t) is int and seq >= 0 and t >= 0):
        return b"".join((b"\xa6\x00\x03\x01", head(2, len(dev)), dev, b"\x02", head(0, seq),
                         b"\x03", head(2, len(digest)), digest, b"\x04", head(0, t),
                         b"\x11", head(2, len(fog)), fog))
    return encode(ack(dev, seq, digest, t, fog))  # anything unusual: the generic rules


def command(dev: bytes, cid: int, op: str, args: dict[int, Any], not_after: int, ref: bytes,
            fog: bytes) -> Fields:
    return {0: COMMAND, 1: dev, 2: cid, 3: op, 4: args, 5: not_after, 6: ref, 17: fog}


def checkpoint(fog: bytes, height: int, size: int, root: bytes, prev: bytes, t: int,
               ivl: int | None = None, agg: bytes | None = None) -> Fields:
    f: Fields = {0: CHECKPOINT, 17: fog, 2: height, 3: size, 4: root, 5: prev, 6: t}
    if ivl is not None:
        f[7] = ivl
    if agg is not None:
        f[8] = agg
    return f


def enrollment(dev: bytes, pub: bytes, status: str, reason: str, t: int, fog: bytes) -> Fields:
    return {0: ENROLLMENT, 1: dev, 10: pub, 18: status, 19: reason, 6: t, 17: fog}


def reading(dev: bytes, seq: int, t: int, dur: int, imp: int, exp: int, flags: int, prev: bytes,
            q: dict[int, int] | None = None) -> Fields:
    """A meter's reading payload (for simulators, tests and benchmarks)."""
    f: Fields = {0: READING, 1: dev, 2: seq, 3: t, 4: dur, 5: imp, 6: exp, 7: flags, 8: prev}
    if q:
        f[9] = q
    return f


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES if flags & bit]
