"""Modbus RTU framing on the host (the fog as bus master, the emulators), docs/PROTOCOL.md
section 17.

Pure and typed: no I/O, no clock. The firmware has its own copy of the same rules
(firmware/core/modbus.py); both are fed the same byte streams in the tests and must produce
the same frames and the same counters, so the rules below are spelled out exactly.

Framer rules (`RtuFramer`):
- Bytes are processed one at a time, so how a stream is split into `feed` calls does not
  change what comes out, only the timestamps (and therefore the silences) do.
- The buffer starts at a frame boundary (the first byte after a frame, a silence or
  `reset`) until a byte is discarded; from then on until the next frame or silence the
  framer is resynchronising.
- At a frame boundary the content says how long the frame is (section 17, requests or
  responses depending on `requests`). Three answers:
  * a length L: as soon as L bytes are buffered the CRC over them is checked. Match: a frame,
    removed from the buffer. Mismatch: not a frame; the first byte is discarded
    (resynchronisation, below).
  * "need more bytes" (a message whose CBOR is not complete yet, a response 0x04 or 0x41
    whose deciding byte has not arrived): wait.
  * "unknown" (a function code the table does not list, a 0x42/0x43 request whose data is
    not one well-formed, definite-length CBOR item): the head stays (only the silence can
    end it), and the later start positions are searched as in resynchronisation; the first
    frame found there is emitted and the bytes before it are discarded.
- Resynchronisation tries start positions in order. A start is a candidate when its address
  is plausible (1..247 for responses, 0..247 for requests), its function code is in the
  table, its length by content is known and at most 256, and for an exception response its
  code is 1..11. A candidate whose bytes have all arrived is a frame when its CRC matches
  (emitted, the bytes before it discarded), else rejected like a non-candidate; a candidate
  whose bytes have not all arrived is waited for (the positions behind it are not tried:
  they may lie inside the frame it starts). Rejected starts are never tried again; while
  resynchronising they are discarded at once. So garbage before a good frame costs only
  the garbage (the frame comes out late, at the silence at the latest, when a start in the
  garbage is waited for), unless a candidate inside the garbage passes the CRC by chance
  (1 in 65536 per candidate: the residual risk, quantified in section 17).
- The buffer never holds more than 256 bytes (one maximal ADU): a byte that would make it
  257 long first pushes the oldest byte out (discarded, so resynchronisation starts).
- Silence (a gap of `silence_us(baud)` or more between the last byte and the next `feed`, or
  an `idle` call that late): if the buffer is at least 4 bytes long and its CRC matches over
  all of it, it is a frame (plain Modbus framing: this is how an unknown function code, or a
  request whose data is not one message, still reaches the slave, which answers it with an
  exception). Otherwise its start is no frame, and the later positions are searched once
  more, now with nothing left to wait for: a frame found there is emitted (the bytes before
  it discarded), and what follows it is framed by the rules above and this one again;
  without one everything is discarded.
- Counting: every maximal run of discarded bytes between two frame boundaries (a frame, or
  a silence) is counted once, when it ends: `crc_errors` when the run is 4 bytes or more
  (something frame-sized whose CRC did not match), else `garbage`. So one corrupted frame
  counts one `crc_errors` whatever the resynchronisation did to its bytes; `frames` counts
  frames. The framer has no notion of addresses beyond the plausibility check: counting
  frames for other slaves (`other`) is the slave's business.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

from meterledger.errors import HardwareError

FC_READ_INPUT = 0x04
FC_GET_READING = 0x41
FC_PUT_ACK = 0x42
FC_PUT_CMD = 0x43
FC_GET_BIRTH = 0x44

EX_ILLEGAL_FUNCTION = 1
EX_ILLEGAL_ADDRESS = 2
EX_ILLEGAL_VALUE = 3
EX_DEVICE_FAILURE = 4

MAX_DATA = 252
MAX_ADU = MAX_DATA + 4
MAX_ADDRESS = 247
MAX_REGISTERS = 125
MAX_EXCEPTION_CODE = 0x0B  # the highest exception code Modbus defines (gateway target failed)
COSE_TAG_HEAD = 0xD2  # CBOR tag 18: every COSE_Sign1 message starts with it


# --- errors ---------------------------------------------------------------------------------
class ModbusError(HardwareError):
    """Anything that went wrong on a Modbus transaction."""


class ModbusTimeout(ModbusError):
    """No valid answer within the timeout."""


class ModbusException(ModbusError):
    """The slave answered with an exception response (function code | 0x80)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"modbus exception {code:#04x}")
        self.code = code


