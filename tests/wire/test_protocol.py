"""The fog node's SPEC sections 1-4 (meterledger.wire, meterledger.wire.cbor) against the golden
vectors and, as an independent implementation, against the firmware: both must accept the
same messages, reject the same bytes with the same first reason, and sign byte-identically."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import cbor as fw_cbor
from core import cose as fw_cose
from core import keys as fw_keys
from core import messages as fw_messages
from meterledger import wire as P
from meterledger.wire import cbor as fog_cbor
from tests import reference

GOLDEN = json.loads(reference.VECTORS.read_text())
SIGNER_PUB = bytes.fromhex(GOLDEN["signer_pub"])
T0 = 1_800_000_000
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

METER = P.SigningKey.from_int(0x1234567890ABCDEF)
FOG = P.SigningKey.from_int(0xF06F06F06)
FW_METER = fw_keys.SigningKey(0x1234567890ABCDEF)
FW_FOG_VK = fw_keys.VerifyingKey(FOG.public_key.raw)
DEV, FID = METER.id, FOG.id


def fog_reason(raw: bytes, key: P.PublicKey) -> str:
    try:
        P.verify(raw, key)
    except P.ProtocolError as e:
        return e.reason
    return "accepted"


def firmware_reason(raw: bytes, vk: Any) -> str:
    try:
        m = fw_cose.verify(raw, vk)
        fw_messages.check_fields(m.fields)
    except (fw_cose.CoseError, fw_messages.FieldError) as e:
        return str(e.reason)
    return "accepted"


# --- golden vectors ----------------------------------------------------------------------
@pytest.mark.parametrize("case", GOLDEN["valid"], ids=lambda c: c["name"])
def test_golden_valid_vector_verifies_and_is_reproduced_byte_for_byte(case: dict[str, Any]):
    key = P.SigningKey.from_bytes(bytes.fromhex(case["key"]))
    assert key.public_key.raw.hex() == case["pub"]
    assert key.private_bytes().hex() == case["key"]
    fields = reference.untag_bytes(case["fields"])
    raw = bytes.fromhex(case["message"])
    m = P.verify(raw, key.public_key)
    assert m.fields == fields
    assert m.type == fields[0]
    assert m.kid == key.id
    assert m.digest.hex() == case["digest"]
    assert P.parse(raw) == m
    # RFC 6979 + low-S: the same key and payload give the very same bytes
    assert P.sign1(key, fields) == raw
    # python-ecdsa's RFC 6979 (an independent implementation) agrees with OpenSSL's
    r, s = reference.rfc6979_sign(int(case["key"], 16), m.tbs)
    s = min(s, P.N - s)
    assert r.to_bytes(32, "big") + s.to_bytes(32, "big") == m.signature


@pytest.mark.parametrize("case", GOLDEN["broken"], ids=lambda c: c["name"])
def test_golden_broken_case_is_rejected_for_its_reason(case: dict[str, str]):
    with pytest.raises(P.ProtocolError) as err:
        P.verify(bytes.fromhex(case["message"]), P.PublicKey(SIGNER_PUB))
    assert err.value.reason == case["reason"], str(err.value)


def test_openssl_signs_deterministically():
    # cryptography >= 43 with its bundled OpenSSL >= 3.2: there is no fallback signer, so a
    # build without RFC 6979 must fail here rather than sign differently from the meters
    from cryptography.hazmat.backends.openssl import backend

    assert backend.ecdsa_deterministic_supported()


# --- cross-check with the firmware: mutations -------------------------------------------
BASES = [
    P.sign1(METER, P.reading(DEV, 42, T0, 900, 123_456, 789, P.PARTIAL, b"\x5a" * 32,
                             {1: 2290, 2: 2410, 3: 5100, 5: -12})),
    P.sign1(FOG, P.ack(DEV, 41, b"\x07" * 32, T0 + 5, FID)),
    P.sign1(FOG, P.command(DEV, 9, "interval", {1: 300}, T0 + 3600, b"", FID)),
    P.sign1(FOG, P.checkpoint(FID, 2, 300, b"\x01" * 32, b"\x02" * 32, T0, T0, b"\x03" * 32)),
]
KEY_OF = {METER.id: (METER.public_key, fw_keys.VerifyingKey(METER.public_key.raw)),
          FOG.id: (FOG.public_key, FW_FOG_VK)}
base = st.sampled_from(BASES)


# types the fog defines that no meter handles (docs/VEE.md: 10 estimate; docs/PROTOCOL.md
# section 15: 11 aggregate, 12 transaction, 13 block header; section 25: 14 energy
# statement): a flip can turn a command's type 4 into 12 (or a checkpoint's 6 into 14),
# which the firmware calls unknown_type and the fog checks further (e.g. kid_mismatch,
# bad_signature); both must reject it
FOG_ONLY_TYPES = {10, 11, 12, 13, 14}


def _payload_type(raw: bytes) -> Any:
    try:
        return fog_cbor.decode(fog_cbor.decode(raw, (18,)).value[2]).get(0)
    except (fog_cbor.ProtocolError, AttributeError, IndexError, TypeError):
        return None


def same_verdict(raw: bytes, signer: bytes) -> str:
    fog_key, fw_key = KEY_OF[signer]
    ours, theirs = fog_reason(raw, fog_key), firmware_reason(raw, fw_key)
    if theirs == "unknown_type" and _payload_type(raw) in FOG_ONLY_TYPES:
        assert ours != "accepted", raw.hex()
        return ours
    assert ours == theirs, (raw.hex(), ours, theirs)
    return ours


def signer_of(raw: bytes) -> bytes:
    return P.parse(raw).kid


@SETTINGS
@given(base, st.data())
def test_bit_flips_are_rejected_for_the_same_reason_as_the_firmware(msg: bytes, data: Any):
    bit = data.draw(st.integers(0, len(msg) * 8 - 1))
    m = bytearray(msg)
    m[bit // 8] ^= 1 << (bit % 8)
    assert same_verdict(bytes(m), signer_of(msg)) != "accepted"


@SETTINGS
@given(base, st.data())
def test_byte_changes_are_rejected_for_the_same_reason(msg: bytes, data: Any):
    pos = data.draw(st.integers(0, len(msg) - 1))
    m = bytearray(msg)
    m[pos] = (m[pos] + data.draw(st.integers(1, 255))) % 256
    assert same_verdict(bytes(m), signer_of(msg)) != "accepted"


@SETTINGS
@given(base, st.data())
def test_truncations_are_rejected_for_the_same_reason(msg: bytes, data: Any):
    n = data.draw(st.integers(0, len(msg) - 1))
    assert same_verdict(msg[:n], signer_of(msg)) != "accepted"


@SETTINGS
@given(base, st.data(), st.binary(min_size=1, max_size=8))
def test_insertions_are_rejected_for_the_same_reason(msg: bytes, data: Any, extra: bytes):
    pos = data.draw(st.integers(0, len(msg)))
    assert same_verdict(msg[:pos] + extra + msg[pos:], signer_of(msg)) != "accepted"


@SETTINGS
@given(base, st.data())
def test_deletions_are_rejected_for_the_same_reason(msg: bytes, data: Any):
    a = data.draw(st.integers(0, len(msg) - 1))
    b = data.draw(st.integers(a + 1, min(len(msg), a + 12)))
    assert same_verdict(msg[:a] + msg[b:], signer_of(msg)) != "accepted"


def _resign(payload: bytes, key: P.SigningKey) -> bytes:
    # a well-formed envelope around any payload bytes, correctly signed: the mutation then
    # reaches the payload's CBOR, type, signer and schema checks, not just the signature
    return (b"\xd2\x84\x43\xa1\x01\x26\xa1\x04\x48" + key.id + fog_cbor.head(2, len(payload))
            + payload + b"\x58\x40" + key.sign(P.to_be_signed(payload)))


@SETTINGS
@given(base, st.data())
def test_resigned_payload_mutations_get_the_same_verdict(msg: bytes, data: Any):
    m = P.parse(msg)
    key = METER if m.kid == METER.id else FOG
    payload = bytearray(m.payload)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(0, len(payload) - 1)))
        if kind == "flip" and payload:
            payload[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and payload:
            payload[pos] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            payload[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif payload:
            del payload[pos:pos + data.draw(st.integers(1, 4))]
    same_verdict(_resign(bytes(payload), key), key.id)


any_value = st.one_of(
    st.integers(-5, 2**33), st.binary(max_size=70), st.text(max_size=8), st.booleans(),
    st.sampled_from([DEV, FID, bytes(32), METER.public_key.raw, "relay", "active", {}, {1: True},
                     {6: 1}, [1]]),
    st.dictionaries(st.integers(0, 7), st.integers(-3, 4000) | st.booleans(), max_size=3))


@SETTINGS
@given(base, st.data())
def test_resigned_field_mutations_get_the_same_verdict(msg: bytes, data: Any):
    # field-level edits (kinds, values, missing and extra keys, type and signer changes),
    # correctly signed: the schema, type and signer checks must agree with the firmware's
    m = P.parse(msg)
    key = METER if m.kid == METER.id else FOG
    f = dict(m.fields)
    for _ in range(data.draw(st.integers(1, 3))):
        k = data.draw(st.sampled_from(sorted(f)) | st.integers(0, 20))
        if data.draw(st.booleans()) and k in f:
            del f[k]
        else:
            f[k] = data.draw(any_value)
    same_verdict(_resign(fog_cbor.encode(f), key), key.id)


# --- cross-check with the firmware: random valid readings ---------------------------------
readings = st.builds(
    lambda seq, slot, dur, imp, exp, flags, prev, q: P.reading(
        DEV, seq, slot * dur if not flags & 1 else slot, dur, imp, exp, flags,
        bytes(32) if seq == 1 else prev, q),
    st.integers(1, P.SEQ_MAX), st.integers(0, P.TIME_MAX // 3600), st.sampled_from(P.INTERVALS),
    st.integers(0, P.REGISTER_MAX), st.integers(0, 2**32), st.integers(0, 0xFF),
    st.binary(min_size=32, max_size=32),
    st.dictionaries(st.integers(1, 5), st.integers(0, 5000), max_size=5) | st.none())


@FEW
@given(readings)
def test_random_readings_sign_identically_and_verify_across_implementations(f: dict[int, Any]):
    fw_raw = fw_cose.sign1(FW_METER, f)
    fog_raw = P.sign1(METER, f)
    assert fw_raw == fog_raw
    assert P.verify(fw_raw, METER.public_key).fields == f
    m = fw_cose.verify(fog_raw, fw_keys.VerifyingKey(METER.public_key.raw))
    fw_messages.check_fields(m.fields)
    assert m.fields == f


@FEW
@given(st.binary(max_size=600))
def test_payload_length_heads_match_the_firmware(ref: bytes):
    # payloads across the 1-, 2- and 3-byte bstr heads of the envelope's fast path
    # (ref beyond its 32 bytes is bad_fields; the envelope's heads are what is tested here)
    raw = P.sign1(FOG, P.command(DEV, 1, "ping", {}, T0, ref, FID), check=False)
    assert P.parse(raw, schema=False).fields == fw_cose.parse(raw).fields
    assert fw_cose.verify(raw, FW_FOG_VK).raw == raw
    for cut in (len(raw) - 1, len(raw) - 65, len(raw) - 67):
        assert fog_reason(raw[:cut], FOG.public_key) == firmware_reason(raw[:cut], FW_FOG_VK)


@SETTINGS
@given(st.integers(0, 300), st.sampled_from([0, 1, 2, 4]), st.booleans())
def test_envelope_payload_head_of_any_width_gets_the_firmware_verdict(size: int, width: int,
                                                                       signed: bool):
    # the envelope's fast path must take only the shortest payload head; any other width
    # falls through to the strict decoder (not_deterministic), as in the firmware
    f = P.command(DEV, 1, "ping", {}, T0, b"", FID)
    if size < len(fog_cbor.encode(f)):
        f = {0: 4, 6: b"", 17: FID}  # too short for a command: bad_fields once signed
    f[6] = bytes(max(0, size - len(fog_cbor.encode(f))))
    payload = fog_cbor.encode(f)
    n = len(payload)
    if width == 0 and n >= 24:
        width = 1
    if (width == 1 and n >= 256) or (width == 2 and n >= 2**16):
        width = 4
    hd = bytes([0x40 | n]) if width == 0 else bytes([0x40 | {1: 24, 2: 25, 4: 26}[width]]) + n.to_bytes(width, "big")
    sig = FOG.sign(P.to_be_signed(payload)) if signed else b"\x01" * 64
    raw = b"\xd2\x84\x43\xa1\x01\x26\xa1\x04\x48" + FID + hd + payload + b"\x58\x40" + sig
    ours = fog_reason(raw, FOG.public_key)
    assert ours == firmware_reason(raw, FW_FOG_VK)
    if hd != fog_cbor.head(2, n):
        assert ours == "not_deterministic"
    elif not signed:
        assert ours == "bad_signature"
    else:
        assert ours == ("accepted" if 5 in f and len(f[6]) <= 32 else "bad_fields")


# --- decoder fuzz ---------------------------------------------------------------------------
def _fw_decode(data: bytes, tags: Any = None) -> tuple[str, Any]:
    try:
        v = fw_cbor.decode(data, tags)
    except fw_cbor.CBORError as e:
        return e.reason, None
    return "ok", (v.tag, v.value) if isinstance(v, fw_cbor.Tag) else v


def _fog_decode(data: bytes, tags: Any = None) -> tuple[str, Any]:
    try:
        v = fog_cbor.decode(data, tags)
    except fog_cbor.CBORError as e:
        return e.reason, None
    return "ok", (v.tag, v.value) if isinstance(v, fog_cbor.Tag) else v


cbor_ish = st.one_of(
    st.binary(max_size=64),
    # mostly-valid CBOR with a few bytes changed: reaches deeper rules than pure noise
    st.tuples(st.recursive(
        st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=30) | st.text(max_size=10)
        | st.booleans(),
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(-30, 300) | st.text(max_size=3), inner, max_size=4),
        max_leaves=12), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3))
    .map(lambda t: bytes(_poke(bytearray(fog_cbor.encode(t[0])), t[1]))),
)


def _poke(b: bytearray, edits: list[tuple[int, int]]) -> bytearray:
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return b


@settings(max_examples=2000, deadline=None)
@given(cbor_ish)
def test_decoder_raises_only_protocol_errors_and_agrees_with_the_firmware(data: bytes):
    # _fog_decode catches CBORError (a ProtocolError) only: anything else fails the test
    assert _fog_decode(data, (18,)) == _fw_decode(data, (18,))
    assert _fog_decode(data) == _fw_decode(data)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.binary(max_size=150).map(lambda b: b"\xd2\x84\x43\xa1\x01\x26" + b),
                 st.binary(max_size=150).map(lambda b: BASES[0][:40] + b)))
def test_parse_of_random_bytes_raises_only_protocol_errors_with_the_firmware_reason(data: bytes):
    try:
        P.parse(data, schema=False)
        ours = "accepted"
    except P.ProtocolError as e:
        ours = e.reason
    try:
        fw_cose.parse(data)
        theirs = "accepted"
    except fw_cose.CoseError as e:
        theirs = e.reason
    assert ours == theirs


values = st.recursive(
    st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=40) | st.text(max_size=20)
    | st.booleans(),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.integers(-(2**40), 2**40) | st.text(max_size=5) | st.binary(max_size=3),
                      inner, max_size=5),
    max_leaves=20)


@settings(max_examples=500, deadline=None)
@given(values)
def test_encoder_is_the_firmware_encoder_and_round_trips(v: Any):
    raw = fog_cbor.encode(v)
    assert raw == fw_cbor.encode(v)
    assert fog_cbor.decode(raw) == v


def _loose(v: Any, draw: Callable[[Any], Any]) -> bytes:
    """The encoding of v with exactly one spot (if v has that many) made non-deterministic:
    a longer head than needed, an indefinite length, map entries out of order or a
    duplicated entry. One fault per input, so it is the first one both decoders meet."""
    count = [0]
    fault = draw(st.integers(0, 40))

    def here() -> bool:
        count[0] += 1
        return count[0] - 1 == fault

    def hd(major: int, n: int) -> bytes:
        widths = [w for w, lim in ((0, 24), (1, 256), (2, 2**16), (4, 2**32), (8, 2**64)) if n < lim]
        w = draw(st.sampled_from(widths[1:])) if len(widths) > 1 and here() else widths[0]
        if w == 0:
            return bytes([major << 5 | n])
        return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[w]]) + n.to_bytes(w, "big")

    def enc(v: Any) -> bytes:
        if isinstance(v, bool):
            return b"\xf5" if v else b"\xf4"
        if isinstance(v, int):
            return hd(0, v) if v >= 0 else hd(1, -1 - v)
        if isinstance(v, (bytes, str)):
            b = v if isinstance(v, bytes) else v.encode()
            return hd(2 if isinstance(v, bytes) else 3, len(b)) + b
        if isinstance(v, list):
            if here():
                return b"\x9f" + b"".join(enc(x) for x in v) + b"\xff"
            return hd(4, len(v)) + b"".join(enc(x) for x in v)
        entries = [enc(k) + enc(x) for k, x in sorted(v.items(), key=lambda kv: fog_cbor.encode(kv[0]))]
        if len(entries) > 1 and here():
            i = draw(st.integers(0, len(entries) - 2))
            entries[i], entries[i + 1] = entries[i + 1], entries[i]
        elif entries and here():
            entries.append(entries[-1])
        return hd(5, len(entries)) + b"".join(entries)

    return enc(v)


@settings(max_examples=2000, deadline=None)
@given(values, st.data())
def test_non_deterministic_encodings_get_the_firmware_reason(v: Any, data: Any):
    raw = _loose(v, data.draw)
    assert _fog_decode(raw) == _fw_decode(raw)
    payload = _loose(GOOD["reading"], data.draw)
    assert fog_reason(_resign(payload, METER), METER.public_key) == firmware_reason(
        _resign(payload, METER), fw_keys.VerifyingKey(PUB))


def test_encoder_sorts_map_keys_bytewise_not_length_first():
    # RFC 8949 4.2.1: 0x18 0x64 (100) sorts before 0x20 (-1) and before "a" (0x61 0x61)
    assert fog_cbor.encode({"a": 0, -1: 0, 100: 0, 1: 0}) == bytes.fromhex("a4 01 00 1864 00 20 00 6161 00")
    with pytest.raises(fog_cbor.CBORError) as err:
        fog_cbor.encode({1: 1.5})
    assert err.value.reason == "unencodable"
    with pytest.raises(fog_cbor.CBORError):
        fog_cbor.encode(2**64)


@pytest.mark.parametrize(("hexdata", "reason"), [
    ("", "malformed"), ("1c", "malformed"), ("19 00", "malformed"), ("62 ff fe", "malformed"),
    ("81" * 9 + "00", "malformed"), ("1817", "not_deterministic"), ("5f ff", "not_deterministic"),
    ("a2 02 00 01 00", "not_deterministic"), ("a2 01 00 01 00", "not_deterministic"),
    ("f6", "forbidden_type"), ("fb 3ff0000000000000", "forbidden_type"), ("c1 00", "forbidden_type"),
    ("a1 f5 00", "forbidden_type"), ("a1 80 00", "forbidden_type"), ("00 00", "trailing_bytes"),
    ("a9 01", "malformed"),  # 9 pairs can't fit in 1 byte: reported before any entry
    # the same rules inside a map, where the decoder inlines the common items
    ("a1 01 1817", "not_deterministic"), ("a1 01 1900ff", "not_deterministic"),
    ("a1 01 1a0000ffff", "not_deterministic"), ("a1 01 1b00000000ffffffff", "not_deterministic"),
    ("a1 01 5801 00", "not_deterministic"), ("a1 01 5817" + "00" * 23, "not_deterministic"),
    ("a1 01 19 00", "malformed"), ("a1 01 43 0000", "malformed"), ("a1 01 5818 00", "malformed"),
    ("a1 01 58", "malformed"), ("a1 1801 00", "not_deterministic"), ("a2 01 00 01", "malformed"),
])
def test_decoder_reason_codes(hexdata: str, reason: str):
    data = bytes.fromhex(hexdata.replace(" ", ""))
    assert _fog_decode(data) == (reason, None)
    assert _fw_decode(data) == (reason, None)


def test_nesting_of_eight_is_allowed():
    assert fog_cbor.decode(bytes.fromhex("81" * 8 + "00")) == [[[[[[[[0]]]]]]]]


# --- schema rules (docs/PROTOCOL.md section 4), each checked against the firmware -------------
PUB = METER.public_key.raw
GOOD: dict[str, dict[int, Any]] = {
    "reading": P.reading(DEV, 7, T0, 900, 10, 0, 0, b"\x22" * 32, {1: 2300, 5: -40}),
    "birth": {0: 2, 1: DEV, 10: PUB, 11: "1.0", 12: 3, 13: 6, 14: "rp2", 15: "pulse", 4: 900, 16: FID},
    "ack": P.ack(DEV, 7, b"\x33" * 32, T0, FID),
    "command": P.command(DEV, 5, "relay", {1: True}, T0, b"", FID),
    "result": {0: 5, 1: DEV, 2: 5, 3: 2, 4: "relay stuck", 5: T0},
    "checkpoint": P.checkpoint(FID, 1, 0, b"\x44" * 32, bytes(32), T0),
    "enrollment": P.enrollment(DEV, PUB, "revoked", "stolen", T0, FID),
}


def _with(name: str, **changes: Any) -> dict[int, Any]:
    f = dict(GOOD[name])
    for k, v in changes.items():
        key = int(k[1:])
        if v is _DROP:
            del f[key]
        else:
            f[key] = v
    return f


_DROP = object()
BAD_FIELDS: list[tuple[str, dict[int, Any]]] = [
    ("unknown_key", _with("reading", k10=1)),
    ("unknown_key_ack", _with("ack", k5=1)),
    ("missing_key", _with("reading", k6=_DROP)),
    ("missing_key_checkpoint", _with("checkpoint", k4=_DROP)),
    ("wrong_kind_bstr_for_uint", _with("reading", k5=b"\x01")),
    ("wrong_kind_bool_for_uint", _with("reading", k6=True)),
    ("wrong_kind_negative_uint", _with("reading", k6=-1)),
    ("wrong_kind_dev_7_bytes", _with("ack", k1=DEV[:7])),
    ("wrong_kind_digest_31", _with("ack", k3=b"\x33" * 31)),
    ("wrong_kind_pub_64", _with("birth", k10=PUB[:64])),
    ("wrong_kind_text_for_bstr", _with("command", k6="x")),
    ("wrong_kind_q_list", _with("reading", k9=[1])),
    ("seq_zero", _with("reading", k2=0)),
    ("dur_zero", _with("reading", k4=0)),
    ("flags_over_0xff", _with("reading", k7=0x100)),
    ("t_off_grid_synced", _with("reading", k3=T0 + 1)),
    ("prev_nonzero_at_seq_1", _with("reading", k2=1)),
    ("q_key_6", _with("reading", k9={6: 1})),
    ("q_key_0", _with("reading", k9={0: 1})),
    ("q_negative_voltage", _with("reading", k9={1: -1})),
    ("q_text_value", _with("reading", k9={5: "hot"})),
    ("q_bool_value", _with("reading", k9={3: True})),
    ("birth_dev_not_id_of_pub", _with("birth", k10=FOG.public_key.raw)),
    ("enrollment_dev_not_id_of_pub", _with("enrollment", k10=FOG.public_key.raw)),
    ("relay_int", _with("command", k4={1: 1})),
    ("relay_no_args", _with("command", k4={})),
    ("relay_extra_arg", _with("command", k4={1: True, 2: 0})),
    ("limit_negative", _with("command", k3="limit", k4={1: -1})),
    ("limit_bool", _with("command", k3="limit", k4={1: False})),
    ("interval_120", _with("command", k3="interval", k4={1: 120})),
    ("interval_true", _with("command", k3="interval", k4={1: True})),
    ("time_text", _with("command", k3="time", k4={1: "now"})),
    ("time_negative", _with("command", k3="time", k4={1: -5})),
    ("ping_with_args", _with("command", k3="ping", k4={1: 0})),
    ("reboot_with_args", _with("command", k3="reboot", k4={"now": True})),
    ("unknown_op", _with("command", k3="selfdestruct", k4={})),
    ("result_status_3", _with("result", k3=3)),
    ("checkpoint_height_0", _with("checkpoint", k2=0)),
    ("checkpoint_prev_nonzero_at_height_1", _with("checkpoint", k5=b"\x01" * 32)),
    ("checkpoint_agg_31", _with("checkpoint", k8=b"\x01" * 31)),
    ("enrollment_status_pending", _with("enrollment", k18="pending")),
]
GOOD_FIELDS: list[tuple[str, dict[int, Any]]] = [
    *GOOD.items(),
    ("t_off_grid_unsynced", _with("reading", k3=T0 + 1, k7=P.CLOCK_UNSYNCED)),
    ("q_absent", _with("reading", k9=_DROP)),
    ("q_negative_temperature_only", _with("reading", k9={5: -300})),
    ("seq_1_zero_prev", _with("reading", k2=1, k8=bytes(32))),
    ("all_flags", _with("reading", k7=0xFF, k3=T0 + 7)),
    ("limit_zero", _with("command", k3="limit", k4={1: 0})),
    ("interval_3600", _with("command", k3="interval", k4={1: 3600})),
    ("time", _with("command", k3="time", k4={1: T0})),
    ("ping", _with("command", k3="ping", k4={})),
    ("reboot", _with("command", k3="reboot", k4={})),
    ("checkpoint_height_2_any_prev", _with("checkpoint", k2=2, k5=b"\x09" * 32, k7=T0, k8=b"\x01" * 32)),
    ("enrollment_active", _with("enrollment", k18="active")),
]


def _signer(f: dict[int, Any]) -> P.SigningKey:
    return METER if P.SIGNER_FIELD[f[0]] == 1 else FOG


@pytest.mark.parametrize(("name", "f"), BAD_FIELDS, ids=[n for n, _ in BAD_FIELDS])
def test_schema_rule_rejects(name: str, f: dict[int, Any]):
    with pytest.raises(P.ProtocolError) as err:
        P.check_fields(f)
    assert err.value.reason == "bad_fields"
    with pytest.raises(fw_messages.FieldError):
        fw_messages.check_fields(f)
    # signed anyway (by a buggy or hostile sender): verify() says bad_fields, after the signature
    key = _signer(f)
    raw = P.sign1(key, f, check=False)
    assert fog_reason(raw, key.public_key) == "bad_fields"
    assert P.parse(raw, schema=False).fields == f
    with pytest.raises(P.ProtocolError) as err:
        P.sign1(key, f)
    assert err.value.reason == "bad_fields"


@pytest.mark.parametrize(("name", "f"), GOOD_FIELDS, ids=[n for n, _ in GOOD_FIELDS])
def test_schema_rule_accepts(name: str, f: dict[int, Any]):
    P.check_fields(f)
    fw_messages.check_fields(f)
    key = _signer(f)
    assert P.verify(P.sign1(key, f), key.public_key).fields == f


def test_bad_fields_comes_after_the_signature_check_as_in_the_table():
    f = _with("result", k3=9)
    raw = bytearray(P.sign1(METER, f, check=False))
    raw[-1] ^= 1
    assert fog_reason(bytes(raw), METER.public_key) == "bad_signature"
    assert firmware_reason(bytes(raw), fw_keys.VerifyingKey(PUB)) == "bad_signature"
    with pytest.raises(P.ProtocolError) as err:
        P.parse(bytes(raw))  # parse alone has no signature to check first
    assert err.value.reason == "bad_fields"


def test_verify_with_the_wrong_key_is_kid_mismatch():
    raw = P.sign1(METER, GOOD["reading"])
    assert fog_reason(raw, FOG.public_key) == "kid_mismatch"
    m = P.parse(raw, schema=False)
    with pytest.raises(P.ProtocolError, match="different party"):
        P.verify_message(m, FOG.public_key)
    assert P.verify_message(m, METER.public_key) is m


def test_sign1_refuses_what_receivers_reject():
    with pytest.raises(P.ProtocolError) as err:
        P.sign1(FOG, GOOD["reading"])  # dev is the meter, not the fog
    assert err.value.reason == "kid_mismatch"
    with pytest.raises(P.ProtocolError) as err:
        P.sign1(FOG, _with("command", k6=b"\x00" * 4096))
    assert err.value.reason == "too_large"


def test_new_types_are_added_by_registering_a_schema():
    saved_signers, saved_schemas, saved_rules = dict(P.SIGNER_FIELD), dict(P.SCHEMAS), dict(P.RULES)
    try:
        def rule(f: dict[int, Any]) -> None:
            if f[2] > 100:
                raise P.ProtocolError("bad_fields", "estimate too large")

        with pytest.raises(ValueError, match=r"field 2 \(u\) has no range"):
            P.register_type(30, 17, {0: "u", 17: "b8", 2: "u", 3: "a?", 4: "bool"}, rule)
        P.register_type(30, 17, {0: "u", 17: "b8", 2: "u", 3: "a?", 4: "bool"}, rule,
                        ranges={2: (0, 1000), 3: (0, 4)})
        raw = P.sign1(FOG, {0: 30, 17: FID, 2: 5, 4: False})
        assert P.verify(raw, FOG.public_key).type == 30
        assert P.parse(raw).fields[2] == 5
        with pytest.raises(P.ProtocolError, match="estimate too large"):
            P.sign1(FOG, {0: 30, 17: FID, 2: 500, 4: True})
        with pytest.raises(P.ProtocolError, match=r"field 2 is 1001, outside \[0, 1000\]"):
            P.sign1(FOG, {0: 30, 17: FID, 2: 1001, 4: True})
        with pytest.raises(P.ProtocolError, match="no field"):
            P.check_fields({0: 30, 17: FID, 2: 5, 4: True, 9: 1})
        with pytest.raises(ValueError):
            P.register_type(31, 17, {0: "u", 17: "b8", 2: "float"})
        with pytest.raises(ValueError):
            P.register_type(31, 1, {0: "u", 17: "b8"})
    finally:
        P.SIGNER_FIELD.clear()
        P.SIGNER_FIELD.update(saved_signers)
        P.SCHEMAS.clear()
        P.SCHEMAS.update(saved_schemas)
        P.RULES.clear()
        P.RULES.update(saved_rules)
        P.RANGES.pop(30, None)
    with pytest.raises(P.ProtocolError) as err:
        P.parse(raw)
    assert err.value.reason == "unknown_type"


# --- builders -------------------------------------------------------------------------------
def test_fog_builders_match_the_spec_keys_and_the_firmware_builders():
    assert P.ack(DEV, 3, b"\x01" * 32, T0, FID) == fw_messages.ack(DEV, 3, b"\x01" * 32, T0, FID)
    args = (DEV, 4, "limit", {1: 3000}, T0, b"\x02" * 16, FID)
    assert P.command(*args) == fw_messages.command(*args)
    assert P.reading(DEV, 2, T0, 900, 5, 6, 0, b"\x01" * 32, {1: 2}) == fw_messages.reading(
        DEV, 2, T0, 900, 5, 6, 0, b"\x01" * 32, {1: 2})
    assert P.checkpoint(FID, 3, 10, b"r" * 32, b"p" * 32, T0) == {
        0: 6, 17: FID, 2: 3, 3: 10, 4: b"r" * 32, 5: b"p" * 32, 6: T0}
    assert P.checkpoint(FID, 3, 10, b"r" * 32, b"p" * 32, T0, T0 - 5, b"a" * 32)[8] == b"a" * 32
    assert P.enrollment(DEV, PUB, "active", "ok", T0, FID) == {
        0: 8, 1: DEV, 10: PUB, 18: "active", 19: "ok", 6: T0, 17: FID}
    assert P.flag_names(0x81) == ["CLOCK_UNSYNCED", "SKIPPED"] == fw_messages.flag_names(0x81)


# --- keys -----------------------------------------------------------------------------------
def _bad_pub(make: Callable[[bytes], bytes]) -> str:
    with pytest.raises(P.ProtocolError) as err:
        P.PublicKey(make(PUB))
    return err.value.reason


@pytest.mark.parametrize("make", [
    lambda p: p[:64], lambda p: p + b"\x00", lambda p: b"\x02" + p[1:33],
    lambda p: b"\x05" + p[1:], lambda p: p[:-1] + bytes([p[-1] ^ 1]),  # off the curve
    lambda p: b"\x04" + (P.FIELD_PRIME + 1).to_bytes(32, "big") + p[33:],  # x >= p
    lambda p: b"\x04" + bytes(64),  # (0, 0): not a point
], ids=["short", "long", "compressed", "prefix", "off_curve", "x_ge_p", "zero"])
def test_bad_public_keys_are_rejected(make: Callable[[bytes], bytes]):
    assert _bad_pub(make) == "bad_public_key"


def test_key_ids_and_round_trips():
    k = P.SigningKey.generate()
    assert len(k.public_key.raw) == 65 and k.public_key.raw[0] == 4
    assert k.id == hashlib.sha256(k.public_key.raw).digest()[:8] == P.party_id(k.public_key.raw)
    assert k.id_hex == k.public_key.id_hex == k.id.hex() and len(k.id_hex) == 16
    again = P.SigningKey.from_bytes(k.private_bytes())
    assert again.public_key == k.public_key and hash(again.public_key) == hash(k.public_key)
    assert fw_keys.SigningKey(k.private_bytes()).pub == k.public_key.raw
    for bad in (0, P.N, -1):
        with pytest.raises(ValueError):
            P.SigningKey.from_int(bad)
    with pytest.raises(ValueError):
        P.SigningKey.from_bytes(b"\x01" * 31)


@FEW
@given(st.integers(1, P.N - 1), st.binary(max_size=100))
def test_signatures_are_deterministic_low_s_and_equal_python_ecdsa_rfc6979(d: int, data: bytes):
    k = P.SigningKey.from_int(d)
    sig = k.sign(data)
    assert sig == k.sign(data)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    assert 1 <= s <= P.HALF_N
    r2, s2 = reference.rfc6979_sign(d, data)
    assert (r2, min(s2, P.N - s2)) == (r, s)
    assert k.public_key.verify(sig, data)
    assert not k.public_key.verify(sig, data + b"!")


def test_item_end_splits_concatenated_items_strictly():
    a, b = BASES[0], BASES[1]
    data = b"\x82" + a + b
    end = fog_cbor.item_end(data, 1, (18,))
    assert data[1:end] == a and fog_cbor.item_end(data, end, (18,)) == len(data)
    with pytest.raises(fog_cbor.CBORError) as err:
        fog_cbor.item_end(data, 1)  # tag 18 not allowed unless asked for
    assert err.value.reason == "forbidden_type"
    with pytest.raises(fog_cbor.CBORError) as err:
        fog_cbor.item_end(b"\x19\x00\x01", 0)
    assert err.value.reason == "not_deterministic"
