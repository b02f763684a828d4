"""An independent implementation of SPEC sections 1-4, for golden vectors.

Built only from python-ecdsa (RFC 6979 `sign_deterministic`, canonized to low-S) and
cbor2; it shares no code with firmware/. `python -m tests.reference` rewrites
tests/vectors/golden.json; test_golden.py checks the file still equals what this module
produces and that the firmware reproduces every byte.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable
from typing import Any

import cbor2
from ecdsa import NIST256p, SigningKey
from ecdsa.util import sigencode_string_canonize, sigencode_strings

VECTORS = pathlib.Path(__file__).parent / "vectors" / "golden.json"
N = NIST256p.order
PROTECTED = bytes.fromhex("a10126")


def key(d: int) -> SigningKey:
    return SigningKey.from_secret_exponent(d, curve=NIST256p, hashfunc=hashlib.sha256)


def pub(sk: SigningKey) -> bytes:
    raw: bytes = sk.get_verifying_key().to_string("uncompressed")
    return raw


def rfc6979_sign(d: int, data: bytes) -> tuple[int, int]:
    """python-ecdsa's RFC 6979 signature (r, s) over SHA-256(data), before low-S."""
    r, s = key(d).sign_deterministic(data, hashfunc=hashlib.sha256, sigencode=sigencode_strings)
    return int.from_bytes(r, "big"), int.from_bytes(s, "big")


def party_id(pub65: bytes) -> bytes:
    return hashlib.sha256(pub65).digest()[:8]


