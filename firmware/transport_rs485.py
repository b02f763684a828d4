# The meter as a Modbus RTU slave on the fog node's RS485 bus (SPEC section 6, docs/PROTOCOL.md
# section 17). A pull transport: the fog (master) fetches readings (0x41), pushes acks (0x42)
# and commands (0x43), reads the birth (0x44) and live registers (0x04), and writes
# firmware image chunks (0x45, docs/PROTOCOL.md section 22: data = one chunk frame, the
# answer the u32 count received); the meter never sends unasked. Requests are answered inside poll()/serve_for(), so the app's step() gets
# no acks or commands from poll() and never pushes readings (connected() is False).
import struct

from core import modbus
from core.compat import const

_MAP_WORDS = const(27)
_FC_PUT_FW = const(0x45)  # a firmware image chunk (docs/PROTOCOL.md section 22)
_GRACE_US = const(300000)  # serve_for() may overrun this long to finish a frame in flight
_PERIOD = const(0x40000000)  # MicroPython ticks_us wraps at 2**30
_MAP = ">HHIIIIHIIHIIHHH8s"  # docs/PROTOCOL.md section 17, registers 0..26
_M32 = 0xFFFFFFFF


def _elapsed(now, then):
    d = now - then
    return d + _PERIOD if d < 0 else d


def _sat(v, top=_M32):
    return 0 if v < 0 else (top if v > top else v)


def _one_message(d):
    try:
        return len(d) > 0 and d[0] == 0xD2 and modbus.cbor_item_end(d, 0) == len(d)
    except (ValueError, modbus.Incomplete):
        return False


