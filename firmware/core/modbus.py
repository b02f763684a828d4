# Modbus RTU framing (SPEC section 6, docs/PROTOCOL.md section 17): CRC-16/MODBUS, ADUs,
# and a framer that cuts a byte stream into frames. The same rules live in meterledger/wire/modbus.py.
#
# Framer rules (identical in both copies; the module docstring of meterledger/wire/modbus.py has
# them at length):
# - the buffer starts at a frame boundary (after a frame, a silence, reset()) until a byte
#   is dropped; from then on until the next frame or silence it is resynchronising.
# - at a boundary the content gives the ADU length L (section 17's table), or says "more
#   bytes needed", or "unknown" (an unlisted FC, a malformed CBOR head). With L bytes
#   buffered the CRC decides: a frame, or the first byte is dropped (resynchronisation).
#   "More bytes" waits. An unknown head stays for the silence, and the starts behind it are
#   searched as in resynchronisation: a frame found there drops the bytes before it.
# - resynchronisation tries start positions in order. A candidate has a plausible address
#   (1..247 answers, 0..247 requests), a listed FC, a length by content of at most 256, and
#   for an exception answer a code of 1..11. Complete, it is a frame if the CRC matches (the
#   bytes before it dropped), else rejected; incomplete, it is waited for. Rejected starts
#   are never tried again, and dropped at once while resynchronising.
# - silence (3.5 characters since the last byte, seen by the next feed() or an idle()): a
#   buffer of >= 4 bytes whose CRC matches over all of it is a frame (how an unlisted FC
#   reaches the slave); else the later starts are searched once more with nothing left to
#   wait for (a frame found: emitted, what follows framed again), else all is dropped.
# - the buffer holds at most 256 bytes: a 257th byte first pushes the oldest one out.
# - bytes dropped between two frame boundaries (a frame or a silence) are one run, counted
#   once when it ends: crc_errors when it is at least 4 bytes long, else garbage.
from core.compat import const

FC_READ_INPUT = const(0x04)
FC_GET_READING = const(0x41)
FC_PUT_ACK = const(0x42)
FC_PUT_CMD = const(0x43)
FC_GET_BIRTH = const(0x44)
EX_ILLEGAL_FUNCTION = const(1)
EX_ILLEGAL_ADDRESS = const(2)
EX_ILLEGAL_VALUE = const(3)
EX_DEVICE_FAILURE = const(4)
MAX_DATA = const(252)
_MAX_ADU = const(256)
_MAX_EX = const(11)  # the highest exception code Modbus defines
_TICKS_PERIOD = const(0x40000000)  # MicroPython ticks_us wraps at 2**30


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _table()


def crc16(data, start=0, end=None):
    """CRC-16/MODBUS of data[start:end]; over an ADU including its CRC the result is 0."""
    if end is None:
        end = len(data)
    c = 0xFFFF
    t = _T
    for i in range(start, end):
        c = (c >> 8) ^ t[(c ^ data[i]) & 0xFF]
    return c


def adu(address, fc, data=b""):
    if len(data) > MAX_DATA:
        raise ValueError("Modbus data longer than 252 bytes")
    if not 0 <= address <= 247 or not 0 <= fc <= 255:
        raise ValueError("bad Modbus address or function code")
    b = bytearray(len(data) + 4)
    b[0] = address
    b[1] = fc
    b[2:-2] = data
    c = crc16(b, 0, len(b) - 2)
    b[-2] = c & 0xFF
    b[-1] = c >> 8
    return bytes(b)


def silence_us(baud):
    """The 3.5-character (35 bit) silence in whole microseconds; 1750 above 19200 baud."""
    if baud > 19200:
        return 1750
    return (35000000 + baud - 1) // baud


class Incomplete(Exception):
    pass


def cbor_item_end(buf, pos):
    """Offset just past the CBOR item starting at buf[pos] (heads only, no other checks).

    Raises Incomplete when buf ends first, ValueError on a reserved or indefinite head.
    """
    n = len(buf)
    todo = 1
    while todo:
        if pos >= n:
            raise Incomplete()
        b = buf[pos]
        ai = b & 31
        pos += 1
        if ai < 24:
            v = ai
        elif ai < 28:
            k = 1 << (ai - 24)
            if pos + k > n:
                raise Incomplete()
            v = 0
            for j in range(pos, pos + k):
                v = (v << 8) | buf[j]
            pos += k
        else:
            raise ValueError("reserved or indefinite CBOR head")
        todo -= 1
        mt = b >> 5
        if mt == 2 or mt == 3:
            pos += v
        elif mt == 4:
            todo += v
        elif mt == 5:
            todo += 2 * v
        elif mt == 6:
            todo += 1
    if pos > n:
        raise Incomplete()
    return pos