class ModbusBadAnswer(ModbusError):
    """A frame came back that is not the answer to the request (other address or function
    code, or data of the wrong shape)."""


class Incomplete(Exception):
    """More bytes are needed to tell where the CBOR item ends."""


# --- CRC and ADUs ---------------------------------------------------------------------------
def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (reflected poly 0xA001, init 0xFFFF). On the wire: low byte first."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def _with_crc(body: bytes) -> bytes:
    crc = crc16(body)
    return body + bytes((crc & 0xFF, crc >> 8))


def _crc_ok(buf: bytes | bytearray, n: int, p: int = 0) -> bool:
    """Whether the n bytes from buf[p] end in their CRC."""
    crc = crc16(bytes(buf[p : p + n - 2]))
    return buf[p + n - 2] == crc & 0xFF and buf[p + n - 1] == crc >> 8


def adu(address: int, fc: int, data: bytes = b"") -> bytes:
    """The ADU address · fc · data · CRC. ValueError for an address outside 0..247 (0 is
    broadcast), a function code outside 0..255 or more than 252 data bytes."""
    if not 0 <= address <= MAX_ADDRESS:
        raise ValueError(f"address {address} outside 0..{MAX_ADDRESS}")
    if not 0 <= fc <= 0xFF:
        raise ValueError(f"function code {fc} outside 0..255")
    if len(data) > MAX_DATA:
        raise ValueError(f"{len(data)} data bytes, at most {MAX_DATA} fit an ADU")
    return _with_crc(bytes((address, fc)) + bytes(data))