def enc(obj: Any) -> bytes:
    # every map in our payloads has single-byte keys (0..23), where cbor2's canonical
    # (length-first) order equals RFC 8949's bytewise order; assert it stays that way
    def check(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                assert isinstance(k, int) and 0 <= k < 24, k
                check(v)
        elif isinstance(o, list):
            for v in o:
                check(v)

    check(obj)
    out: bytes = cbor2.dumps(obj, canonical=True)
    return out


def tbs(payload: bytes, protected: bytes = PROTECTED) -> bytes:
    out: bytes = cbor2.dumps(["Signature1", protected, b"", payload])
    return out


def sig(sk: SigningKey, payload: bytes, protected: bytes = PROTECTED) -> bytes:
    raw: bytes = sk.sign_deterministic(tbs(payload, protected), hashfunc=hashlib.sha256,
                                       sigencode=sigencode_string_canonize)
    return raw


def envelope(protected: bytes, unprotected: Any, payload: bytes, signature: bytes,
             tag: int | None = 18) -> bytes:
    arr = [protected, unprotected, payload, signature]
    out: bytes = cbor2.dumps(cbor2.CBORTag(tag, arr) if tag is not None else arr)
    return out


def sign1(sk: SigningKey, fields: dict[int, Any]) -> bytes:
    payload = enc(fields)
    return envelope(PROTECTED, {4: party_id(pub(sk))}, payload, sig(sk, payload))


# --- valid vectors --------------------------------------------------------------------
METER_D = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721  # RFC 6979 A.2.5
FOG_D = 0x0F06F1E1D7C8B0A5B1E6E5D4C3B2A19080706050403020100F0E0D0C0B0A0908
T0 = 1_800_000_000  # a multiple of 900


def valid_cases() -> list[dict[str, Any]]:
    meter, fog = key(METER_D), key(FOG_D)
    dev, fid = party_id(pub(meter)), party_id(pub(fog))
    first = {0: 1, 1: dev, 2: 1, 3: T0, 4: 900, 5: 12345, 6: 0, 7: 0, 8: bytes(32)}
    first_msg = sign1(meter, first)
    prev = hashlib.sha256(first_msg).digest()
    cases: list[tuple[str, SigningKey, dict[int, Any]]] = [
        ("reading_first", meter, first),
        ("reading_q_flags", meter, {0: 1, 1: dev, 2: 2, 3: T0 + 900, 4: 900, 5: 12901,
                                    6: 7, 7: 0x02 | 0x04, 8: prev,
                                    9: {1: 2281, 2: 2399, 3: 4200, 4: 150, 5: -35}}),
        # the top of each range (docs/PROTOCOL.md section 4a): seq u32, 12-digit registers
        # (8-byte heads)
        ("reading_big_registers", meter, {0: 1, 1: dev, 2: 2**32 - 1, 3: T0 + 1800,
                                          4: 900, 5: 999_999_999_999, 6: 2**33, 7: 0x80 | 0x08,
                                          8: prev}),
        ("reading_unsynced", meter, {0: 1, 1: dev, 2: 3, 3: 946_684_800 + 4321, 4: 900, 5: 13000,
                                     6: 7, 7: 0x01 | 0x20, 8: prev}),
        ("birth", meter, {0: 2, 1: dev, 10: pub(meter), 11: "0.1.0", 12: 7, 13: 2, 14: "esp32",
                          15: "sim", 4: 900, 16: fid}),
        ("ack", fog, {0: 3, 1: dev, 2: 2, 3: prev, 4: T0 + 905, 17: fid}),
        ("command_relay", fog, {0: 4, 1: dev, 2: 17, 3: "relay", 4: {1: False}, 5: T0 + 3600,
                                6: b"\x01" * 16, 17: fid}),
        ("result", meter, {0: 5, 1: dev, 2: 17, 3: 0, 4: "relay off", 5: T0 + 910}),
        ("checkpoint", fog, {0: 6, 17: fid, 2: 1, 3: 3, 4: b"\xab" * 32, 5: bytes(32), 6: T0 + 1,
                             7: T0, 8: b"\xcd" * 32}),
        ("enrollment", fog, {0: 8, 1: dev, 10: pub(meter), 18: "active", 19: "provisioned",
                             6: T0, 17: fid}),
    ]
    out = []
    for name, sk, fields in cases:
        msg = sign1(sk, fields)
        out.append({
            "name": name,
            "key": sk.privkey.secret_multiplier.to_bytes(32, "big").hex(),
            "pub": pub(sk).hex(),
            "fields": _tag_bytes(fields),
            "message": msg.hex(),
            "digest": hashlib.sha256(msg).hexdigest(),
        })
    return out


def _tag_bytes(o: Any) -> Any:
    # JSON form that round-trips types: bytes as {"hex": ...}, map keys as strings
    if isinstance(o, bytes):
        return {"hex": o.hex()}
    if isinstance(o, dict):
        return {str(k): _tag_bytes(v) for k, v in o.items()}
    return o


def untag_bytes(o: Any) -> Any:
    if isinstance(o, dict):
        if set(o) == {"hex"}:
            return bytes.fromhex(o["hex"])
        return {int(k): untag_bytes(v) for k, v in o.items()}
    return o


# --- named broken cases -----------------------------------------------------------------
def broken_cases() -> list[dict[str, str]]:
    meter, other = key(METER_D), key(METER_D + 1)
    dev = party_id(pub(meter))
    fields = {0: 1, 1: dev, 2: 5, 3: T0, 4: 900, 5: 100, 6: 0, 7: 0, 8: b"\x11" * 32}
    payload = enc(fields)
    good_sig = sig(meter, payload)
    kid = {4: dev}
    r, s = int.from_bytes(good_sig[:32], "big"), int.from_bytes(good_sig[32:], "big")

    def rs(r_: int, s_: int) -> bytes:
        return r_.to_bytes(32, "big") + s_.to_bytes(32, "big")

    def signed(p: bytes) -> bytes:
        return envelope(PROTECTED, kid, p, sig(meter, p))

    def raw_map(pairs: list[tuple[bytes, bytes]], head: bytes | None = None) -> bytes:
        h = head if head is not None else bytes([0xA0 | len(pairs)])
        return h + b"".join(k + v for k, v in pairs)

    items = [(enc(k), enc(v)) for k, v in fields.items()]
    cases: list[tuple[str, str, Callable[[], bytes]]] = [
        ("untagged", "bad_tag", lambda: envelope(PROTECTED, kid, payload, good_sig, tag=None)),
        ("wrong_tag_98", "forbidden_type", lambda: envelope(PROTECTED, kid, payload, good_sig, tag=98)),
        ("array_of_3", "bad_structure", lambda: cbor2.dumps(cbor2.CBORTag(18, [PROTECTED, kid, payload]))),
        ("protected_es384", "bad_protected", lambda: envelope(bytes.fromhex("a10138 22"), kid, payload, good_sig)),
        ("protected_empty", "bad_protected", lambda: envelope(b"", kid, payload, good_sig)),
        ("kid_7_bytes", "bad_kid", lambda: envelope(PROTECTED, {4: dev[:7]}, payload, good_sig)),
        ("unprotected_extra_key", "bad_kid", lambda: envelope(PROTECTED, {4: dev, 5: b"x"}, payload, good_sig)),
        ("kid_not_signer", "kid_mismatch", lambda: envelope(PROTECTED, {4: party_id(pub(other))}, payload, good_sig)),
        ("signature_63_bytes", "bad_signature_encoding", lambda: envelope(PROTECTED, kid, payload, good_sig[:63])),
        ("r_zero", "sig_out_of_range", lambda: envelope(PROTECTED, kid, payload, rs(0, s))),
        ("s_zero", "sig_out_of_range", lambda: envelope(PROTECTED, kid, payload, rs(r, 0))),
        ("r_equals_n", "sig_out_of_range", lambda: envelope(PROTECTED, kid, payload, rs(N, s))),
        ("high_s", "high_s", lambda: envelope(PROTECTED, kid, payload, rs(r, N - s))),
        ("signature_bit_flip", "bad_signature", lambda: envelope(PROTECTED, kid, payload, rs(r ^ 1, s))),
        ("signed_by_other_key", "bad_signature", lambda: envelope(PROTECTED, kid, payload, sig(other, payload))),
        ("payload_changed_after_signing", "bad_signature",
         lambda: envelope(PROTECTED, kid, enc({**fields, 5: 101}), good_sig)),
        ("trailing_byte", "trailing_bytes", lambda: signed(payload) + b"\x00"),
        ("payload_long_int_head", "not_deterministic",
         lambda: signed(raw_map([(k, v) if k != b"\x05" else (k, b"\x19\x00\x64") for k, v in items]))),
        ("payload_unsorted_keys", "not_deterministic", lambda: signed(raw_map(items[1:] + items[:1]))),
        ("payload_duplicate_key", "not_deterministic", lambda: signed(raw_map([*items, items[-1]], bytes([0xA0 | (len(items) + 1)])))),
        ("payload_indefinite_map", "not_deterministic", lambda: signed(b"\xbf" + raw_map(items, b"") + b"\xff")),
        ("payload_float", "forbidden_type", lambda: signed(raw_map([(k, v) if k != b"\x05" else (k, b"\xf9\x3c\x00") for k, v in items]))),
        ("payload_not_a_map", "bad_payload", lambda: signed(enc([1, 2, 3]))),
        ("unknown_type_7", "unknown_type", lambda: signed(enc({**fields, 0: 7}))),
        ("envelope_long_length_head", "not_deterministic",
         lambda: b"\xd2\x84\x43" + PROTECTED + b"\xa1\x04\x58\x08" + dev + b"\x58" + bytes([len(payload)]) + payload + b"\x58\x40" + good_sig),
        ("too_large", "too_large", lambda: signed(enc({**fields, 8: b"\x00" * 4100}))),
        # SPEC section 2: integers in [-2^63, 2^63 - 1], and each field within its own range
        ("payload_int_2_pow_63", "out_of_range",
         lambda: signed(raw_map([(k, v) if k != b"\x05" else (k, b"\x1b" + (2**63).to_bytes(8, "big"))
                                 for k, v in items]))),
        ("payload_int_below_minus_2_pow_63", "out_of_range",
         lambda: signed(raw_map([(k, v) if k != b"\x05" else (k, b"\x3b" + (2**63).to_bytes(8, "big"))
                                 for k, v in items]))),
        ("seq_above_u32", "bad_fields", lambda: signed(enc({**fields, 2: 2**32}))),
        ("imp_above_register_max", "bad_fields", lambda: signed(enc({**fields, 5: 10**12}))),
        ("dur_not_an_interval", "bad_fields", lambda: signed(enc({**fields, 4: 600}))),
        ("q_temperature_below_range", "bad_fields", lambda: signed(enc({**fields, 9: {5: -32769}}))),
    ]
    return [{"name": n, "reason": why, "message": make().hex()} for n, why, make in cases]


def build() -> dict[str, Any]:
    meter = key(METER_D)
    return {
        "spec": "MeterLedger SPEC v1 sections 1-4",
        "made_by": "tests/reference.py (python-ecdsa sign_deterministic + canonize, cbor2)",
        "signer_pub": pub(meter).hex(),
        "valid": valid_cases(),
        "broken": broken_cases(),
    }


if __name__ == "__main__":
    VECTORS.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {VECTORS}")