class Rs485Slave:
    def __init__(self, port, address, baud=19200, ticks_us=None, sleep_ms=None):
        if not 1 <= address <= 247:
            raise ValueError("Modbus slave address must be 1..247")
        import time

        self.port = port
        self.address = address
        self.framer = modbus.RtuFramer(True, baud)
        self.stats = self.framer.stats  # frames, crc_errors, garbage, other + the ones below
        for k in ("requests", "answers", "broadcast", "exceptions", "ex_1", "ex_2", "ex_3", "ex_4",
                  "tx_errors"):
            self.stats[k] = 0
        # real time, never the meter's clock (which a host may run compressed)
        self._ticks = ticks_us or getattr(time, "ticks_us", None) or (lambda: time.monotonic_ns() // 1000)
        self._sleep = sleep_ms or getattr(time, "sleep_ms", None) or (lambda ms: time.sleep(ms / 1000))
        # the framer's timeline (see _poll): stamp of the last read, of the last time the port
        # was seen empty, and the real time of the last read
        self._v_read = 0
        self._v_quiet = 0
        self._t_read = self._ticks()
        self.app = None
        self.birth = None
        self.dev_hex = None
        self.last_result = None
        self._in_cmd = False  # a 0x43 is being handled: its result is the answer

    # --- the app's transport interface ------------------------------------------------
    def bind(self, app):
        self.app = app
        self.birth = None

    def connect(self, dev_hex, birth):
        self.dev_hex = dev_hex
        self.birth = birth  # signed at this boot; the boot counter is current
        return True

    def connected(self):
        return False  # nothing is pushed: the master pulls

    def where(self):
        return "rs485 address " + str(self.address)

    def send_readings(self, msgs):
        return False

    def send_result(self, msg):
        self.last_result = msg
        if self._in_cmd:
            # answer now: app.command() reboots right after this for a "reboot" command
            self._in_cmd = False
            try:
                self._send(modbus.FC_PUT_CMD, msg)
            except ValueError:  # longer than an ADU holds
                self._exception(modbus.FC_PUT_CMD, modbus.EX_DEVICE_FAILURE)

    def poll(self):
        self._poll()
        return []

    def serve_for(self, ms):
        """Answer requests for ms milliseconds (longer while a frame is half received)."""
        t0 = self._ticks()
        limit = ms * 1000
        app = self.app
        while True:
            got = self._poll()
            if app is not None:
                app.board.watchdog_feed()
                show = getattr(app, "show_status", None)
                if show is not None:
                    show()  # the LED patterns blink faster than the app's steps
            el = _elapsed(self._ticks(), t0)
            if el >= limit and (not self.framer.buffered() or el >= limit + _GRACE_US):
                return
            if not got:
                self._sleep(1)

    def close(self):
        c = getattr(self.port, "close", None)
        if c is not None:
            c()

    # --- requests -----------------------------------------------------------------------
    def _poll(self):
        # Silences are judged on a timeline that counts only the quiet that was seen: bytes
        # found waiting are stamped with the moment the port was last seen empty, and the
        # quiet after them counts from when they were read. Stamping each read with the time
        # of the read would turn any delay of this loop (a busy app step, a loaded host, a
        # UART handing over a frame in two parts) into a silence inside a frame, which
        # throws the frame away. A real silence is seen as at least what it was minus one
        # pass of the loop.
        port = self.port
        n = port.any()
        data = port.read(n) if n else None
        fr = self.framer
        now = self._ticks()
        if data:
            self._v_read = self._v_quiet
            self._t_read = now
            frames = fr.feed(data, self._v_read)
        else:
            self._v_quiet = (self._v_read + _elapsed(now, self._t_read)) % _PERIOD
            frames = fr.idle(self._v_quiet)
        for a, fc, d in frames:
            self._request(a, fc, d)
        return bool(data)

    def _request(self, a, fc, d):
        st = self.stats
        if a == 0:
            st["broadcast"] += 1  # nothing here is meant for every meter at once
            return
        if a != self.address:
            st["other"] += 1
            return
        st["requests"] += 1
        try:
            ans = self._answer(fc, d)
        except Exception:  # noqa: BLE001  a failure while answering is the master's to know
            ans = modbus.EX_DEVICE_FAILURE
        if ans is None:
            return  # answered already (send_result)
        if isinstance(ans, int):
            self._exception(fc, ans)
        else:
            try:
                self._send(fc, ans)
            except ValueError:  # longer than an ADU holds
                self._exception(fc, modbus.EX_DEVICE_FAILURE)

    def _answer(self, fc, d):
        app = self.app
        if fc == modbus.FC_GET_READING:
            if len(d) != 4:
                return modbus.EX_ILLEGAL_VALUE
            got = app.meter.pending(struct.unpack(">I", d)[0], 1)
            return got[0][1] if got else b""
        if fc == modbus.FC_GET_BIRTH:
            if d:
                return modbus.EX_ILLEGAL_VALUE
            if self.birth is None:
                self.birth = app.meter.birth()
            return self.birth
        if fc == modbus.FC_READ_INPUT:
            if len(d) != 4:
                return modbus.EX_ILLEGAL_VALUE
            start, count = struct.unpack(">HH", d)
            if not 1 <= count <= 125 or start + count > _MAP_WORDS:
                return modbus.EX_ILLEGAL_ADDRESS
            return bytes((2 * count,)) + self._registers()[2 * start:2 * (start + count)]
        if fc == modbus.FC_PUT_ACK or fc == modbus.FC_PUT_CMD:
            if not _one_message(d):
                return modbus.EX_ILLEGAL_VALUE
            if fc == modbus.FC_PUT_ACK:
                ack = getattr(app, "ack", None)
                if ack is not None:
                    ack(d)  # the app's: console line, commits an image on trial
                else:
                    app.meter.handle_ack(d)
                return struct.pack(">I", app.meter.spool.acked)
            self._in_cmd = True
            try:
                result = app.command(d)
            except Exception:
                if self._in_cmd:  # failed before its result was answered
                    self._in_cmd = False
                    raise
                return None
            pending = self._in_cmd
            self._in_cmd = False
            return result if pending else None
        if fc == _FC_PUT_FW:
            take = getattr(app, "fw_chunk", None)
            if take is None or len(d) < 12:
                return modbus.EX_ILLEGAL_FUNCTION if take is None else modbus.EX_ILLEGAL_VALUE
            return struct.pack(">I", take(d))
        return modbus.EX_ILLEGAL_FUNCTION

    def _write(self, frame):
        try:
            self.port.write(frame)
        except OSError:  # the master will time out and ask again
            self.stats["tx_errors"] += 1

    def _send(self, fc, data):
        self._write(modbus.adu(self.address, fc, data))
        self.stats["answers"] += 1

    def _exception(self, fc, code):
        st = self.stats
        st["exceptions"] += 1
        st["ex_" + str(code)] += 1
        self._write(modbus.adu(self.address, (fc | 0x80) & 0xFF, bytes((code,))))

    def _registers(self):
        m = self.app.meter
        st = m.st
        eng = m.engine
        s = m.last_good
        flags = eng.flags
        if not eng.synced:
            flags |= 0x01  # CLOCK_UNSYNCED
        elif eng.observed_from is not None and eng.observed_from > eng.next_t - eng.dur:
            flags |= 0x04  # PARTIAL
        # the relay as driven (commanded on and not tripped by the limit guard)
        relay = 1 if getattr(self.app, "relay_closed", st["relay"]) else 0
        if m.last_sample is None and s is not None:
            flags |= 0x20  # SOURCE_ERROR: this pass's read failed (after good ones)
        if s is not None:
            imp, exp, v, pi, pe = s.imp, s.exp, s.v, s.p_imp, s.p_exp
        else:
            imp, exp, v, pi, pe = st.get("imp") or 0, st.get("exp") or 0, None, 0, 0
        return struct.pack(_MAP, 1, flags & 0xFFFF, st["seq"] & _M32, m.spool.acked & _M32,
                           imp & _M32, exp & _M32, 0xFFFF if v is None else _sat(v, 0xFFFE),
                           _sat(pi), _sat(pe), relay, _sat(st["limit"]),
                           st["last_t"] & _M32, _sat(eng.dur, 0xFFFF), _sat(len(m.spool), 0xFFFF),
                           st["boot"] & 0xFFFF, m.id)
