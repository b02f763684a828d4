"""meterledger.wire.modbus: CRC, ADUs and the RTU framer of docs/PROTOCOL.md section 17 (host side).

The framer is fed byte streams with explicit µs timestamps; a gap of silence_us(baud) or
more between two feeds (or an idle() call that late) is the 3.5-character silence.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU

from meterledger import wire as P
from meterledger.wire import modbus as mb
from meterledger.wire.modbus import Frame, RtuFramer

KEY = P.SigningKey.from_int(0x51A7E)
FOG = P.SigningKey.from_int(0xF06)
T0 = 1_800_000_000
SIL = mb.silence_us(19200)


def reading(seq: int = 1) -> bytes:
    return P.sign1(KEY, P.reading(KEY.id, seq, T0, 900, 1000 + seq, 0, 0, bytes(32)))


def ack_msg(seq: int = 1) -> bytes:
    return P.sign1(FOG, P.ack(KEY.id, seq, bytes(32), T0, FOG.id))


# --- CRC and ADU ----------------------------------------------------------------------------
@pytest.mark.parametrize("body, crc_wire", [
    ("01040000000a", "700d"),
    ("010300000001", "840a"),
    ("1103006b0003", "7687"),  # the Modbus over serial line guide's example
    ("", "ffff"),
])
def test_crc_vectors(body, crc_wire):
    data = bytes.fromhex(body)
    crc = mb.crc16(data)
    assert bytes((crc & 0xFF, crc >> 8)).hex() == crc_wire


def test_crc_check_value():
    assert mb.crc16(b"123456789") == 0x4B37  # CRC-16/MODBUS catalogue check value


def test_adu_request_vector():
    assert mb.read_input_registers(1, 0, 10).hex() == "01040000000a700d"
    assert mb.adu(1, 4, bytes.fromhex("0000000a")) == bytes.fromhex("01040000000a700d")


def test_crc_matches_pymodbus():
    """pymodbus (a dev dependency: the independent Modbus reference) computes the same CRC.
    Its compute_CRC returns the two wire bytes read big-endian, i.e. ours byte-swapped."""
    import random

    rnd = random.Random(7)
    for n in range(0, 300, 7):
        data = bytes(rnd.randrange(256) for _ in range(n))
        crc = mb.crc16(data)
        assert FramerRTU.compute_CRC(data) == (crc & 0xFF) << 8 | crc >> 8
        adu = mb.adu(1, 0x43, data[:252])
        assert FramerRTU.check_CRC(adu[:-2], int.from_bytes(adu[-2:], "big"))


def test_adu_limits():
    assert len(mb.adu(247, 0x43, bytes(252))) == 256
    with pytest.raises(ValueError):
        mb.adu(1, 0x43, bytes(253))
    with pytest.raises(ValueError):
        mb.adu(248, 0x04)
    with pytest.raises(ValueError):
        mb.adu(-1, 0x04)
    with pytest.raises(ValueError):
        mb.adu(1, 256)
    assert mb.adu(0, 0x44) == Frame(0, 0x44, b"").raw  # broadcast is a valid address


@given(st.integers(0, 247), st.integers(0, 255), st.binary(max_size=252))
def test_adu_round_trip(address, fc, data):
    raw = mb.adu(address, fc, data)
    assert len(raw) == len(data) + 4
    assert mb.crc16(raw) == 0  # a correct ADU's CRC over itself is 0
    f = Frame(address, fc, data)
    assert f.raw == raw


def test_timing():
    assert mb.silence_us(9600) == math.ceil(35e6 / 9600)
    assert mb.silence_us(19200) == 1823
    assert mb.silence_us(38400) == 1750
    assert mb.silence_us(115200) == 1750
    assert mb.char_us(19200) == 521
    assert mb.char_us(9600) == 1042
    with pytest.raises(ValueError):
        mb.silence_us(0)


# --- helpers --------------------------------------------------------------------------------
def test_registers_and_exceptions():
    assert mb.registers(bytes.fromhex("0400010203")) == [1, 0x0203]
    assert mb.registers(b"\x00") == []
    for bad in (b"", b"\x04\x00\x01", b"\x03\x00\x01\x02", b"\x02\x00\x01\x02"):
        with pytest.raises(ValueError):
            mb.registers(bad)
    assert mb.exception_code(Frame(1, 0x84, b"\x02")) == 2
    assert mb.exception_code(Frame(1, 0x04, b"\x02")) is None
    assert mb.exception_code(Frame(1, 0x84, b"")) is None
    e = mb.ModbusException(3)
    assert e.code == 3 and isinstance(e, mb.ModbusError)
    assert issubclass(mb.ModbusTimeout, mb.ModbusError)
    assert issubclass(mb.ModbusBadAnswer, mb.ModbusError)


def test_float32_words():
    assert mb.float32_words(230.5) == (0x4366, 0x8000)
    assert mb.words_float32(0x4366, 0x8000) == 230.5
    hi, lo = mb.float32_words(1234.5678)
    assert mb.words_float32(hi, lo) == struct.unpack(">f", struct.pack(">f", 1234.5678))[0]
    assert mb.u32_words(0x12345678) == (0x1234, 0x5678)


def test_cbor_item_end():
    msg = reading()
    assert mb.cbor_item_end(msg, 0) == len(msg)
    assert mb.cbor_item_end(b"\x00" + msg + b"xx", 1) == len(msg) + 1
    for n in range(len(msg)):
        with pytest.raises(mb.Incomplete):
            mb.cbor_item_end(msg[:n], 0)
    assert mb.cbor_item_end(bytes.fromhex("1b0000000000000001"), 0) == 9
    assert mb.cbor_item_end(bytes.fromhex("fb3ff0000000000000"), 0) == 9  # a float: 8 bytes
    assert mb.cbor_item_end(bytes.fromhex("a201020304"), 0) == 5
    for bad in ("5f", "9f", "bf", "ff", "1c", "3d", "fe", "8201ff"):
        with pytest.raises(ValueError):
            mb.cbor_item_end(bytes.fromhex(bad), 0)
    with pytest.raises(mb.Incomplete):
        mb.cbor_item_end(bytes.fromhex("5a00010000"), 0)  # a 64 KiB string, 1 byte present


# --- the framer -----------------------------------------------------------------------------
def frames_of(framer: RtuFramer, chunks: list[bytes], t0: int = 0, step: int = 100) -> list[Frame]:
    """Feed chunks `step` µs apart (no silence between them), then the silence."""
    out: list[Frame] = []
    t = t0
    for c in chunks:
        out += framer.feed(c, t)
        t += step
    out += framer.idle(t + framer.silence)
    return out


def all_requests() -> list[Frame]:
    return [
        Frame(1, mb.FC_READ_INPUT, struct.pack(">HH", 0, 27)),
        Frame(7, mb.FC_GET_READING, struct.pack(">I", 41)),
        Frame(247, mb.FC_PUT_ACK, ack_msg()),
        Frame(3, mb.FC_PUT_CMD, P.sign1(FOG, P.command(KEY.id, 1, "ping", {}, T0, b"", FOG.id))),
        Frame(2, mb.FC_GET_BIRTH, b""),
        Frame(0, mb.FC_GET_BIRTH, b""),  # broadcast
    ]


def all_responses() -> list[Frame]:
    return [
        Frame(1, mb.FC_READ_INPUT, bytes([6]) + struct.pack(">HHH", 1, 2, 3)),
        Frame(1, mb.FC_READ_INPUT, b"\x00"),
        Frame(7, mb.FC_GET_READING, reading(5)),
        Frame(7, mb.FC_GET_READING, b""),
        Frame(247, mb.FC_PUT_ACK, struct.pack(">I", 9)),
        Frame(3, mb.FC_PUT_CMD, reading(2)),  # a message; its type is not the framer's business
        Frame(2, mb.FC_GET_BIRTH, reading(3)),
        Frame(2, 0x84, b"\x02"),
        Frame(2, 0xC1, b"\x01"),  # exception for an unknown fc 0x41|0x80... any fc|0x80 is 5 bytes
        Frame(2, 0x81, b"\x01"),
    ]


@pytest.mark.parametrize("requests", [True, False])
def test_every_fc_frames_without_waiting_for_silence(requests):
    frames = all_requests() if requests else all_responses()
    for f in frames:
        framer = RtuFramer(requests=requests)
        assert framer.feed(f.raw, 0) == [f], f  # complete on content and CRC
        assert framer.pending == 0
    framer = RtuFramer(requests=requests)
    assert framer.feed(b"".join(f.raw for f in frames), 0) == frames  # back to back
    assert framer.counters == {"frames": len(frames), "crc_errors": 0, "garbage": 0}


@pytest.mark.parametrize("requests", [True, False])
def test_splits_at_every_byte_boundary(requests):
    frames = all_requests() if requests else all_responses()
    stream = b"".join(f.raw for f in frames)
    for cut in range(1, len(stream)):
        framer = RtuFramer(requests=requests)
        assert frames_of(framer, [stream[:cut], stream[cut:]]) == frames
    framer = RtuFramer(requests=requests)
    assert frames_of(framer, [bytes([b]) for b in stream]) == frames
    assert framer.counters["frames"] == len(frames)


def test_unknown_fc_is_framed_by_silence():
    f = Frame(1, 0x03, struct.pack(">HH", 0, 1))  # read holding registers: not in our table
    framer = RtuFramer(requests=True)
    assert framer.feed(f.raw, 0) == []
    assert framer.idle(SIL - 1) == []
    assert framer.idle(SIL) == [f]
    # a request whose data is not one message: the slave must see it (to answer 0x03)
    for bad in (Frame(1, mb.FC_PUT_ACK, b"\xff\x00"), Frame(1, mb.FC_PUT_ACK, b""),
                Frame(1, mb.FC_GET_READING, b"\x00\x01")):
        framer = RtuFramer(requests=True)
        assert frames_of(framer, [bad.raw]) == [bad], bad
    # responses: an fc the table does not list
    framer = RtuFramer(requests=False)
    assert frames_of(framer, [Frame(1, 0x03, b"\x02\x00\x01").raw]) == [Frame(1, 0x03, b"\x02\x00\x01")]


def test_silence_in_a_feed_gap_ends_the_frame():
    framer = RtuFramer(requests=True)
    f = Frame(1, 0x03, b"\x00\x00\x00\x01")
    assert framer.feed(f.raw, 0) == []
    g = all_requests()[0]
    assert framer.feed(g.raw, SIL) == [f, g]  # the gap came first


def test_bad_crc_then_good_frame():
    good = all_requests()[0]
    bad = bytearray(good.raw)
    bad[-1] ^= 0x01
    framer = RtuFramer(requests=True)
    assert frames_of(framer, [bytes(bad)]) == []
    assert framer.counters == {"frames": 0, "crc_errors": 1, "garbage": 0}
    # the same corruption directly followed (no silence) by a good frame: only the bad one goes
    framer = RtuFramer(requests=True)
    assert framer.feed(bytes(bad) + good.raw, 0) == [good]
    assert framer.counters == {"frames": 1, "crc_errors": 1, "garbage": 0}
    # a flipped bit inside a message answer: counted once
    f = all_responses()[2]
    raw = bytearray(f.raw)
    raw[20] ^= 0x40
    framer = RtuFramer(requests=False)
    assert frames_of(framer, [bytes(raw)]) == []
    assert framer.counters == {"frames": 0, "crc_errors": 1, "garbage": 0}


def test_resync_garbage_that_looks_like_a_frame_start():
    """After a CRC failure the framer tries the later starts in order; whatever the garbage
    looks like (a known function code or not), the good frame behind it comes out at once."""
    for address in (4, 7):  # (last garbage byte, address) reads as FC 0x04 for address 4
        good = Frame(address, mb.FC_GET_READING, struct.pack(">I", 3))
        for garbage in (b"\x05\x41", b"\x44\x44\x41", b"\x44\x44\x44\x44\x41"):
            framer = RtuFramer(requests=True)
            assert framer.feed(garbage + good.raw, 0) == [good], garbage
            kind = "crc_errors" if len(garbage) >= 4 else "garbage"
            assert framer.counters == {"frames": 1, kind: 1} | {k: 0 for k in ("crc_errors", "garbage") if k != kind}


def test_garbage_of_unknown_fc_costs_only_the_garbage():
    """An unknown function code at the buffer's start waits for the silence, but a frame
    behind it in the same burst is found by content and CRC without waiting."""
    good = all_requests()[0]
    framer = RtuFramer(requests=True)
    assert framer.feed(b"\xff\xff" + good.raw, 0) == [good]
    assert framer.pending == 0
    assert framer.counters == {"frames": 1, "crc_errors": 0, "garbage": 1}
    # separated by a silence: the same
    framer = RtuFramer(requests=True)
    assert framer.feed(b"\xff\xff", 0) == []
    assert framer.feed(good.raw, SIL) == [good]
    assert framer.counters == {"frames": 1, "crc_errors": 0, "garbage": 1}
    # an unknown-FC frame itself still needs the silence, and keeps the bytes behind it
    unknown = Frame(1, 0x03, struct.pack(">HH", 0, 1))
    framer = RtuFramer(requests=True)
    assert framer.feed(unknown.raw, 0) == [] and framer.pending == len(unknown.raw)
    assert framer.idle(SIL) == [unknown]


def test_truncation_at_silence():
    f = all_responses()[2]
    for cut in (1, 3, 4, 40, len(f.raw) - 1):
        framer = RtuFramer(requests=False)
        assert framer.feed(f.raw[:cut], 0) == []
        assert framer.idle(SIL) == []
        assert framer.pending == 0
        assert framer.counters["crc_errors" if cut >= 4 else "garbage"] == 1
        assert framer.counters["frames"] == 0
        # the rest alone after the silence is no frame either; a whole one is
        assert frames_of(framer, [f.raw[cut:]], t0=2 * SIL) == []
        assert frames_of(framer, [f.raw], t0=10 * SIL) == [f]


def test_idle_before_silence_keeps_the_buffer():
    f = all_responses()[2]
    framer = RtuFramer(requests=False)
    framer.feed(f.raw[:10], 1000)
    assert framer.idle(1000 + SIL - 1) == []
    assert framer.feed(f.raw[10:], 1000 + SIL - 1) == [f]


def test_reset_forgets_without_counting():
    framer = RtuFramer(requests=True)
    framer.feed(b"\x01\x04\x00", 0)
    framer.reset()
    assert framer.pending == 0
    good = all_requests()[0]
    assert framer.feed(good.raw, 1) == [good]
    assert framer.counters == {"frames": 1, "crc_errors": 0, "garbage": 0}


def test_buffer_cap_256():
    framer = RtuFramer(requests=True)
    framer.feed(bytes([1, 0x03]) + bytes(400), 0)  # unknown fc: would wait for the silence
    assert framer.pending <= 256  # pushed out, then the rejected starts are discarded
    good = all_requests()[0]
    assert framer.feed(good.raw, 1) == [good]
    assert framer.counters == {"frames": 1, "crc_errors": 1, "garbage": 0}
    # a maximal ADU still frames
    big = Frame(5, mb.FC_PUT_CMD, b"\x59\x00\xf9" + bytes(249))  # bstr of 249: 252 data bytes
    assert len(big.raw) == 256
    framer = RtuFramer(requests=True)
    assert framer.feed(big.raw, 0) == [big]
    # a message too long for an ADU never frames; the buffer stays capped
    framer = RtuFramer(requests=True)
    huge = bytes([5, mb.FC_PUT_CMD]) + b"\x59\x01\x00" + bytes(256) + b"\x00\x00"
    assert frames_of(framer, [huge]) == []
    assert framer.counters == {"frames": 0, "crc_errors": 1, "garbage": 0}
    # response 0x04 with a byte count that cannot fit (5 + 255 > 256)
    framer = RtuFramer(requests=False)
    assert frames_of(framer, [bytes([1, 4, 255]) + bytes(257)]) == []
    assert framer.counters["frames"] == 0 and framer.pending == 0


def test_response_0x41_empty_vs_message():
    empty = Frame(9, mb.FC_GET_READING, b"")
    framer = RtuFramer(requests=False)
    assert framer.feed(empty.raw[:3], 0) == []
    assert framer.feed(empty.raw[3:], 1) == [empty]
    # every address: the empty answer frames (by content, or at the silence when the CRC's
    # low byte happens to be 0xD2)
    for a in range(1, 248):
        e = Frame(a, mb.FC_GET_READING, b"")
        assert frames_of(RtuFramer(requests=False), [e.raw]) == [e]


def test_requests_and_responses_differ():
    # the 8-byte 0x42 response read as a request: its data's first byte is the CBOR item 0,
    # so the content says 5 bytes, the CRC fails there, and nothing frames
    resp = Frame(1, mb.FC_PUT_ACK, struct.pack(">I", 1))
    framer = RtuFramer(requests=True)
    assert frames_of(framer, [resp.raw]) == []
    assert framer.counters == {"frames": 0, "crc_errors": 1, "garbage": 0}
    # and a 0x41 request read as a response: 0x41 data not starting with 0xD2 is 4 bytes
    req = Frame(1, mb.FC_GET_READING, struct.pack(">I", 1))
    framer = RtuFramer(requests=False)
    assert frames_of(framer, [req.raw]) == []
    assert framer.counters["frames"] == 0


def test_garbage_counts():
    framer = RtuFramer(requests=False)
    framer.feed(b"\x00", 0)
    framer.idle(SIL)
    framer.feed(b"\x00\x00\x00\x00\x00", 10 * SIL)
    framer.idle(11 * SIL)
    framer.idle(12 * SIL)  # nothing more to count
    assert framer.counters == {"frames": 0, "crc_errors": 1, "garbage": 1}


# --- resynchronisation: garbage before a good frame costs only the garbage ---------------------
def crc_clean(stream: bytes, start: int, end: int, first: int | None = None) -> bool:
    """No run of 4 or more bytes starting in stream[start:end] and ending by `first` (default
    the stream's end, at most 256 bytes on) ends in its own CRC. Independent of the framer's
    table: garbage for which this holds cannot contain or begin a complete valid frame."""
    stop = len(stream) if first is None else first
    for p in range(start, end):
        crc = 0xFFFF
        for e in range(p, min(stop, p + mb.MAX_ADU)):
            crc = (crc >> 8) ^ mb._CRC_TABLE[(crc ^ stream[e]) & 0xFF]
            if crc == 0 and e - p >= 3:
                return False
    return True


def garbage_kinds(n: int, frame: Frame, other: Frame, seed: int) -> dict[str, bytes]:
    """Garbage of n bytes, of kinds a line really produces."""
    rnd = __import__("random").Random(seed)
    kinds = {
        "ff": b"\xff" * n,  # a line pulled high
        "zeros": bytes(n),  # a break
        "counting": bytes(range(0x40, 0x40 + n)),  # through the listed function codes
        "random": bytes(rnd.randrange(256) for _ in range(n)),
        "other's tail": other.raw[-n:],  # the end of another frame
        "other's head": other.raw[:n],  # the start of a longer frame, cut off
        "own head": frame.raw[: min(n, len(frame.raw) - 1)] * 3,  # the frame's start, repeated
    }
    return {k: v[:n] for k, v in kinds.items() if len(v) >= n}


@pytest.mark.parametrize("requests", [True, False])
def test_garbage_of_every_length_glued_to_a_frame(requests):
    frames = all_requests() if requests else all_responses()
    longest = max(all_responses() if requests else all_requests(), key=lambda f: len(f.raw))
    checked = at_silence = 0
    for i, frame in enumerate(frames):
        for n in range(1, 21):
            for kind, garbage in garbage_kinds(n, frame, longest, 1000 * i + n).items():
                stream = garbage + frame.raw
                if not crc_clean(stream, 0, n):
                    continue  # a valid frame (or the start of one) by chance: not garbage
                checked += 1
                framer = RtuFramer(requests=requests)
                got = framer.feed(stream, 0)
                at_silence += not got
                got += framer.idle(SIL)
                assert got == [frame], (kind, n, frame)
                run = "crc_errors" if n >= 4 else "garbage"
                assert framer.counters == Counter({"frames": 1, run: 1}), (kind, n, frame)
                assert framer.pending == 0
                # byte by byte, no silence between the bytes: the same
                one = RtuFramer(requests=requests)
                assert frames_of(one, [bytes([b]) for b in stream], step=1) == [frame]
                assert one.counters == framer.counters
    assert checked > 0.9 * len(frames) * 20 * 5
    # most come out at once; a start in the garbage that reads as the head of a longer frame
    # is waited for, and then the frame comes out at the silence
    assert at_silence < 0.2 * checked


def test_request_glued_behind_another_meters_answer():
    """A slave on a shared line hears another meter's answer, the master's next request
    right behind it (no silence between): the request is not lost."""
    for answer in all_responses():
        answer = Frame(9, answer.fc, answer.data)
        for request in all_requests():
            framer = RtuFramer(requests=True)
            got = frames_of(framer, [answer.raw + request.raw])
            if answer.fc == mb.FC_PUT_CMD:
                # a message answer has the shape of a message request: a frame (for address 9)
                assert got == [answer, request]
                assert framer.counters == {"frames": 2, "crc_errors": 0, "garbage": 0}
            else:
                assert got == [request], (answer, request)
                assert framer.counters == {"frames": 1, "crc_errors": 1, "garbage": 0}
    # the GET_READING answer of the brief's bus, byte by byte at line speed
    answer, request = Frame(9, mb.FC_GET_READING, reading(4)), Frame(7, mb.FC_GET_READING, struct.pack(">I", 3))
    framer = RtuFramer(requests=True)
    stream = answer.raw + request.raw
    got = [f for i, b in enumerate(stream) for f in framer.feed(bytes([b]), i * mb.char_us(19200))]
    assert got == [request]  # at its last byte, not at the silence
    # and a master whose adapter echoes its own request in front of the answer
    for request in all_requests():
        for answer in all_responses():
            framer = RtuFramer(requests=False)
            got = frames_of(framer, [request.raw + answer.raw])
            assert got == ([request, answer] if request.fc == mb.FC_PUT_CMD else [answer])


def test_resync_candidates_need_a_plausible_address_and_code():
    """A start found by resynchronisation (not at a frame boundary) must have an address a
    frame can have, and an exception answer a defined code: the 4- and 5-byte frames would
    otherwise match the CRC by chance once in 65536 starts of garbage."""
    def raw(address: int, fc: int, data: bytes = b"") -> bytes:
        return mb._with_crc(bytes((address, fc)) + data)

    junk = b"\xff\xff"  # an unknown head, nothing plausible in it
    for requests, frame, found in [
        (True, raw(0, mb.FC_GET_BIRTH), True),  # broadcast: a request may have address 0
        (True, raw(247, mb.FC_GET_BIRTH), True),
        (True, raw(248, mb.FC_GET_BIRTH), False),
        (False, raw(0, mb.FC_GET_READING), False),  # an answer never comes from 0
        (False, raw(1, mb.FC_GET_READING), True),
        (False, raw(1, 0x84, b"\x02"), True),
        (False, raw(1, 0x84, b"\x0b"), True),
        (False, raw(1, 0x84, b"\x00"), False),
        (False, raw(1, 0x84, b"\x0c"), False),
        (False, raw(248, 0x84, b"\x02"), False),
    ]:
        framer = RtuFramer(requests=requests)
        got = frames_of(framer, [junk + frame])
        assert (got == [Frame(frame[0], frame[1], frame[2:-2])]) is found, frame.hex()
        assert framer.counters == {"frames": int(found), "crc_errors": int(not found),
                                   "garbage": int(found)}
        # at a frame boundary the content rules alone decide, as before
        assert frames_of(RtuFramer(requests=requests), [frame]) == [Frame(frame[0], frame[1], frame[2:-2])]


def test_resync_waits_for_a_start_in_progress():
    """The later starts are tried in order, and one whose bytes have not all arrived is
    waited for: the starts behind it may lie inside the frame it begins."""
    # a 0x41 answer whose message is a tag around a byte string holding a valid exception ADU
    inner = mb.adu(1, 0x84, b"\x02")
    outer = Frame(7, mb.FC_GET_READING, b"\xd2\x45" + inner)
    assert mb.cbor_item_end(outer.data, 0) == len(outer.data)
    for split in range(1, len(outer.raw)):
        framer = RtuFramer(requests=False)
        got = framer.feed(b"\xff\xff" + outer.raw[:split], 0) + framer.feed(outer.raw[split:], 1)
        assert got == [outer]  # not the exception inside it
    # cut off by the silence, nothing is waited for any more: the inner one is found
    framer = RtuFramer(requests=False)
    assert framer.feed(b"\xff\xff" + outer.raw[:-1], 0) == []
    assert framer.idle(SIL) == [Frame(1, 0x84, b"\x02")]
    # two runs: the six bytes before it, the CRC byte after it
    assert framer.counters == {"frames": 1, "crc_errors": 1, "garbage": 1}
    # a cut-off command (its content announces ~150 bytes) glued to a request: the request
    # comes out when the silence ends the wait...
    cut = all_requests()[3].raw[:20]
    good = all_requests()[1]
    framer = RtuFramer(requests=True)
    assert framer.feed(cut + good.raw, 0) == []
    assert framer.idle(SIL) == [good]
    assert framer.counters == {"frames": 1, "crc_errors": 1, "garbage": 0}
    # ... or when enough bytes have come for the announced length, whichever is first
    more = [all_requests()[i] for i in (0, 2, 4, 1, 0, 2)]
    framer = RtuFramer(requests=True)
    assert framer.feed(cut + good.raw + b"".join(f.raw for f in more), 0) == [good, *more]
    assert framer.counters == {"frames": 7, "crc_errors": 1, "garbage": 0}


def test_counting_with_resynchronisation():
    good, other = all_requests()[0], all_requests()[4]
    cases = [
        ([b"\xff" + good.raw], 1, 0, 1),
        ([b"\xff" * 3 + good.raw], 1, 0, 1),
        ([b"\xff" * 4 + good.raw], 1, 1, 0),
        ([b"\xff" * 3 + good.raw + b"\xff" * 7 + other.raw], 2, 1, 1),  # two runs, one each
        ([b"\xff" * 3 + good.raw + b"\xff" * 2], 1, 0, 2),  # the second run ends at the silence
        ([b"\x01\x03\x00", good.raw], 1, 0, 1),  # an unknown head: dropped with what follows it
        ([all_requests()[3].raw[:30] + good.raw], 1, 1, 0),  # found at the silence: one run
        ([good.raw[:-1] + good.raw], 1, 1, 0),  # a frame cut short by its own repetition
    ]
    for chunks, frames, crc_errors, garbage in cases:
        framer = RtuFramer(requests=True)
        frames_of(framer, chunks)
        assert framer.counters == {"frames": frames, "crc_errors": crc_errors, "garbage": garbage}, chunks
        framer.idle(10**9)  # nothing more to count
        assert framer.counters == {"frames": frames, "crc_errors": crc_errors, "garbage": garbage}


@pytest.mark.parametrize("requests", [True, False])
def test_each_start_is_crc_checked_at_most_once(requests, monkeypatch):
    """Resynchronisation keeps its place: a start it rejected is not tried again, and a CRC
    is only computed over a start whose announced length is complete."""
    import random

    calls = []
    real = mb.crc16

    def counting(data: bytes) -> int:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(mb, "crc16", counting)
    rnd = random.Random(5)
    junk = bytes(rnd.randrange(256) for _ in range(3000))
    framer = RtuFramer(requests=requests)
    for i, b in enumerate(junk):  # byte by byte, no silence: the worst case for re-scanning
        framer.feed(bytes([b]), i)
    assert len(calls) <= len(junk)
    assert sum(calls) <= 20 * len(junk)  # the lengths tried are mostly short ones


# --- properties -----------------------------------------------------------------------------
def frame_strategy(requests: bool) -> st.SearchStrategy[Frame]:
    addr = st.integers(1, 247)
    msgs = st.sampled_from([reading(1), reading(2), ack_msg(3), ack_msg(70000)])
    u32 = st.integers(0, 2**32 - 1).map(lambda x: struct.pack(">I", x))
    if requests:
        return st.one_of(
            st.builds(Frame, addr, st.just(mb.FC_READ_INPUT),
                      st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)).map(
                          lambda t: struct.pack(">HH", *t))),
            st.builds(Frame, addr, st.just(mb.FC_GET_READING), u32),
            st.builds(Frame, addr, st.sampled_from([mb.FC_PUT_ACK, mb.FC_PUT_CMD]), msgs),
            st.builds(Frame, st.integers(0, 247), st.just(mb.FC_GET_BIRTH), st.just(b"")),
            # unknown function codes frame at the silence
            st.builds(Frame, addr, st.sampled_from([0x01, 0x03, 0x10, 0x45]),
                      st.binary(min_size=0, max_size=20)),
        )
    words = st.lists(st.integers(0, 0xFFFF), max_size=125).map(
        lambda ws: bytes([2 * len(ws)]) + b"".join(struct.pack(">H", w) for w in ws))
    return st.one_of(
        st.builds(Frame, addr, st.just(mb.FC_READ_INPUT), words),
        st.builds(Frame, addr, st.sampled_from([mb.FC_GET_READING, mb.FC_PUT_CMD, mb.FC_GET_BIRTH]),
                  msgs),
        st.builds(Frame, addr, st.just(mb.FC_GET_READING), st.just(b"")),
        st.builds(Frame, addr, st.just(mb.FC_PUT_ACK), u32),
        st.builds(Frame, addr, st.integers(0x80, 0xFF), st.integers(1, 4).map(lambda c: bytes([c]))),
    )


@pytest.mark.parametrize("requests", [True, False])
def test_property_frames_and_garbage_between_silences(requests):
    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(frame_strategy(requests), st.binary(max_size=30),
                              st.lists(st.integers(1, 40), max_size=4)), max_size=6))
    def check(items):
        framer = RtuFramer(requests=requests)
        t = 0
        got: list[Frame] = []
        expected: list[Frame] = []
        bad_runs = 0
        for frame, garbage, cuts in items:
            # garbage, a silence, the frame (split anywhere, bytes apart), a silence
            if garbage:
                if len(garbage) >= 4 and mb.crc16(garbage) == 0:
                    # garbage that happens to be an ADU is an ADU: break it with a byte that
                    # moves the CRC off zero (a zero byte keeps a zero CRC register at zero)
                    garbage += b"\x01"
                got += framer.feed(garbage, t)
                t += 10
                bad_runs += 1
            t += framer.silence
            raw = frame.raw
            pos = 0
            for c in sorted(cuts):
                got += framer.feed(raw[pos:c], t)
                pos = max(pos, c)
                t += 1
            got += framer.feed(raw[pos:], t)
            expected.append(frame)
            t += framer.silence
            got += framer.idle(t)
        assert got == expected
        assert framer.counters["frames"] == len(expected)
        assert framer.counters["crc_errors"] + framer.counters["garbage"] == bad_runs

    check()


def needs_silence(frame: Frame, requests: bool) -> bool:
    """A frame only the silence ends: an unlisted function code, or an empty 0x41 answer
    whose CRC's low byte is 0xD2 (it reads as the start of a message)."""
    if requests:
        return frame.fc not in (mb.FC_READ_INPUT, mb.FC_GET_READING, mb.FC_PUT_ACK,
                                mb.FC_PUT_CMD, mb.FC_GET_BIRTH)
    return frame.fc == mb.FC_GET_READING and frame.raw[2] == mb.COSE_TAG_HEAD


@pytest.mark.parametrize("requests", [True, False])
def test_property_garbage_between_frames_costs_only_the_garbage(requests):
    """Valid frames with garbage between them, glued or with silences between: exactly the
    frames, and one count per piece of garbage. The garbage is filtered so that no run of
    bytes starting in it ends in its own CRC (so it neither holds nor starts a frame); a
    frame only the silence can end gets a silence on both sides, and no run starting inside
    it ends in its own CRC either (the framer looks behind an unlisted function code)."""

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.binary(max_size=20), st.booleans(), frame_strategy(requests),
                              st.booleans(), st.lists(st.integers(1, 300), max_size=3)),
                    max_size=6),
           st.binary(max_size=20), st.booleans())
    def check(items, tail, tail_silence):
        parts: list[tuple[bytes, bool, bool, list[int]]] = []  # bytes, silence before, garbage?, cuts
        expected: list[Frame] = []
        alone = False  # the previous part needs a silence after it
        for garbage, g_silence, frame, f_silence, cuts in items:
            if garbage:
                parts.append((garbage, g_silence or alone, True, []))
                alone = False
            only = needs_silence(frame, requests)
            parts.append((frame.raw, f_silence or only or alone, False, cuts))
            expected.append(frame)
            alone = only
        if tail:
            parts.append((tail, tail_silence or alone, True, []))
        # the filter, within each stretch between two silences
        stream = b"".join(p[0] for p in parts)
        starts = [0]
        for p in parts:
            starts.append(starts[-1] + len(p[0]))
        for i, (data, _, garbage, _) in enumerate(parts):
            end = next((starts[j] for j in range(i + 1, len(parts)) if parts[j][1]), len(stream))
            if garbage:
                assume(crc_clean(stream, starts[i], starts[i + 1], end))
            elif needs_silence(Frame(data[0], data[1], data[2:-2]), requests):
                assume(crc_clean(stream, starts[i] + 1, starts[i + 1], starts[i + 1]))
        framer = RtuFramer(requests=requests)
        got: list[Frame] = []
        t = 0
        for data, silence, _, cuts in parts:
            if silence:
                t += framer.silence
            pos = 0
            for c in [*sorted(cuts), len(data)]:
                if pos < c <= len(data):
                    got += framer.feed(data[pos:c], t)
                    t += 1
                    pos = c
        got += framer.idle(t + framer.silence)
        assert got == expected
        pieces = [len(p[0]) for p in parts if p[2]]
        assert framer.counters == {"frames": len(expected),
                                   "crc_errors": sum(n >= 4 for n in pieces),
                                   "garbage": sum(n < 4 for n in pieces)}
        assert framer.pending == 0

    check()


