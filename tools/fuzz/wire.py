"""Targets of the wire contract: CBOR decoding (against the firmware's decoder too), fog
messages (P.parse with and without the schema, P.verify with the signer's key), and the
Modbus RTU framers of host and firmware fed the same timed byte stream."""

from __future__ import annotations

from typing import Any

from hardware import firmware
from meterledger import wire as P
from meterledger.wire import modbus as M
from tools.fuzz import seeds
from tools.fuzz.base import Draw, Finding, Target, golden

TAGS = (P.TAG_SIGN1,)


# --- cbor ------------------------------------------------------------------------------------
def _host(data: bytes, tags: Any) -> tuple[str, Any]:
    try:
        v = P.decode(data, tags)
    except P.CBORError as e:
        return e.reason, None
    return "ok", v


# the firmware's modules, imported with this one (so atheris instruments them too)
_FW_CBOR: Any = firmware.module("core.cbor")
_FW_MODBUS: Any = firmware.module("core.modbus")


def _plain(v: Any) -> Any:
    """A decoded value with either side's Tag as (tag, value), for comparing."""
    if hasattr(v, "tag") and hasattr(v, "value"):
        return ("tag", v.tag, _plain(v.value))
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def cbor(data: bytes) -> None:
    """Decode (with and without tag 18): only CBORError; what decodes re-encodes to the same
    bytes (one encoding per value); the firmware's decoder gives the same verdict."""
    fw = _FW_CBOR
    for tags in (None, TAGS):
        reason, value = _host(data, tags)
        try:
            theirs, fw_value = "ok", fw.decode(data, tags)
        except fw.CBORError as e:
            theirs, fw_value = e.reason, None
        if reason != theirs:
            raise Finding(f"tags {tags}: host says {reason}, firmware {theirs}")
        if reason == "ok":
            if _plain(value) != _plain(fw_value):
                raise Finding(f"tags {tags}: host and firmware decode different values")
            again = P.encode(value)
            if again != data:
                raise Finding(f"decoded, but re-encodes to {again.hex()}")


# --- messages --------------------------------------------------------------------------------
_KEYS = {k.id: k.public_key for k in (seeds.METER, seeds.METER2, seeds.FOG, seeds.DISPATCH)}


def _golden_key() -> dict[bytes, P.PublicKey]:
    g = golden()
    if "signer_pub" not in g:
        return {}
    k = P.PublicKey(bytes.fromhex(g["signer_pub"]))
    return {k.id: k}


def message(data: bytes) -> None:
    """P.parse without and with the schema, P.verify with the signer's key: only
    ProtocolError; a stricter check passing implies the looser ones pass, with the same
    message."""
    loose = _parse(data, False)
    strict = _parse(data, True)
    if strict is not None and loose is None:
        raise Finding("parse with the schema accepts what parse without it refuses")
    if loose is None:
        return
    if loose.raw != data or loose.digest != P.digest(data):
        raise Finding("the parsed message is not the input")
    if strict is not None and strict.fields != loose.fields:
        raise Finding("the schema changed the fields")
    key = _KEYS.get(loose.kid) or _golden_key().get(loose.kid)
    if key is None:
        return
    try:
        verified = P.verify(data, key)
    except P.ProtocolError:
        return
    if strict is None:
        raise Finding("verify accepts what parse with the schema refuses")
    if verified.fields != strict.fields:
        raise Finding("verify and parse disagree on the fields")


def _parse(data: bytes, schema: bool) -> P.Message | None:
    try:
        return P.parse(data, schema=schema)
    except P.ProtocolError:
        return None


# --- modbus ----------------------------------------------------------------------------------
def _stream(d: Draw) -> list[tuple[bytes, int]]:
    """(chunk, µs since the previous chunk): gaps below, at and past the 19200-baud
    silence (1823 µs), chunks of 0..40 bytes, often a valid ADU."""
    events: list[tuple[bytes, int]] = []
    while d.left() and len(events) < 64:
        gap = d.choice((0, 100, 500, 1822, 1823, 1824, 5000, 40_000))
        kind = d.below(4)
        if kind == 0:  # a valid request or answer ADU, maybe cut
            fc = d.choice((0x04, 0x41, 0x42, 0x43, 0x44, 0x84, 0xC1, 0x10, 0x03))
            body = d.take(d.below(12))
            if fc in (0x42, 0x43, 0x44) and d.bool():
                body = seeds.messages()[d.below(len(seeds.messages()))][:250]
            try:
                chunk = M.adu(d.below(249), fc, body)
            except ValueError:
                chunk = body
            chunk = chunk[:len(chunk) - d.below(3)]
        else:
            chunk = d.take(d.below(41))
        events.append((chunk, gap))
    return events


def modbus(data: bytes) -> None:
    """The host and firmware framers (requests and answers) get the same timed stream: the
    same frames, each with a good CRC and at most 256 bytes, and the same counters."""
    fw = _FW_MODBUS
    d = Draw(data)
    requests = d.bool()
    host = M.RtuFramer(requests=requests)
    theirs = fw.RtuFramer(requests)
    now = 1_000
    got: list[tuple[int, int, bytes]] = []
    want: list[tuple[int, int, bytes]] = []
    for chunk, gap in _stream(d):
        now += gap
        got += [(f.address, f.fc, f.data) for f in host.feed(chunk, now)]
        want += [(a, fc, bytes(b)) for a, fc, b in theirs.feed(chunk, now)]
    now += 1_000_000
    got += [(f.address, f.fc, f.data) for f in host.idle(now)]
    want += [(a, fc, bytes(b)) for a, fc, b in theirs.idle(now)]
    if got != want:
        raise Finding(f"host frames {got} != firmware frames {want}")
    for a, fc, body in got:
        raw = M.Frame(a, fc, body).raw
        if len(raw) > 256 or M.crc16(raw) != 0:
            raise Finding(f"a frame of {len(raw)} bytes or with a bad CRC: {raw.hex()}")
    ours = {k: host.counters[k] for k in ("frames", "crc_errors", "garbage")}
    fw_counts = {k: theirs.stats[k] for k in ("frames", "crc_errors", "garbage")}
    if ours != fw_counts or host.pending or theirs.buffered():
        raise Finding(f"counters {ours} != firmware {fw_counts}, or bytes left after silence")


def _modbus_seeds() -> list[bytes]:
    return [b"\x00" + bytes((0, 0x04, 7)) + bytes(8), b"\x01" + bytes((0, 0x41, 4)) * 3,
            b"\x01\x01\x02\x01" + bytes(range(40)), b"\x00" * 32]


TARGETS = [
    Target("cbor", "the deterministic CBOR decoder (host against firmware, re-encoding)",
           cbor, lambda: [*seeds.messages(), b"\xa1\x01\x02", b"\x9f\xff"]),
    Target("message", "fog messages: P.parse with and without the schema, P.verify",
           message, seeds.messages),
    Target("modbus", "the Modbus RTU framers of host and firmware on one timed stream",
           modbus, _modbus_seeds),
]
