"""The fog's fast paths against the generic code they shortcut: the ack payload built by
concatenation, the reading layout that parse() recognises, and process() checking a group's
signatures on every core. Each must give exactly what the generic path gives: the same
bytes, the same fields, the same outcome and rejection reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fog_node import ingest as I
from fog_node.log.store import SQLiteLogStore
from fog_node.registry import Registry
from meterledger import wire as P
from meterledger.wire import cbor as C
from meterledger.wire import cose as W_cose

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = 1_800_000_000
FOG = P.SigningKey.from_int(0xF06)
METER = P.SigningKey.from_int(0x5EED)

# integers around every head width boundary, and anywhere
# integers around every head width boundary, and anywhere in the SPEC's int64 range
uint = st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1]) \
    | st.integers(0, 2**63 - 1)
sint = uint | st.integers(-(2**63), -1)
# beyond it (out_of_range for the decoder)
huge = st.integers(2**63, 2**64 - 1) | st.integers(-(2**64), -(2**63) - 1)


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """("ok", result) or ("error", class, reason, message): what a caller can observe."""
    try:
        return ("ok", fn())
    except (P.ProtocolError, ValueError) as e:
        return ("error", type(e).__name__, getattr(e, "reason", None), str(e))


# --- the ack payload -----------------------------------------------------------------------
@SETTINGS
@given(st.binary(max_size=40), uint, st.binary(max_size=40), uint, st.binary(max_size=40))
def test_ack_payload_is_the_deterministic_encoding(dev, seq, digest, t, fog):
    fast = P.ack_payload(dev, seq, digest, t, fog)
    fields = P.ack(dev, seq, digest, t, fog)
    assert fast == C.encode(fields)
    assert fast == cbor2.dumps(fields, canonical=True)
    assert C.decode(fast) == fields


odd = st.one_of(sint, huge, st.integers(2**64, 2**66), st.booleans(), st.binary(max_size=3),
                st.text(max_size=3), st.builds(bytearray, st.binary(max_size=9)), st.none())


@SETTINGS
@given(odd, odd, odd, odd, odd)
def test_ack_payload_of_unusual_arguments_is_what_the_generic_encoder_does(dev, seq, digest, t,
                                                                           fog):
    assert outcome(lambda: P.ack_payload(dev, seq, digest, t, fog)) == \
        outcome(lambda: C.encode(P.ack(dev, seq, digest, t, fog)))


@pytest.mark.parametrize("seq", [1, 23, 24, 70_000, 2**32 - 1])
def test_signed_ack_is_byte_identical_to_sign1_and_verifies(seq):
    dev, digest = METER.id, bytes(range(32))
    raw = P.sign1_encoded(FOG, P.ack_payload(dev, seq, digest, T0, FOG.id))
    assert raw == P.sign1(FOG, P.ack(dev, seq, digest, T0, FOG.id))
    assert P.verify(raw, FOG.public_key).fields == P.ack(dev, seq, digest, T0, FOG.id)


# --- the reading layout --------------------------------------------------------------------
q_map = st.dictionaries(st.integers(0, 23) | st.integers(1, 5), sint, max_size=6)
readings = st.builds(
    lambda seq, t, dur, imp, exp, flags, prev, q: {
        0: P.READING, 1: METER.id, 2: seq, 3: t, 4: dur, 5: imp, 6: exp, 7: flags, 8: prev,
        **({} if q is None else {9: q})},
    uint, uint, uint, uint, uint, uint, st.binary(min_size=32, max_size=32),
    st.none() | q_map)


@SETTINGS
@given(readings)
def test_reading_layout_decodes_as_the_strict_decoder(fields):
    payload = C.encode(fields)
    fast = W_cose._reading_fields(payload)
    assert fast == C.decode(payload) == fields
    assert fast is not None and all(type(fast[k]) is type(fields[k]) for k in fields)


def _mutate(data: Any, payload: bytes) -> bytes:
    b = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(0, len(b) - 1)))
        if kind == "flip" and b:
            b[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and b:
            b[pos] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            b[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del b[pos:pos + data.draw(st.integers(1, 4))]
        else:
            del b[pos:]
    return bytes(b)


def _resign(payload: bytes) -> bytes:
    # a correct envelope and signature around any payload: the payload checks are reached
    return P.sign1_encoded(METER, payload)


def _verdict(raw: bytes) -> tuple[Any, ...]:
    def run() -> Any:
        m = P.verify(raw, METER.public_key)
        return m.fields, m.raw, m.payload, m.signature, m.kid

    return outcome(run)


@SETTINGS
@given(readings, st.data())
def test_mutated_readings_get_the_outcome_and_reason_of_the_generic_path(fields, data):
    payload = _mutate(data, C.encode(fields))
    fast = W_cose._reading_fields(payload)
    if fast is not None:  # recognised: then it is exactly what the strict decoder returns
        assert outcome(lambda: C.decode(payload)) == ("ok", fast)
    raw = _resign(payload)
    with mock.patch.object(W_cose, "_reading_fields", lambda p: None):
        generic = _verdict(raw)
    assert _verdict(raw) == generic


any_value = st.one_of(sint, st.binary(max_size=40), st.text(max_size=4), st.booleans(),
                      st.just(METER.id), st.just(bytes(32)), q_map, st.lists(uint, max_size=2))


@SETTINGS
@given(readings, st.data())
def test_field_edits_get_the_outcome_and_reason_of_the_generic_path(fields, data):
    # values of other kinds, missing and extra keys: wherever the layout still matches, the
    # schema shortcut must reject or accept exactly as check_fields() does
    f = dict(fields)
    for _ in range(data.draw(st.integers(1, 3))):
        k = data.draw(st.integers(0, 12))
        if data.draw(st.booleans()) and k in f:
            del f[k]
        else:
            f[k] = data.draw(any_value)
    try:
        payload = C.encode(f)
    except P.ProtocolError:
        return
    raw = _resign(payload)
    with mock.patch.object(W_cose, "_reading_fields", lambda p: None):
        generic = _verdict(raw), outcome(lambda: P.parse(raw).fields)
    assert (_verdict(raw), outcome(lambda: P.parse(raw).fields)) == generic


def test_every_reading_rule_still_runs_on_the_fast_path():
    base: dict[int, Any] = {0: 1, 1: METER.id, 2: 2, 3: T0, 4: 900, 5: 1, 6: 0, 7: 0,
                            8: b"\x01" * 32}
    cases: list[tuple[dict[int, Any], str]] = [
        ({2: 0}, r"seq\) is 0, outside"), ({2: 2**32}, r"seq\) is 4294967296, outside"),
        ({4: 0}, r"dur\) is 0, outside"), ({4: 600}, "dur must be one of"),
        ({5: 10**12}, r"imp\) is 1000000000000, outside"), ({6: 10**12}, r"exp\) is"),
        ({7: 0x100}, r"flags\) is 256, outside"), ({3: 2**32}, r"t\) is 4294967296, outside"),
        ({3: T0 + 1}, "t is not a multiple of dur"), ({2: 1}, "prev must be 32 zero bytes"),
        ({9: {6: 1}}, "q has a bad entry"), ({9: {5: -32769}}, "q entry 5 is -32769"),
        ({9: {1: 65536}}, "q entry 1 is 65536")]
    for change, words in cases:
        m = P.parse(_resign(C.encode({**base, **change})), schema=False)
        assert m.layout_checked
        with pytest.raises(P.ProtocolError, match=words) as e:
            P.check_message_fields(m)
        assert e.value.reason == "bad_fields"


def test_a_redefined_reading_schema_turns_the_shortcut_off():
    schema, rule = P.SCHEMAS[P.READING], P.RULES[P.READING]
    raw = _resign(C.encode({0: 1, 1: METER.id, 2: 2, 3: T0, 4: 900, 5: 1, 6: 0, 7: 0,
                            8: b"\x01" * 32}))
    assert P.verify(raw, METER.public_key).layout_checked
    try:
        # imp as a byte string
        P.register_type(P.READING, 1, {**schema, 5: "b"}, ranges=P.RANGES[P.READING])
        with pytest.raises(P.ProtocolError, match=r"field 5 \(imp\) must be b"):
            P.verify(raw, METER.public_key)
        P.SCHEMAS[P.READING] = schema  # restored object, but edited in place
        schema[5] = "b"
        with pytest.raises(P.ProtocolError, match=r"field 5 \(imp\) must be b"):
            P.verify(raw, METER.public_key)
    finally:
        schema[5] = "u"
        P.SCHEMAS[P.READING], P.RULES[P.READING] = schema, rule
    assert P.verify(raw, METER.public_key).fields[5] == 1


# --- signatures on every core ------------------------------------------------------------
def _reading(key: P.SigningKey, seq: int, prev: bytes, t: int | None = None, imp: int = 0) -> bytes:
    return P.sign1(key, P.reading(key.id, seq, T0 + 900 * seq if t is None else t, 900,
                                  1000 + seq + imp, 0, 0, prev))


def _chain(key: P.SigningKey, n: int) -> list[bytes]:
    out, prev = [], bytes(32)
    for seq in range(1, n + 1):
        out.append(_reading(key, seq, prev))
        prev = P.digest(out[-1])
    return out


def _forged(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 1])


def _group() -> tuple[list[bytes], list[bytes | None], list[P.SigningKey]]:
    """A group of every kind of message, in an order that exercises in-group links."""
    keys = [P.SigningKey.from_int(0xA000 + i) for i in range(5)]
    a, b, c, revoked, unknown = keys
    ca, cb, cc = _chain(a, 30), _chain(b, 30), _chain(c, 12)
    msgs: list[bytes] = []
    for i in range(30):
        msgs += [ca[i], cb[i]]
    msgs[11] = _forged(msgs[11])  # bad signature in the middle of b's chain
    msgs += [*cc[:5], _reading(c, 5, P.digest(cc[3]), imp=7)]  # equivocation
    msgs += [cc[6], cc[5], _reading(c, 8, b"\x09" * 32)]  # out of order, then prev_mismatch
    msgs += [cc[0], _chain(revoked, 1)[0], _chain(unknown, 2)[1], b"\x00junk"]
    msgs += [_reading(c, 9, P.digest(cc[7]), t=T0 + 900 * 10**6)]  # future_t
    birth = {0: P.BIRTH, 1: a.id, 10: a.public_key.raw, 11: "0.1", 12: 1, 13: 0, 14: "x",
             15: "y", 4: 900, 16: FOG.id}
    msgs += [P.sign1(a, birth), P.sign1(b, {**birth, 1: b.id, 10: b.public_key.raw, 16: b"z" * 8})]
    msgs += [b"\x82" + b"".join(_chain(unknown, 2)), b"\x81\x00"]  # batches, good and bad
    devs: list[bytes | None] = [P.parse(m, schema=False).kid if m[0] == 0xD2 else None
                                for m in msgs]
    devs[3] = c.id  # topic_mismatch: a's reading on c's topic
    return msgs, devs, keys


def _run(tmp, cores: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    monkeypatch.setattr(I, "_cores", lambda: cores)
    log, reg = SQLiteLogStore(tmp / "log.db"), Registry(tmp / "registry.db")
    ing = I.Ingest(FOG, log, reg, lambda: T0 + 86_400)
    msgs, devs, keys = _group()
    for k in keys[:4]:
        ing.decide(k.public_key.raw, "active", "test")
    ing.decide(keys[3].public_key.raw, "revoked", "stolen")
    result = ing.process(msgs, devs)
    state = ([log.entry(i) for i in range(log.size())], reg.alerts(), reg.evidence(),
             reg.quarantined(), dict(ing.rejected), dict(ing.counters))
    log.close()
    reg.close()
    return result, state


def test_a_group_checked_on_every_core_gives_the_result_of_one_core(tmp_path, monkeypatch):
    (tmp_path / "one").mkdir()
    (tmp_path / "all").mkdir()
    one = _run(tmp_path / "one", 1, monkeypatch)
    every = _run(tmp_path / "all", 2, monkeypatch)
    assert I._helpers is not None  # the helper thread did take part
    assert every == one
    # and that result is the right one, message by message
    (outcomes, acks), _ = every
    a, b, c, revoked, unknown = (k.id for k in _group()[2])
    assert [(o.status, o.reason, o.dev, o.seq) for o in outcomes if o.status != I.LOGGED] == [
        (I.REJECTED, "topic_mismatch", b, None), (I.REJECTED, "bad_signature", b, None),
        (I.REJECTED, "equivocation", c, 5), (I.REJECTED, "prev_mismatch", c, 8),
        (I.DUPLICATE, "", c, 1), (I.REJECTED, "revoked", revoked, None),
        (I.QUARANTINED, "unknown_meter", unknown, 2), (I.REJECTED, "trailing_bytes", None, None),
        (I.REJECTED, "future_t", c, 9), (I.REJECTED, "wrong_fog", b, None),
        (I.QUARANTINED, "unknown_meter", unknown, 1), (I.QUARANTINED, "unknown_meter", unknown, 2),
        (I.REJECTED, "bad_tag", None, None)]
    assert sum(o.status == I.LOGGED for o in outcomes) == 30 + 28 + 7 + 1  # + a's birth
    assert {dev: P.verify(ack, FOG.public_key).fields[2] for dev, ack in acks} == \
        {a: 30, b: 1, c: 7}  # b's seq 2 came on the wrong topic: its ack waits there


def test_on_all_cores_keeps_order_and_passes_errors_on(monkeypatch):
    monkeypatch.setattr(I, "_cores", lambda: 2)
    items = list(range(1000))
    assert I.on_all_cores(lambda x: x * x, items) == [x * x for x in items]

    def boom(x: int) -> int:
        if x == 700:
            raise ValueError("item 700")
        return x

    with pytest.raises(ValueError, match="item 700"):
        I.on_all_cores(boom, items)