@pytest.mark.parametrize("requests", [True, False])
def test_property_any_bytes_never_crash(requests):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 5000)), max_size=8))
    def check(chunks):
        framer = RtuFramer(requests=requests)
        t = 0
        got: list[Frame] = []
        for data, gap in chunks:
            t += gap
            got += framer.feed(data, t)
            assert framer.pending <= mb.MAX_ADU
        got += framer.idle(t + framer.silence)
        assert framer.pending == 0
        # every frame is a valid ADU cut from the stream, in order, none overlapping
        stream = b"".join(c for c, _ in chunks)
        pos = 0
        for f in got:
            assert f.raw[:2] == bytes((f.address, f.fc)) and mb.crc16(f.raw) == 0
            pos = stream.index(f.raw, pos) + len(f.raw)
        c = framer.counters
        assert c["frames"] == len(got)
        assert sum(len(f.raw) for f in got) + c["crc_errors"] * 4 + c["garbage"] <= len(stream)

    check()


@given(st.lists(frame_strategy(False), min_size=1, max_size=5), st.data())
@settings(max_examples=100, deadline=None)
def test_property_back_to_back_any_split(frames, data):
    """Frames that give their length back to back, split anywhere, no silence at all. (An
    empty 0x41 answer from address 56 or 59 has 0xD2, the COSE tag head, as its CRC's low
    byte, so only the silence ends it: not back to back.)"""
    known = [f for f in frames if not (f.fc == mb.FC_GET_READING and f.raw[2] == 0xD2)]
    stream = b"".join(f.raw for f in known)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    framer = RtuFramer(requests=False)
    got: list[Frame] = []
    pos = 0
    for i, c in enumerate([*cuts, len(stream)]):
        got += framer.feed(stream[pos:c], i)
        pos = max(pos, c)
    got += framer.idle(10**6)
    assert got == known


