"""Property tests in the style of python-ecdsa: mutate valid signatures, payloads and
envelopes, and require the firmware verifier to reject every mutation with a CoseError
(never accept it, never crash with anything else)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import cbor, cose, keys, p256
from core import messages as M

KEY = keys.SigningKey(0x1234567890ABCDEF)
VK = keys.VerifyingKey(KEY.pub)
FIELDS = M.reading(KEY.id, 42, 1_800_000_000, 900, 123_456, 789, M.PARTIAL, b"\x5a" * 32,
                   {1: 2290, 2: 2410, 3: 5100})
MSG = cose.sign1(KEY, FIELDS)
PAYLOAD_AT = MSG.index(cbor.encode(FIELDS))
SIG_AT = len(MSG) - 64
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rejected(msg: bytes) -> str:
    with pytest.raises(cose.CoseError) as err:
        cose.verify(msg, VK)
    return err.value.reason


def test_the_unmutated_message_verifies():
    assert cose.verify(MSG, VK).fields == FIELDS


@SETTINGS
@given(st.integers(0, len(MSG) * 8 - 1))
def test_any_single_bit_flip_is_rejected(bit: int):
    m = bytearray(MSG)
    m[bit // 8] ^= 1 << (bit % 8)
    rejected(bytes(m))


@SETTINGS
@given(st.integers(0, len(MSG) - 1), st.integers(1, 255))
def test_any_byte_replacement_is_rejected(pos: int, delta: int):
    m = bytearray(MSG)
    m[pos] = (m[pos] + delta) % 256
    rejected(bytes(m))


@SETTINGS
@given(st.integers(0, len(MSG) - 1))
def test_every_truncation_is_rejected(n: int):
    rejected(MSG[:n])


@SETTINGS
@given(st.integers(0, len(MSG)), st.binary(min_size=1, max_size=8))
def test_any_insertion_is_rejected(pos: int, extra: bytes):
    rejected(MSG[:pos] + extra + MSG[pos:])


@SETTINGS
@given(st.integers(-(2**20), 2**20).filter(bool), st.sampled_from(["r", "s"]))
def test_signature_scalar_nudges_are_rejected(delta: int, which: str):
    r = int.from_bytes(MSG[SIG_AT:SIG_AT + 32], "big")
    s = int.from_bytes(MSG[SIG_AT + 32:], "big")
    if which == "r":
        r = (r + delta) % 2**256
    else:
        s = (s + delta) % 2**256
    reason = rejected(MSG[:SIG_AT] + r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    assert reason in ("bad_signature", "sig_out_of_range", "high_s")


@SETTINGS
@given(st.binary(min_size=64, max_size=64))
def test_random_signatures_are_rejected(sig: bytes):
    rejected(MSG[:SIG_AT] + sig)


def test_the_high_s_twin_of_a_valid_signature_is_rejected():
    # mathematically valid ECDSA, but SPEC demands low-S so a message has one encoding
    s = int.from_bytes(MSG[SIG_AT + 32:], "big")
    assert rejected(MSG[:SIG_AT + 32] + (p256.N - s).to_bytes(32, "big")) == "high_s"


field_values: dict[int, Any] = {
    2: st.integers(1, 2**40), 3: st.integers(0, 2**33).map(lambda t: t - t % 900),
    5: st.integers(0, 2**50), 6: st.integers(0, 2**50), 7: st.integers(0, 255),
    8: st.binary(min_size=32, max_size=32),
}


@SETTINGS
@given(st.sampled_from(sorted(field_values)), st.data())
def test_payload_field_changed_under_the_old_signature_is_rejected(key: int, data: st.DataObject):
    value = data.draw(field_values[key])
    if value == FIELDS[key]:
        return
    changed = dict(FIELDS, **{})
    changed[key] = value
    payload = cbor.encode(changed)
    # rebuild the envelope around the new payload, keeping the original signature
    m = MSG[:PAYLOAD_AT - _head_len(len(cbor.encode(FIELDS)))] + _bstr(payload) + MSG[SIG_AT - 2:]
    assert rejected(m) == "bad_signature"


def _bstr(b: bytes) -> bytes:
    return cbor.encode(b)


def _head_len(n: int) -> int:
    return len(cbor.encode(bytes(n))) - n


@SETTINGS
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.integers(0, 30) | st.text(max_size=5), children, max_size=4),
    max_leaves=12))
def test_cbor_round_trip_and_canonical_uniqueness(obj: Any):
    if _has_none(obj):
        with pytest.raises(cbor.CBORError):
            cbor.encode(obj)
        return
    enc = cbor.encode(obj)
    assert cbor.decode(enc) == obj
    assert cbor.encode(cbor.decode(enc)) == enc


def _has_none(o: Any) -> bool:
    if o is None:
        return True
    if isinstance(o, list):
        return any(_has_none(x) for x in o)
    if isinstance(o, dict):
        return any(_has_none(v) for v in o.values())
    return False


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_decoder_never_fails_other_than_with_cbor_error(data: bytes):
    try:
        cbor.decode(data, (18,))
    except cbor.CBORError as e:
        assert e.reason in ("malformed", "not_deterministic", "forbidden_type", "out_of_range",
                            "trailing_bytes")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_parse_never_fails_other_than_with_cose_error(data: bytes):
    try:
        cose.parse(data)
    except cose.CoseError:
        pass
