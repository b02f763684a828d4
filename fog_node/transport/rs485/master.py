"""The fog node as Modbus RTU master on an RS485 bus (docs/PROTOCOL.md section 17).

`BusMaster.poll_once()` visits every configured address once, round robin. A visit:
1. GET_BIRTH (0x44) on first contact and after the address did not answer: the birth goes
   into ingest like an MQTT birth, and its dev field says which meter is behind the address.
   A meter the fog already logged readings for is then asked for its acknowledged watermark
   (input registers 4-5); if the meter has not taken our ack yet, the ack is pushed below.
2. GET_READING (0x41) after the meter's cursor, up to `batch` readings; the cursor starts
   at the meter's contiguous logged seq and falls back to it when no ack progress was seen
   for 60 s (by `clock`), as an MQTT meter resends. The readings go into ingest as one
   group, under `node.lock`, with the meter id as the "topic" dev (a meter answering at
   another meter's address is rejected as topic_mismatch, and the address re-read).
3. PUT_ACK (0x42) with the ack ingest produced (after it committed), and then
4. PUT_CMD (0x43) for queued commands, whose results go into ingest; they wait for a
   queued firmware image's PUT_FW (0x45) chunks (docs/PROTOCOL.md section 22).
Serial I/O never holds the node's lock.

Every request gets `timeout_s` (0x04, 0x41, 0x44) or `slow_timeout_s` (0x42, 0x43); a
timeout, a CRC error or a wrong answer is retried once, then the visit ends. Nothing is lost
or duplicated by any of that: a meter forgets a reading only on our ack, ingest logs a
reading once whatever number of times it arrives.

Silences on a host: USB adapters and pseudo-terminals deliver bytes in bursts, and this
thread may not run for a while, so the time between two reads says nothing about the line.
The master therefore tells the framer about a silence only when it *saw* the line quiet
for `gap_s` (an empty read at least that long after the last byte); bytes that arrive
before that are fed without claiming a silence. `gap_s` is at least the 3.5-character time
(default 20 ms, above the 16 ms latency timer of common USB serial adapters). Frames whose
content says where they end (all the answers we expect) never wait for it.

Turnaround: a request leaves at least `turnaround_s` (default 10 ms, never less than the
3.5 characters) after the last byte received, so that the other meters, who hear each
answer too, see the silence after it (a slave that reads its UART late needs more than the
minimum). Silent addresses are logged once, then summarised (silence.py).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fog_node.ingest import REJECTED, Outcome
from fog_node.node import FogNode
from fog_node.ota import FwTransfer
from fog_node.transport.rs485.addresses import check_addresses
from fog_node.transport.rs485.link import Link, SerialLink
from fog_node.transport.rs485.silence import Silences
from meterledger import wire as P
from meterledger.wire import modbus as mb
from meterledger.wire.cbor import ProtocolError
from meterledger.wire.modbus import Frame

log = logging.getLogger("fog_node.transport.rs485.master")

FALLBACK_S = 60.0  # no ack progress for this long: fetch again from the contiguous seq
DEFAULT_GAP_S, DEFAULT_TURNAROUND_S = 0.02, 0.01
_REG_WATERMARK = 4  # input registers 4-5: the meter's acknowledged watermark
FC_PUT_FW = 0x45  # a firmware chunk: sid (8) | offset (u32) | bytes -> received (u32)
FW_PER_VISIT = 8  # chunks per visit, so the other meters keep being polled
# the master's counters, exported as meterledger_fog_rs485_<kind>_total
COUNTER_HELP = {
    "requests": "requests sent (retries included).",
    "answers": "answers received that matched their request (exception answers included).",
    "timeouts": "requests that got no answer in time.",
    "crc_errors": "received frames that failed their CRC (or were cut short) and were dropped.",
    "garbage": "runs of 1-3 stray bytes dropped from the line.",
    "exceptions": "Modbus exception answers.",
    "bad_answers": "frames not answering the request (address, function, shape, stale).",
    "readings": "readings fetched from meters and handed to ingest.",
    "acks_pushed": "acks the meters answered (PUT_ACK).",
    "acks_not_taken": "acks after which a meter reported a watermark below the ack's seq.",
    "commands": "commands sent (PUT_CMD).",
    "results": "command results received and handed to ingest.",
    "births": "births read from meters and handed to ingest.",
    "fw_chunks": "firmware image chunks the meters took (PUT_FW).",
}
_KINDS = tuple(COUNTER_HELP)


def default_timeout_s(baud: int) -> float:
    """0.1 s for the meter to start answering, plus a maximal answer's time on the line."""
    return 0.1 + mb.MAX_ADU * mb.char_us(baud) / 1e6