def silence_us(baud: int) -> int:
    """The 3.5-character frame gap in µs: 35 bit times (rounded up), 1750 µs above 19200."""
    if baud <= 0:
        raise ValueError("baud must be positive")
    if baud > 19200:
        return 1750
    return -(-35_000_000 // baud)


def char_us(baud: int) -> int:
    """One character (8N1: 10 bits) in µs, rounded up."""
    if baud <= 0:
        raise ValueError("baud must be positive")
    return -(-10_000_000 // baud)


# --- CBOR extent ----------------------------------------------------------------------------
def cbor_item_end(buf: bytes | bytearray, pos: int) -> int:
    """The index just past the CBOR data item starting at `pos`. Only the heads are read (no
    determinism, UTF-8 or type checks: that is the decoder's job). Raises Incomplete when the
    buffer ends inside the item, ValueError on a reserved additional info (28..30) or an
    indefinite length / break (31)."""
    n = len(buf)
    pending = 1
    while pending:
        if pos >= n:
            raise Incomplete
        ib = buf[pos]
        pos += 1
        major = ib >> 5
        ai = ib & 0x1F
        if ai < 24:
            val = ai
        elif ai <= 27:
            width = 1 << (ai - 24)
            if pos + width > n:
                raise Incomplete
            val = int.from_bytes(buf[pos : pos + width], "big")
            pos += width
        else:
            raise ValueError(f"CBOR head {ib:#04x}: indefinite or reserved")
        pending -= 1
        if major == 2 or major == 3:
            if pos + val > n:
                raise Incomplete
            pos += val
        elif major == 4:
            pending += val
        elif major == 5:
            pending += 2 * val
        elif major == 6:
            pending += 1
        # majors 0, 1 (integers) and 7 (simple values, floats: the width was the value)
    return pos


# --- frames ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    address: int
    fc: int
    data: bytes

    @property
    def raw(self) -> bytes:
        """The ADU bytes (address · fc · data · CRC)."""
        return _with_crc(bytes((self.address, self.fc)) + self.data)


_NEED_MORE = -1
_UNKNOWN = -2


def _message_len(buf: bytearray, p: int) -> int:
    """Length of an ADU at buf[p] whose data is one CBOR item: 2 + item + 2 CRC."""
    try:
        return cbor_item_end(buf, p + 2) - p + 2
    except Incomplete:
        return _NEED_MORE
    except ValueError:
        return _UNKNOWN


def _request_len(buf: bytearray, p: int) -> int:
    fc = buf[p + 1]
    if fc == FC_READ_INPUT or fc == FC_GET_READING:
        return 8
    if fc == FC_GET_BIRTH:
        return 4
    if fc == FC_PUT_ACK or fc == FC_PUT_CMD:
        return _message_len(buf, p)
    return _UNKNOWN


def _response_len(buf: bytearray, p: int) -> int:
    fc = buf[p + 1]
    if fc & 0x80:
        return 5
    if fc == FC_READ_INPUT:
        return 5 + buf[p + 2] if len(buf) > p + 2 else _NEED_MORE
    if fc == FC_PUT_ACK:
        return 8
    if fc == FC_PUT_CMD or fc == FC_GET_BIRTH:
        return _message_len(buf, p)
    if fc == FC_GET_READING:
        if len(buf) < p + 3:
            return _NEED_MORE
        return _message_len(buf, p) if buf[p + 2] == COSE_TAG_HEAD else 4
    return _UNKNOWN


class RtuFramer:
    """Splits a byte stream into Modbus RTU frames (rules in the module docstring).

    `requests=True` frames what a slave receives, `requests=False` what a master receives.
    `feed(data, now_us)` takes the bytes that arrived by `now_us` (a monotonic µs clock);
    `idle(now_us)` is called when nothing arrived and ends a buffered frame at the silence.
    """

    def __init__(self, *, requests: bool, baud: int = 19200) -> None:
        self.requests = requests
        self.baud = baud
        self.silence = silence_us(baud)
        self.counters: Counter[str] = Counter(frames=0, crc_errors=0, garbage=0)
        self._length = _request_len if requests else _response_len
        self._min_address = 0 if requests else 1  # broadcast is a request, never an answer
        self._buf = bytearray()
        self._dropped = 0  # bytes discarded since the last frame boundary
        self._skip = 0  # start positions below this one were tried and rejected
        self._last_us: int | None = None

    def reset(self) -> None:
        """Forget the buffer (not counted) and the time of the last byte."""
        self._buf = bytearray()
        self._dropped = 0
        self._skip = 0
        self._last_us = None

    @property
    def pending(self) -> int:
        """Bytes buffered (a frame in progress, or garbage waiting for the silence)."""
        return len(self._buf)

    def feed(self, data: bytes, now_us: int) -> list[Frame]:
        out = self.idle(now_us)
        if not data:
            return out
        for b in data:
            self._buf.append(b)
            if len(self._buf) > MAX_ADU:
                self._drop(1)
            self._scan(out)
        self._last_us = now_us
        return out

    def idle(self, now_us: int) -> list[Frame]:
        out: list[Frame] = []
        if self._last_us is not None and now_us - self._last_us >= self.silence:
            self._silence(out)
            self._last_us = None
        return out

    # internals
    def _end_run(self) -> None:
        if self._dropped:
            self.counters["crc_errors" if self._dropped >= 4 else "garbage"] += 1
            self._dropped = 0

    def _drop(self, n: int) -> None:
        """Discard the first n bytes (counted in the current run)."""
        if n:
            del self._buf[:n]
            self._dropped += n
            self._skip = self._skip - n if self._skip > n else 0

    def _emit(self, out: list[Frame], n: int) -> None:
        buf = self._buf
        self._end_run()
        out.append(Frame(buf[0], buf[1], bytes(buf[2 : n - 2])))
        self.counters["frames"] += 1
        del buf[:n]
        self._skip = 0

    def _candidate(self, p: int, final: bool) -> int:
        """A start found by resynchronisation: its ADU length when a frame starts at buf[p]
        (complete, CRC matches), 0 when none can, -1 when it must wait for more bytes (never
        when `final`: at the silence nothing more comes)."""
        buf = self._buf
        avail = len(buf) - p
        wait = 0 if final else -1
        if not self._min_address <= buf[p] <= MAX_ADDRESS:
            return 0
        if avail < 2:
            return wait
        n = self._length(buf, p)
        if n == _UNKNOWN or n > MAX_ADU:
            return 0
        if n == _NEED_MORE:
            return wait
        if buf[p + 1] & 0x80:  # an exception response: 5 bytes, a plausible code
            if avail < 3:
                return wait
            if not 1 <= buf[p + 2] <= MAX_EXCEPTION_CODE:
                return 0
        if avail < n:
            return wait
        return n if _crc_ok(buf, n, p) else 0

    def _find(self, p: int, final: bool) -> tuple[int, int]:
        """Try the starts from p on: (start, length) of the first frame, or (start of the
        first candidate still waiting for bytes, or the buffer's length, 0)."""
        end = len(self._buf)
        while p < end:
            n = self._candidate(p, final)
            if n > 0:
                self._skip = p
                return p, n
            if n < 0:
                break
            p += 1
        self._skip = p
        return p, 0

    def _scan(self, out: list[Frame]) -> None:
        buf = self._buf
        while buf:
            if self._dropped:  # resynchronising: the first start still in the running
                p, n = self._find(self._skip, False)
                if not n:
                    self._drop(p)  # the rejected starts go
                    return
                self._drop(p)
                self._emit(out, n)
                continue
            if len(buf) < 2:
                return
            n = self._length(buf, 0)
            if n == _NEED_MORE or len(buf) < n:
                return  # more bytes needed
            if n > 0:
                if _crc_ok(buf, n):
                    self._emit(out, n)
                else:
                    self._drop(1)  # resynchronisation starts
                continue
            # unknown: only the silence ends this head, but a frame may start behind it
            p, n = self._find(max(self._skip, 1), False)
            if not n:
                return
            self._drop(p)
            self._emit(out, n)

    def _silence(self, out: list[Frame]) -> None:
        buf = self._buf
        while buf:
            if len(buf) >= 4 and _crc_ok(buf, len(buf)):
                self._emit(out, len(buf))
                break
            p, n = self._find(max(self._skip, 1), True)
            if not n:
                self._drop(len(buf))
                break
            self._drop(p)
            self._emit(out, n)
            self._scan(out)
        self._end_run()


# --- helpers --------------------------------------------------------------------------------
def read_input_registers(address: int, start: int, count: int) -> bytes:
    """The request ADU for FC 0x04 (start and count are u16; the slave judges the range)."""
    if not (0 <= start <= 0xFFFF and 0 <= count <= 0xFFFF):
        raise ValueError("start and count are 16-bit")
    return adu(address, FC_READ_INPUT, struct.pack(">HH", start, count))


def registers(data: bytes) -> list[int]:
    """The words of an FC 0x04 response's data (byte count, then big-endian words)."""
    if not data or data[0] != len(data) - 1 or data[0] % 2:
        raise ValueError("register response: byte count does not match")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(1, len(data), 2)]


def exception_code(frame: Frame) -> int | None:
    """The exception code of an exception response, None for any other frame."""
    if frame.fc & 0x80 and len(frame.data) == 1:
        return frame.data[0]
    return None


def float32_words(x: float) -> tuple[int, int]:
    """An IEEE-754 single as two registers, high word first (Eastron SDM FLOAT32)."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", x))
    return hi, lo


def words_float32(hi: int, lo: int) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", hi, lo))[0]
    return value


def u32_words(x: int) -> tuple[int, int]:
    """A u32 as two registers, high word first (the meter's register map)."""
    return (x >> 16) & 0xFFFF, x & 0xFFFF
