# A meter source that reads an existing Eastron SDM120/SDM630-style DIN-rail meter as a
# Modbus RTU master on the second UART (SPEC section 6). FC 0x04 input registers hold
# IEEE-754 FLOAT32 values, big endian, high word first:
#   0x0000 voltage V, 0x000C active power W (negative = export), 0x0048/0x004A total
#   import/export kWh (one request of 4 registers reads both).
# MicroPython floats are single precision, so a register never becomes a float here: the
# float32 bits are decoded into mantissa and exponent and scaled with integer arithmetic.
from core import modbus
from core.sources import Sample, SourceError

_LIMIT = 1 << 53  # an energy or power beyond this is a broken meter, not a measurement


def f32_scaled(bits, scale):
    """round(value * scale), half to even and exact, of the float32 with these bits."""
    e = (bits >> 23) & 0xFF
    m = bits & 0x7FFFFF
    if e == 0xFF:
        raise ValueError("NaN or infinity")
    if e:
        m |= 0x800000
    else:
        e = 1  # subnormal
    e -= 150  # value = m * 2**e
    q = m * scale
    if e >= 0:
        q <<= e
    else:
        s = -e
        num = q
        q = num >> s
        r = num - (q << s)
        half = 1 << (s - 1)
        if r > half or (r == half and q & 1):
            q += 1
    return -q if bits >> 31 else q


def _u32(d, i):
    return (d[i] << 24) | (d[i + 1] << 16) | (d[i + 2] << 8) | d[i + 3]


def _host_ms():
    import time

    return int(time.monotonic() * 1000)


def _host_sleep(ms):
    import time

    time.sleep(ms / 1000)


class SdmSource:
    name = "modbus"

    def __init__(self, port, address=1, timeout_ms=200, retries=1, ticks_ms=None,
                 ticks_diff=None, sleep_ms=None, baud=9600, backoff_ms=10000):
        import time

        self.port = port
        self.address = address
        self.timeout_ms = timeout_ms
        self.retries = retries
        self._ticks = ticks_ms or getattr(time, "ticks_ms", None) or _host_ms
        self._diff = ticks_diff or getattr(time, "ticks_diff", None) or (lambda a, b: a - b)
        self._sleep = sleep_ms or getattr(time, "sleep_ms", None) or _host_sleep
        # the answer ends by its content; the silence only clears line noise before it, so
        # it is never taken shorter than at 9600 baud (time is counted in whole ms here)
        self.framer = modbus.RtuFramer(False, baud if baud < 9600 else 9600)
        self.stats = {"requests": 0, "timeouts": 0, "crc_errors": 0, "exceptions": 0, "mismatched": 0}
        self.last = None  # the last good Sample
        # after a failed read the SDM is left alone this long: a dead meter would otherwise
        # cost (retries + 1) timeouts every loop pass, during which the fog bus goes unserved
        self.backoff_ms = backoff_ms
        self._failed_at = None

    def read(self, now):
        if self._failed_at is not None:
            if self._diff(self._ticks(), self._failed_at) < self.backoff_ms:
                self.stats["skipped"] = self.stats.get("skipped", 0) + 1
                raise SourceError("SDM at address " + str(self.address) + " failed recently")
            self._failed_at = None
        try:
            s = self._read()
        except SourceError:
            self._failed_at = self._ticks()
            raise
        self.last = s
        return s

    def _read(self):
        try:
            d = self._regs(0x48, 4)  # the registers first: a silent meter costs one request
            imp = f32_scaled(_u32(d, 1), 1000)
            exp = f32_scaled(_u32(d, 5), 1000)
            v = f32_scaled(_u32(self._regs(0x00, 2), 1), 10)
            p = f32_scaled(_u32(self._regs(0x0C, 2), 1), 1)
        except ValueError as e:
            raise SourceError("SDM register: " + str(e))
        if not (0 <= imp < _LIMIT and 0 <= exp < _LIMIT and -_LIMIT < p < _LIMIT):
            raise SourceError("SDM register out of range")
        if not 0 <= v < 0xFFFF:
            raise SourceError("SDM voltage out of range")
        return Sample(imp, exp, v, p if p > 0 else 0, -p if p < 0 else 0)

    def _regs(self, start, count):
        why = ""
        for _ in range(self.retries + 1):
            got = self._transact(start, count)
            if not isinstance(got, str):
                return got
            why = got
        raise SourceError("SDM at address " + str(self.address) + ": " + why)

    def _transact(self, start, count):
        """The answer's data (byte count + registers), or why there is none (str)."""
        port = self.port
        fr = self.framer
        while port.any():  # a late answer to an earlier request must not pass for this one
            if not port.read(port.any()):
                break
        fr.reset()
        crc0 = fr.stats["crc_errors"] + fr.stats["garbage"]
        port.write(modbus.adu(self.address, modbus.FC_READ_INPUT,
                              bytes((start >> 8, start & 0xFF, 0, count))))
        self.stats["requests"] += 1
        t0 = self._ticks()
        while True:
            n = port.any()
            data = port.read(n) if n else None
            us = self._diff(self._ticks(), t0) * 1000
            for a, fc, d in fr.feed(data, us) if data else fr.idle(us):
                if a != self.address:
                    fr.stats["other"] += 1
                elif fc == modbus.FC_READ_INPUT | 0x80:
                    self.stats["exceptions"] += 1
                    return "exception " + str(d[0] if d else 0)
                elif fc == modbus.FC_READ_INPUT and len(d) == 1 + 2 * count and d[0] == 2 * count:
                    return d
                else:
                    self.stats["mismatched"] += 1
                    return "mismatched answer"
            if data:
                continue
            if us > self.timeout_ms * 1000:  # whole ms ticks: strictly more is at least
                fr.idle(us + fr.silence)  # count what is left
                if fr.stats["crc_errors"] + fr.stats["garbage"] > crc0:
                    self.stats["crc_errors"] += 1
                    return "bad CRC"
                self.stats["timeouts"] += 1
                return "no answer"
            self._sleep(1)

    def state(self):
        return {}  # the SDM keeps its own registers

    def restore(self, st):
        pass