class CrcError(mb.ModbusError):
    """An answer arrived but did not frame (CRC error, truncated)."""


@dataclass
class _Slot:
    """What the master knows about one address."""

    address: int
    dev: bytes | None = None
    need_birth: bool = True


@dataclass
class _Meter:
    """What the master knows about one meter (by id, wherever it answers)."""

    cursor: int  # readings up to here were fetched
    acked: int  # the highest ack seq ingest produced for it
    progress_at: float  # clock time of the last ack progress (or of the last fallback)
    pending_ack: bytes | None = None
    pending_seq: int = 0
    watermark: int | None = None  # what the meter last said it has acknowledged


def _u32(x: int) -> bytes:
    return struct.pack(">I", x)


def _is_message(data: bytes) -> bool:
    return data[:1] == b"\xd2"


class BusMaster:
    """The fog's Modbus master (module doc). `node` is the running FogNode (its lock, ingest
    and registry are used); `clock` gives Unix seconds (ingest's clock, cursors' timer)."""

    def __init__(self, node: FogNode, url: str, addresses: Sequence[int], *,
                 clock: Callable[[], float], baud: int = 19200, timeout_s: float = 0.0,
                 slow_timeout_s: float = 10.0, batch: int = 32, gap_s: float = DEFAULT_GAP_S,
                 turnaround_s: float = DEFAULT_TURNAROUND_S,
                 link: Callable[[], Link] | None = None) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.node = node
        self.url = url
        self.baud = baud
        self.clock = clock
        self.timeout_s = timeout_s if timeout_s > 0 else default_timeout_s(baud)
        self.slow_timeout_s = slow_timeout_s
        self.batch = batch
        self.slots = [_Slot(a) for a in check_addresses(addresses)]
        self.meters: dict[bytes, _Meter] = {}
        self.counters: Counter[str] = Counter({k: 0 for k in _KINDS})
        self.silences = Silences()  # what the log says of silent addresses
        self.framer = mb.RtuFramer(requests=False, baud=baud)
        self._gap_us = max(self.framer.silence, int(gap_s * 1e6))
        self._turnaround_us = max(self.framer.silence, int(turnaround_s * 1e6))
        self._commands: dict[bytes, deque[bytes]] = {}
        self._fw: dict[bytes, FwTransfer] = {}
        self._cmd_lock = threading.Lock()
        # how the line is (re)opened: pyserial on `url` unless a link factory is given
        self._open_link: Callable[[], Link] = link or (lambda: SerialLink(url, baud))
        self._link: Link | None = None
        self._fed_us = 0  # the framer's timeline (see the module doc)
        self._rx_us = 0  # real time of the last byte read
        self._quiet = True  # the framer was told about the silence since the last byte

    # -- public ----------------------------------------------------------------------------
    @property
    def addresses(self) -> list[int]:
        return [s.address for s in self.slots]

    def device_at(self, address: int) -> bytes | None:
        """The meter id the address answered for (None before its birth was read)."""
        for s in self.slots:
            if s.address == address:
                return s.dev
        raise KeyError(address)

    def queue_command(self, dev: bytes, msg: bytes) -> None:
        """Send a signed command (type 4) to meter `dev` at its next visit; its result goes
        into ingest. A command that does not fit an ADU is refused (ValueError)."""
        if len(msg) > mb.MAX_DATA:
            raise ValueError(f"a {len(msg)}-byte command does not fit an ADU ({mb.MAX_DATA})")
        with self._cmd_lock:
            self._commands.setdefault(bytes(dev), deque()).append(bytes(msg))

    def queued_commands(self, dev: bytes) -> int:
        with self._cmd_lock:
            return len(self._commands.get(dev, ()))

    def queue_firmware(self, dev: bytes, sid: bytes, blob: bytes, size: int = 200) -> None:
        """Send an image to meter `dev` in chunks (fog_node.ota.FwTransfer) before its commands."""
        with self._cmd_lock:
            self._fw[bytes(dev)] = FwTransfer(bytes(dev), bytes(sid), bytes(blob), size)

    def firmware_left(self, dev: bytes) -> int:
        """Bytes of a queued image meter `dev` does not have yet (0: none queued)."""
        job = self._fw.get(dev)
        return 0 if job is None else job.left

    def knows(self, dev: bytes) -> bool:
        """Whether meter `dev` answers on this bus (an address gave its birth)."""
        return any(s.dev == dev for s in self.slots)

    def has_command(self, dev: bytes, msg: bytes) -> bool:
        """Whether this exact command still waits for meter `dev` (not yet answered)."""
        with self._cmd_lock:
            return msg in self._commands.get(dev, ())

    def poll_once(self, stop: threading.Event | None = None) -> int:
        """One round over every address (cut short when `stop` is set); returns how many
        messages went into ingest."""
        self._open()
        fed = 0
        try:
            for slot in self.slots:
                if stop is not None and stop.is_set():
                    break
                fed += self._visit(slot)
            return fed
        except Exception:  # the port itself failed (unplugged adapter ...): reopen next time
            self.close()
            raise

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            try:
                link.close()
            except Exception:  # closing a vanished device may fail; it is closed either way
                log.debug("closing the RS485 port", exc_info=True)

    # -- a visit ---------------------------------------------------------------------------
    def _visit(self, slot: _Slot) -> int:
        """One address: birth if needed, readings, ack, commands. Returns messages ingested."""
        fed = [0]
        try:
            if slot.need_birth or slot.dev is None:
                self._birth(slot, fed)
            if slot.dev is not None and not slot.need_birth:
                m = self._meter(slot.dev)
                self._readings(slot, m, fed)
                if m.pending_ack is not None and not slot.need_birth:
                    self._push_ack(slot, m)
                if not slot.need_birth and self._push_firmware(slot, slot.dev):
                    self._run_commands(slot, slot.dev, fed)
            self.silences.answered(slot.address)
        except mb.ModbusTimeout as e:
            slot.need_birth = True  # it did not answer: read its birth at the next contact
            self.silences.timeout(slot.address, str(e))
        except mb.ModbusError as e:
            log.debug("RS485 address %d: %s", slot.address, e)
        return fed[0]

    def _ingest(self, payloads: list[bytes], dev: bytes | None,
                ) -> tuple[list[Outcome], list[tuple[bytes, bytes]]]:
        with self.node.lock:
            return self.node.ingest.process(payloads, [dev] * len(payloads))

    def _birth(self, slot: _Slot, fed: list[int]) -> None:
        f = self._exchange(slot.address, mb.FC_GET_BIRTH, b"", self.timeout_s, _is_message)
        try:
            m = P.parse(f.data, schema=False)
        except ProtocolError as e:
            self._bad(f"address {slot.address}: birth does not parse: {e}")
            return
        if m.type != P.BIRTH:
            self._bad(f"address {slot.address}: type {m.type} answered to GET_BIRTH")
            return
        self.counters["births"] += 1
        outcomes, _ = self._ingest([f.data], None)
        fed[0] += 1
        if outcomes and outcomes[0].status == REJECTED:
            log.warning("RS485 address %d: birth rejected (%s)", slot.address, outcomes[0].reason)
            return  # read it again at the next visit
        if slot.dev is not None and slot.dev != m.kid:
            log.info("RS485 address %d: meter %s now (was %s)", slot.address, m.kid.hex(),
                     slot.dev.hex())
        slot.dev, slot.need_birth = m.kid, False
        meter = self._meter(m.kid)
        if meter.acked > 0 and meter.pending_ack is None:
            self._check_watermark(slot, meter)

    def _meter(self, dev: bytes) -> _Meter:
        m = self.meters.get(dev)
        if m is None:
            with self.node.lock:
                contiguous = self.node.registry.contiguous_seq(dev)
            m = self.meters[dev] = _Meter(contiguous, contiguous, self.clock())
        return m

    def _check_watermark(self, slot: _Slot, meter: _Meter) -> None:
        """After a (re)contact: does the meter hold readings we logged but it never saw
        acknowledged (our ack lost, or the fog restarted before pushing it)?"""
        try:
            f = self._exchange(slot.address, mb.FC_READ_INPUT,
                               struct.pack(">HH", _REG_WATERMARK, 2), self.timeout_s,
                               lambda d: len(d) == 5 and d[0] == 4)
            hi, lo = mb.registers(f.data)
            meter.watermark = hi << 16 | lo
            if meter.watermark >= meter.acked:
                return
        except mb.ModbusTimeout:
            raise
        except mb.ModbusError:
            pass  # no (usable) register map: push the ack anyway
        self._want_ack(slot, meter)

    def _want_ack(self, slot: _Slot, meter: _Meter) -> None:
        """Push the ack of everything contiguous at this visit."""
        assert slot.dev is not None
        now = int(self.clock())
        with self.node.lock:
            ack = self.node.ingest.ack_for(slot.dev, now)
        if ack is not None:
            meter.pending_ack, meter.pending_seq = ack, P.parse(ack, schema=False).fields[2]
            meter.acked = max(meter.acked, meter.pending_seq)

    def _readings(self, slot: _Slot, m: _Meter, fed: list[int]) -> None:
        dev = slot.dev
        assert dev is not None
        now = self.clock()
        if now - m.progress_at >= FALLBACK_S:
            if m.cursor > m.acked:
                with self.node.lock:
                    contiguous = self.node.registry.contiguous_seq(dev)
                log.info("RS485 meter %s: no ack progress for %.0f s, fetching again after "
                         "seq %d (was %d)", dev.hex(), now - m.progress_at, contiguous, m.cursor)
                m.cursor = contiguous
                if contiguous > m.acked:  # logged meanwhile by other means (MQTT, enrollment)
                    self._want_ack(slot, m)
            m.progress_at = now
        payloads: list[bytes] = []
        error: mb.ModbusError | None = None
        try:
            for _ in range(self.batch):
                f = self._exchange(slot.address, mb.FC_GET_READING, _u32(m.cursor),
                                   self.timeout_s, lambda d: not d or _is_message(d))
                if not f.data:
                    break  # nothing after the cursor
                try:
                    msg = P.parse(f.data, schema=False)
                except ProtocolError as e:
                    payloads.append(f.data)  # ingest counts it by its reason
                    self._bad(f"address {slot.address}: reading does not parse: {e}")
                    break
                if msg.type != P.READING:
                    self._bad(f"address {slot.address}: type {msg.type} answered to GET_READING")
                    break
                seq = msg.fields.get(2)
                if msg.kid != dev:
                    payloads.append(f.data)  # rejected by ingest as topic_mismatch
                    slot.need_birth = True
                    break
                if not isinstance(seq, int) or isinstance(seq, bool) or seq <= m.cursor:
                    self._bad(f"address {slot.address}: seq {seq!r} answered after {m.cursor}")
                    break
                payloads.append(f.data)
                self.counters["readings"] += 1
                m.cursor = seq
        except mb.ModbusError as e:
            error = e
        if payloads:
            outcomes, acks = self._ingest(payloads, dev)
            fed[0] += len(payloads)
            if any(o.reason == "topic_mismatch" for o in outcomes):
                slot.need_birth = True
            for d, ack in acks:
                if d != dev:
                    continue
                seq = P.parse(ack, schema=False).fields[2]
                if seq > m.acked:
                    m.acked, m.progress_at = seq, self.clock()
                m.pending_ack, m.pending_seq = ack, seq
        if error is not None:
            raise error

    def _push_ack(self, slot: _Slot, m: _Meter) -> None:
        ack = m.pending_ack
        assert ack is not None
        f = self._exchange(slot.address, mb.FC_PUT_ACK, ack, self.slow_timeout_s,
                           lambda d: len(d) == 4)
        watermark = int.from_bytes(f.data, "big")
        m.watermark = watermark
        m.pending_ack = None
        self.counters["acks_pushed"] += 1
        if watermark < m.pending_seq:
            self.counters["acks_not_taken"] += 1
            log.warning("RS485 address %d: meter kept watermark %d after our ack of seq %d",
                        slot.address, watermark, m.pending_seq)

    def _push_firmware(self, slot: _Slot, dev: bytes) -> bool:
        """Up to FW_PER_VISIT chunks of a queued image; True when none is left to send."""
        job = self._fw.get(dev)
        for _ in range(FW_PER_VISIT if job is not None and job.left else 0):
            assert job is not None
            try:  # the meter answers its received count
                f = self._exchange(slot.address, FC_PUT_FW, job.frame(), self.slow_timeout_s,
                                   lambda d: len(d) == 4)
                self.counters["fw_chunks"] += job.taken(int.from_bytes(f.data, "big"))
            except mb.ModbusException as e:
                job.give_up(f"the meter answered exception {e.code}")
            if not job.left:
                with self._cmd_lock:
                    if self._fw.get(dev) is job:
                        del self._fw[dev]
                break
        return job is None or not job.left

    def _run_commands(self, slot: _Slot, dev: bytes, fed: list[int]) -> None:
        while True:
            with self._cmd_lock:
                q = self._commands.get(dev)
                if not q:
                    return
                msg = q[0]
            self.counters["commands"] += 1
            try:
                f = self._exchange(slot.address, mb.FC_PUT_CMD, msg, self.slow_timeout_s,
                                   _is_message)
            except mb.ModbusException as e:
                log.warning("RS485 meter %s refused a command: exception %d", dev.hex(), e.code)
                self._pop_command(dev, msg)
                continue
            # anything else propagates: the command stays queued for the next visit (a meter
            # that ran it but whose answer was lost rejects the repeat: cid not greater)
            self._pop_command(dev, msg)
            self.counters["results"] += 1
            self._ingest([f.data], dev)
            fed[0] += 1

    def _pop_command(self, dev: bytes, msg: bytes) -> None:
        with self._cmd_lock:
            q = self._commands.get(dev)
            if q and q[0] == msg:
                q.popleft()

    def _bad(self, why: str) -> None:
        self.counters["bad_answers"] += 1
        log.warning("RS485: %s", why)

    # -- one request, one answer -----------------------------------------------------------
    def _exchange(self, address: int, fc: int, data: bytes, timeout_s: float,
                  valid: Callable[[bytes], bool]) -> Frame:
        """Send a request and return the answer; retried once after a timeout, a CRC error
        or a wrong answer. Raises ModbusException for an exception answer (not retried)."""
        try:
            return self._transact(address, fc, data, timeout_s, valid)
        except mb.ModbusException:
            raise
        except mb.ModbusError:
            return self._transact(address, fc, data, timeout_s, valid)

    def _transact(self, address: int, fc: int, data: bytes, timeout_s: float,
                  valid: Callable[[bytes], bool]) -> Frame:
        request = mb.adu(address, fc, data)
        self._drain()
        self._turnaround()
        self._line().write(request)
        self.counters["requests"] += 1
        crc_before = self.framer.counters["crc_errors"]
        deadline = time.monotonic() + timeout_s
        while True:
            frames = self._receive(deadline)
            wrong: Frame | None = None
            for f in frames:
                if f.address == address and f.fc == fc and valid(f.data):
                    self.counters["answers"] += 1
                    return f
                if f.address == address and f.fc == fc | 0x80:
                    code = mb.exception_code(f)
                    if code is not None:
                        self.counters["answers"] += 1
                        self.counters["exceptions"] += 1
                        raise mb.ModbusException(code)
                self.counters["bad_answers"] += 1  # and look at the rest of what came
                wrong = wrong or f
            if wrong is not None:
                raise mb.ModbusBadAnswer(
                    f"address {address} fc {fc:#04x}: answer from {wrong.address} fc "
                    f"{wrong.fc:#04x} with {len(wrong.data)} data bytes")
            if self.framer.counters["crc_errors"] > crc_before:
                raise CrcError(f"address {address} fc {fc:#04x}: answer did not frame")
            if time.monotonic() >= deadline:
                self._flush()  # what came of an answer is an error, not a timeout
                if self.framer.counters["crc_errors"] > crc_before:
                    raise CrcError(f"address {address} fc {fc:#04x}: answer cut short")
                self.counters["timeouts"] += 1
                raise mb.ModbusTimeout(f"address {address} fc {fc:#04x}: no answer in "
                                       f"{timeout_s:.3f} s")

    # -- the line --------------------------------------------------------------------------
    def _open(self) -> None:
        if self._link is None:
            self._link = self._open_link()
            self.framer.reset()
            self._quiet = True

    def _line(self) -> Link:
        if self._link is None:
            raise mb.ModbusError("the RS485 line is closed")
        return self._link

    def _sync(self) -> None:
        for k in ("crc_errors", "garbage"):
            self.counters[k] = self.framer.counters[k]

    def _feed(self, data: bytes, now_us: int) -> list[Frame]:
        # a silence only when we saw one (idle); otherwise no gap for the framer
        ts = now_us if self._quiet else min(now_us, self._fed_us + self.framer.silence - 1)
        ts = max(ts, self._fed_us)
        frames = self.framer.feed(data, ts)
        self._fed_us, self._rx_us, self._quiet = ts, now_us, False
        self._sync()
        return frames

    def _idle(self, now_us: int) -> list[Frame]:
        if self._quiet or now_us - self._rx_us < self._gap_us:
            return []
        return self._flush()

    def _flush(self) -> list[Frame]:
        """Tell the framer the line is silent now."""
        if self._quiet:
            return []
        ts = self._fed_us + self.framer.silence
        frames = self.framer.idle(ts)
        self._fed_us, self._quiet = ts, True
        self._sync()
        return frames

    def _read(self) -> bytes:
        return self._line().read()

    def _receive(self, deadline: float) -> list[Frame]:
        """Whatever frames the line gives until something arrives or the deadline."""
        data = self._read()
        now_us = time.monotonic_ns() // 1000
        if data:
            return self._feed(data, now_us)
        out = self._idle(now_us)
        if out:
            return out
        wait = min(0.002, deadline - time.monotonic())
        if wait > 0:
            self._line().wait(wait)
        return []

    def _drain(self) -> None:
        """Stale bytes before a request (a late answer, noise): framed and counted."""
        for _ in range(16):  # a line that never stops talking must not stop us
            data = self._read()
            if not data:
                break
            for f in self._feed(data, time.monotonic_ns() // 1000):
                self._stale(f)
        for f in self._flush():
            self._stale(f)

    def _stale(self, f: Frame) -> None:
        self.counters["bad_answers"] += 1
        log.debug("RS485: stale frame from %d fc %#04x", f.address, f.fc)

    def _turnaround(self) -> None:
        """A pause between the last byte received and a request: at least the 3.5-character
        silence Modbus requires, by default 10 ms (module doc)."""
        left = self._rx_us + self._turnaround_us - time.monotonic_ns() // 1000
        if left > 0:
            time.sleep(left / 1e6)