# --- the firmware's copy: same frames, same counters ------------------------------------------
def _firmware_modbus() -> Any:
    try:
        from hardware.firmware import module

        return module("core.modbus")
    except ImportError:  # pragma: no cover - the firmware copy not there (yet)
        return None


_chunk = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda g, f: g + f.raw, st.binary(min_size=1, max_size=20),  # garbage glued to a frame
              st.one_of(frame_strategy(True), frame_strategy(False))),
    st.builds(lambda f, cut: f.raw[:cut] if cut else f.raw,
              st.one_of(frame_strategy(True), frame_strategy(False)), st.integers(0, 300)),
    st.builds(lambda f, i, bit: bytes(b ^ (1 << bit) if j == i % len(f.raw) else b
                                      for j, b in enumerate(f.raw)),
              frame_strategy(False), st.integers(0, 300), st.integers(0, 7)),
)


@pytest.mark.skipif(_firmware_modbus() is None, reason="firmware/core/modbus.py not present")
@pytest.mark.parametrize("requests", [True, False])
def test_property_same_as_the_firmware_framer(requests):
    fw = _firmware_modbus()

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.lists(_chunk, min_size=1, max_size=4),
                              st.sampled_from([0, 1, 500, SIL - 1, SIL, 5000]),
                              st.booleans()), max_size=10))
    def check(steps):
        ours, theirs = RtuFramer(requests=requests), fw.RtuFramer(requests)
        got_ours: list[tuple[int, int, bytes]] = []
        got_theirs: list[tuple[int, int, bytes]] = []
        t = 0
        for chunks, gap, idle in steps:
            t += gap
            data = b"".join(chunks)
            got_ours += [(f.address, f.fc, f.data) for f in ours.feed(data, t)]
            got_theirs += theirs.feed(data, t)
            if idle:
                t += SIL
                got_ours += [(f.address, f.fc, f.data) for f in ours.idle(t)]
                got_theirs += theirs.idle(t)
        t += 10 * SIL
        got_ours += [(f.address, f.fc, f.data) for f in ours.idle(t)]
        got_theirs += theirs.idle(t)
        assert got_ours == [(a, fc, bytes(d)) for a, fc, d in got_theirs]
        assert ours.counters == Counter({k: v for k, v in theirs.stats.items() if k != "other"})

    check()