class RtuFramer:
    """Frames from a byte stream. requests=True: what a slave receives, False: a master."""

    def __init__(self, requests, baud=19200):
        self.requests = requests
        self.silence = silence_us(baud)
        self.stats = {"frames": 0, "crc_errors": 0, "garbage": 0, "other": 0}
        self._lo = 0 if requests else 1  # lowest plausible address found by resync
        self._buf = bytearray()
        self._last = 0
        self.reset()

    def reset(self):
        self._buf[0:] = b""
        self._run = 0  # bytes dropped since the last frame or silence
        self._skip = 0  # starts below this one were tried and rejected

    def buffered(self):
        return len(self._buf)

    def _silent(self, now):
        d = now - self._last
        if d < 0:
            d += _TICKS_PERIOD
        return d >= self.silence

    def feed(self, data, now_us):
        out = self.idle(now_us)
        if not data:
            return out
        buf = self._buf
        self._last = now_us
        pos = 0
        n = len(data)
        while pos < n:
            room = _MAX_ADU - len(buf)
            if room == 0:
                # a full buffer whose head starts nothing the content can end: a frame is
                # never longer, so the head byte is not part of one
                self._drop(1)
                room = 1
            k = n - pos if n - pos < room else room
            buf.extend(data if k == n else data[pos:pos + k])
            pos += k
            self._scan(out)
        return out

    def idle(self, now_us):
        out = []
        if (self._buf or self._run) and self._silent(now_us):
            self._flush(out)
        return out

    # --- internals ------------------------------------------------------------------
    def _end_run(self):
        r = self._run
        if r:
            self.stats["crc_errors" if r >= 4 else "garbage"] += 1
            self._run = 0

    def _drop(self, k):
        if k:
            self._buf[0:k] = b""
            self._run += k
            self._skip = self._skip - k if self._skip > k else 0

    def _frame(self, out, n):
        b = self._buf
        self._end_run()
        out.append((b[0], b[1], bytes(b[2:n - 2])))
        self.stats["frames"] += 1
        b[0:n] = b""
        self._skip = 0

    def _flush(self, out):
        b = self._buf
        while b:
            n = len(b)
            if n >= 4 and crc16(b, 0, n) == 0:
                self._frame(out, n)  # a frame only the silence could end (an unlisted FC)
                break
            p, n = self._find(self._skip if self._skip > 1 else 1, True)
            if not n:
                self._drop(len(b))
                break
            self._drop(p)
            self._frame(out, n)
            self._scan(out)
        self._end_run()

    def _scan(self, out):
        b = self._buf
        while b:
            if self._run:  # resynchronising: the first start still in the running
                p, need = self._find(self._skip, False)
                self._drop(p)
                if not need:
                    return
                self._frame(out, need)
                continue
            n = len(b)
            if n < 2:
                return
            need = self._need(b, 0)
            if need < 0 or n < need:
                return  # more bytes needed
            if need:
                if crc16(b, 0, need) == 0:
                    self._frame(out, need)
                else:
                    self._drop(1)  # the CRC fails where the content ends: resynchronise
                continue
            # unknown: only the silence ends this head, but a frame may start behind it
            p, need = self._find(self._skip if self._skip > 1 else 1, False)
            if not need:
                return
            self._drop(p)
            self._frame(out, need)

    def _find(self, p, final):
        # the first start from p on: (p, length) of a frame, or (p, 0) where p is the first
        # candidate still waiting for bytes (or the end of the buffer)
        b = self._buf
        n = len(b)
        k = 0
        while p < n:
            k = self._cand(b, p, n, final)
            if k:
                break
            p += 1
        self._skip = p
        return p, k if k > 0 else 0

    def _cand(self, b, p, n, final):
        # a start found by resynchronisation: its length if a frame starts at b[p], 0 if
        # none can, -1 if its bytes have not all arrived (never when final: the silence)
        w = 0 if final else -1
        a = b[p]
        if a > 247 or a < self._lo:
            return 0
        if n - p < 2:
            return w
        k = self._need(b, p)
        if k == 0 or k > _MAX_ADU:
            return 0
        if k < 0:
            return w
        if b[p + 1] & 0x80:  # an exception answer: 5 bytes, a plausible code
            if n - p < 3:
                return w
            if b[p + 2] == 0 or b[p + 2] > _MAX_EX:
                return 0
        if n - p < k:
            return w
        return k if crc16(b, p, p + k) == 0 else 0

    def _need(self, b, p):
        """ADU length the content announces from b[p]; 0 = it can't say, -1 = need more bytes."""
        fc = b[p + 1]
        if self.requests:
            if fc == 0x04 or fc == 0x41:
                return 8
            if fc == 0x44:
                return 4
            if fc == 0x42 or fc == 0x43:
                return _msg(b, p)
            return 0
        if fc & 0x80:
            return 5
        if fc == 0x42:
            return 8
        if fc == 0x43 or fc == 0x44:
            return _msg(b, p)
        if fc == 0x04 or fc == 0x41:
            if len(b) < p + 3:
                return -1
            if fc == 0x04:
                return 5 + b[p + 2]  # never more than 260: a longer one is pushed out at 256
            return _msg(b, p) if b[p + 2] == 0xD2 else 4
        return 0


def _msg(b, p):
    # the data is one CBOR item (a COSE message): address, FC, item, CRC
    try:
        return cbor_item_end(b, p + 2) - p + 2
    except Incomplete:
        return -1
    except ValueError:
        return 0
