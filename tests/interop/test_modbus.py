"""Our Modbus RTU against pymodbus, an independent implementation (a dev dependency).

Both directions, over real pseudo-terminals (marked `hil`):

- pymodbus's ModbusSerialClient (RTU framer, sync) as the master of the SDM emulator
  (hardware/sdm_emulator.py) and of the firmware meter's slave (transport_rs485.py on the
  host board, built with virtual_meter.make_meter), including the meter's own function
  codes 0x41 GET_READING and 0x44 GET_BIRTH sent as pymodbus custom PDUs;
- a pymodbus RTU server (its SimDevice/SimData datastore, FLOAT32 input registers at the
  Eastron SDM addresses) read by the firmware's SdmSource (core/sdm.py) and by
  meterledger.wire.modbus's framer;

and without a line, pymodbus's FramerRTU decoding the ADUs we build and our framers
framing the ADUs pymodbus builds. Values are decoded with pymodbus's own helpers
(convert_from_registers) and expectations computed independently (struct, fractions).
Timeouts are generous and timing is never asserted.
"""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import cbor2
import pytest
import serial
from pymodbus.client import ModbusSerialClient
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hardware.firmware import module
from hardware.rs485_bus import Rs485Bus
from hardware.sdm_emulator import REGISTERS, LoadProfile, SdmEmulator
from hardware.virtual_meter import VirtualMeter, make_meter
from meterledger import wire as P
from meterledger.wire import modbus as mb
from tests.kit.fogkit import ManualClock

T0 = 1_800_000_000
FOG = P.SigningKey.from_int(0xF06_F06)
KEY = P.SigningKey.from_int(0x51A7E)
TIMEOUT = 30.0  # seconds a pymodbus client waits for an answer: a limit on a hang, no margin
F32 = ModbusSerialClient.DATATYPE.FLOAT32
U16 = ModbusSerialClient.DATATYPE.UINT16
U32 = ModbusSerialClient.DATATYPE.UINT32
U64 = ModbusSerialClient.DATATYPE.UINT64


def f32(x: float) -> float:
    """x rounded to IEEE-754 single precision (exactly representable as a Python float)."""
    value: float = struct.unpack(">f", struct.pack(">f", x))[0]
    return value


def scaled(x: float, scale: int) -> int:
    """round(float32(x) * scale), half to even, computed exactly from the float32 bits."""
    bits = struct.unpack(">I", struct.pack(">f", x))[0]
    exact = Fraction(struct.unpack(">f", struct.pack(">I", bits))[0])  # float32 -> exact
    return round(exact * scale)


def decode(regs: Sequence[int], kind: ModbusSerialClient.DATATYPE) -> Any:
    """pymodbus's own conversion, big-endian word order (high word first)."""
    return ModbusSerialClient.convert_from_registers(list(regs), kind, word_order="big")


class Trace:
    """The raw bytes a pymodbus client sends and receives (its trace_packet hook)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.received: list[bytes] = []

    def __call__(self, sending: bool, data: bytes) -> bytes:
        (self.sent if sending else self.received).append(bytes(data))
        return data


def client_on(path: str, baud: int, trace: Trace | None = None) -> ModbusSerialClient:
    c = ModbusSerialClient(path, framer=FramerType.RTU, baudrate=baud, timeout=TIMEOUT,
                           retries=2, trace_packet=trace)
    assert c.connect(), f"pymodbus could not open {path}"
    return c


def exception_of(rr: ModbusPDU, fc: int) -> int:
    """The exception code of a pymodbus exception response to function code fc."""
    assert isinstance(rr, ExceptionResponse), rr
    assert rr.isError() and rr.function_code == fc | 0x80
    return rr.exception_code


# --- pymodbus custom PDUs for the meter's own function codes (docs/PROTOCOL.md §17) ---------
def cbor_item_len(data: bytes) -> int | None:
    """Length of the one CBOR item at the start of data, found by cbor2 (not by our
    cbor_item_end); None while it is incomplete."""
    fp = io.BytesIO(data)
    try:
        cbor2.CBORDecoder(fp).decode()
    except cbor2.CBORDecodeEOF:
        return None
    return fp.tell()


class GetBirthRequest(ModbusPDU):
    """0x44 GET_BIRTH: empty data."""

    function_code = mb.FC_GET_BIRTH
    rtu_frame_size = 4


class GetReadingRequest(ModbusPDU):
    """0x41 GET_READING: data = after_seq, u32 big endian."""

    function_code = mb.FC_GET_READING
    rtu_frame_size = 8

    def __init__(self, after: int = 0, dev_id: int = 0, transaction_id: int = 0) -> None:
        super().__init__(dev_id=dev_id, transaction_id=transaction_id)
        self.after = after

    def encode(self) -> bytes:
        return struct.pack(">I", self.after)

    def decode(self, data: bytes) -> None:
        (self.after,) = struct.unpack(">I", data[:4])


class MessageResponse(ModbusPDU):
    """An answer whose data is one COSE message: its RTU length follows from the CBOR."""

    def __init__(self, message: bytes = b"", dev_id: int = 0, transaction_id: int = 0) -> None:
        super().__init__(dev_id=dev_id, transaction_id=transaction_id)
        self.message = message

    def encode(self) -> bytes:
        return self.message

    def decode(self, data: bytes) -> None:
        self.message = bytes(data)

    @classmethod
    def calculateRtuFrameSize(cls, data: bytes) -> int:
        n = cbor_item_len(data[2:])
        return 0 if n is None else 2 + n + 2  # 0: pymodbus waits for more bytes


class GetBirthResponse(MessageResponse):
    function_code = mb.FC_GET_BIRTH


class GetReadingResponse(MessageResponse):
    """A reading (data starts with 0xD2, the tag 18 head), or nothing (a 4-byte ADU)."""

    function_code = mb.FC_GET_READING

    @classmethod
    def calculateRtuFrameSize(cls, data: bytes) -> int:
        if len(data) < 3:
            return 0
        if data[2] != mb.COSE_TAG_HEAD:
            return 4
        return super().calculateRtuFrameSize(data)


def pymodbus_frame(raw: bytes, *, response: bool,
                   custom: Sequence[type[ModbusPDU]] = ()) -> ModbusPDU | None:
    """What pymodbus's FramerRTU makes of raw bytes (a client decodes responses, a server
    requests); None when it finds no frame."""
    decoder = DecodePDU(is_server=not response)
    for cls in custom:
        decoder.register(cls)
    _used, pdu = FramerRTU(decoder).handleFrame(raw, 0, 0)
    return pdu


def pymodbus_build(pdu: ModbusPDU) -> bytes:
    return FramerRTU(DecodePDU(False)).buildFrame(pdu)


def reading_msg(seq: int) -> bytes:
    return P.sign1(KEY, P.reading(KEY.id, seq, T0, 900, 1000 + seq, 7, 0, bytes(32)))


# --- ADUs on raw bytes, both ways (no line) ---------------------------------------------------
def test_pymodbus_builds_our_request_bytes_and_frames_ours():
    for dev, start, count in ((1, 0, 2), (3, 0x48, 4), (247, 0x0156, 2), (9, 0, 27)):
        ours = mb.read_input_registers(dev, start, count)
        theirs = pymodbus_build(ReadInputRegistersRequest(address=start, count=count, dev_id=dev))
        assert theirs == ours
        pdu = pymodbus_frame(ours, response=False)
        assert isinstance(pdu, ReadInputRegistersRequest)
        assert (pdu.dev_id, pdu.address, pdu.count) == (dev, start, count)
    # the meter's own requests, as pymodbus custom PDUs
    assert pymodbus_build(GetBirthRequest(dev_id=9)) == mb.adu(9, 0x44)
    assert pymodbus_build(GetReadingRequest(41, dev_id=9)) == mb.adu(9, 0x41, struct.pack(">I", 41))
    fw = module("core.modbus")
    assert fw.adu(9, 0x44) == mb.adu(9, 0x44)
    pdu = pymodbus_frame(mb.adu(9, 0x41, struct.pack(">I", 41)), response=False,
                         custom=[GetReadingRequest])
    assert isinstance(pdu, GetReadingRequest) and (pdu.dev_id, pdu.after) == (9, 41)


class NullPort:
    in_waiting = 0

    def read(self, size: int = 1, /) -> bytes:
        return b""

    def write(self, data: bytes, /) -> int:
        return len(data)


def test_pymodbus_decodes_the_emulators_answers_and_we_frame_pymodbus_answers():
    emu = SdmEmulator(NullPort(), 3, clock=lambda: T0, import_kwh=12345.678, export_kwh=0.0625,
                      voltage=231.7, profile=LoadProfile.constant(-1234.5))
    vals = emu.values()
    ans = emu.answer(mb.Frame(3, 4, struct.pack(">HH", 0x48, 4)))
    assert ans is not None
    pdu = pymodbus_frame(ans, response=True)
    assert isinstance(pdu, ReadInputRegistersResponse) and pdu.dev_id == 3
    assert decode(pdu.registers, F32) == [f32(vals["import_kwh"]), f32(vals["export_kwh"])]
    # pymodbus builds the same answer bytes from the same registers; our framer frames it
    theirs = pymodbus_build(ReadInputRegistersResponse(registers=list(pdu.registers), dev_id=3))
    assert theirs == ans
    assert mb.RtuFramer(requests=False).feed(theirs, 0) == [mb.Frame(3, 4, ans[2:-2])]
    assert module("core.modbus").RtuFramer(False).feed(theirs, 0) == [(3, 4, ans[2:-2])]
    # exceptions, both ways
    exc = emu.answer(mb.Frame(3, 4, struct.pack(">HH", 0x02, 2)))
    assert exc == mb.adu(3, 0x84, b"\x02")
    pdu = pymodbus_frame(exc, response=True)
    assert isinstance(pdu, ExceptionResponse) and exception_of(pdu, 4) == 2
    theirs = pymodbus_build(ExceptionResponse(0x03, 1, device_id=3))
    assert theirs == mb.adu(3, 0x83, b"\x01") == emu.answer(mb.Frame(3, 3, bytes(4)))
    assert mb.exception_code(mb.RtuFramer(requests=False).feed(theirs, 0)[0]) == 1


def test_pymodbus_frames_our_message_answers():
    """0x44 and 0x41 answers built by meterledger.wire.modbus and core/modbus.py: pymodbus's
    FramerRTU (with the custom PDUs) finds the frame and its CRC check accepts it."""
    fw = module("core.modbus")
    for seq in (1, 77, 2**32 - 1):
        msg = reading_msg(seq)
        for fc, cls in ((0x44, GetBirthResponse), (0x41, GetReadingResponse)):
            raw = mb.adu(9, fc, msg)
            assert fw.adu(9, fc, msg) == raw
            assert FramerRTU.check_CRC(raw[:-2], int.from_bytes(raw[-2:], "big"))
            pdu = pymodbus_frame(raw, response=True, custom=[cls])
            assert isinstance(pdu, cls) and (pdu.dev_id, pdu.message) == (9, msg)
            # pymodbus builds the same bytes from the message, and our framers frame them
            assert pymodbus_build(cls(msg, dev_id=9)) == raw
            assert mb.RtuFramer(requests=False).feed(raw, 0) == [mb.Frame(9, fc, msg)]
            # a corrupted CRC: pymodbus rejects it too
            bad = raw[:-1] + bytes((raw[-1] ^ 0x20,))
            assert pymodbus_frame(bad, response=True, custom=[cls]) is None
    # the empty GET_READING answer (nothing newer): 4 bytes, when its CRC's low byte is no
    # 0xD2 (that one case is framed at the silence, docs/PROTOCOL.md section 17)
    for address in (1, 9, 247):
        raw = mb.adu(address, 0x41)
        assert raw[2] != mb.COSE_TAG_HEAD
        pdu = pymodbus_frame(raw, response=True, custom=[GetReadingResponse])
        assert isinstance(pdu, GetReadingResponse) and (pdu.dev_id, pdu.message) == (address, b"")


def test_the_two_addresses_whose_empty_get_reading_answer_needs_the_silence():
    """At addresses 56 and 59 the empty 0x41 answer's CRC starts with 0xD2, so by content
    it looks like the start of a message. pymodbus's framer knows no silence (it frames by
    content only), so a pymodbus master with these custom PDUs waits for more bytes and
    times out; ours ends the frame at the 3.5-character silence (docs/PROTOCOL.md §17)."""
    assert [a for a in range(1, 248) if mb.adu(a, 0x41)[2] == mb.COSE_TAG_HEAD] == [56, 59]
    for address in (56, 59):
        raw = mb.adu(address, 0x41)
        assert pymodbus_frame(raw, response=True, custom=[GetReadingResponse]) is None
        fr = mb.RtuFramer(requests=False)
        assert fr.feed(raw, 0) == []
        assert fr.idle(mb.silence_us(19200)) == [mb.Frame(address, 0x41, b"")]


# --- 1. pymodbus's client against the SDM emulator ------------------------------------------
@pytest.mark.hil
def test_pymodbus_client_reads_the_sdm_emulator():
    emu, path = SdmEmulator.on_pty(3, clock=lambda: T0, import_kwh=12345.678,
                                   export_kwh=98765.4321, voltage=231.7, frequency=49.98,
                                   profile=LoadProfile.constant(1500.25), baud=9600)
    trace = Trace()
    with emu:
        client = client_on(path, 9600, trace)
        try:
            vals = emu.values()  # the clock stands still: the values do not move
            for reg, name in REGISTERS.items():
                rr = client.read_input_registers(reg, count=2, device_id=3)
                assert not rr.isError(), (name, rr)
                assert decode(rr.registers, F32) == f32(vals[name]), name
            rr = client.read_input_registers(0x48, count=4, device_id=3)
            assert decode(rr.registers, F32) == [f32(12345.678), f32(98765.4321)]
            assert decode(rr.registers, F32) != [12345.678, 98765.4321]  # float32 rounded
            # the bytes pymodbus sent are ours; the answer it got is the one we build
            assert trace.sent[-1] == mb.read_input_registers(3, 0x48, 4)
            words = [w for v in (12345.678, 98765.4321) for w in mb.float32_words(v)]
            assert trace.received[-1] == mb.adu(3, 4, bytes([8]) + struct.pack(">4H", *words))
            # outside the map: exception 2 (illegal data address)
            for start, count in ((0x0002, 2), (0x0001, 2), (0x0048, 6), (0x0156, 4), (0xFFFF, 1)):
                rr = client.read_input_registers(start, count=count, device_id=3)
                assert exception_of(rr, 0x04) == 2, (start, count)
            # a function code the meter does not have: exception 1 (illegal function)
            assert exception_of(client.read_holding_registers(0, count=2, device_id=3), 0x03) == 1
            assert exception_of(client.write_register(0, 1, device_id=3), 0x06) == 1
            assert trace.received[-1] == mb.adu(3, 0x86, b"\x01")
        finally:
            client.close()
    c = emu.counters
    assert c["exception_0x02"] == 5 and c["exception_0x01"] == 2
    assert c["reads"] == len(REGISTERS) + 1 and c["rx_crc_errors"] == 0


# --- 2. and 4. pymodbus's client against the firmware meter's slave -------------------------
class MeterLoop:
    """The meter's main loop answering the bus in a thread (as a board does between its
    interval work)."""

    def __init__(self, vm: VirtualMeter) -> None:
        self.vm = vm
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="meter", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.vm.app.transport.poll()
            time.sleep(0.0005)

    def __enter__(self) -> MeterLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


ADDR = 9


@pytest.fixture
def meter_on_bus(tmp_path: Path) -> Iterator[tuple[VirtualMeter, str]]:
    """A firmware meter (RS485 slave at ADDR, 19200 baud) on one end of an emulated line,
    three readings in its spool; yields it and the line's other end for a master."""
    with Rs485Bus(2, 19200) as line:
        clock: Any = ManualClock(T0 - 30)  # make_meter takes any clock with now(), ticks_ms()
        cfg = {"fog": FOG.id.hex(), "fog_pub": FOG.public_key.raw.hex(), "source": "sim",
               "dur": 60, "transport": "rs485", "rs485_address": ADDR,
               "rs485_port": line.paths[1], "rs485_baud": 19200}
        vm = make_meter(0, tmp_path / "meter", clock, cfg)
        for _ in range(20):
            clock.advance(10)
            vm.app.step()
        assert vm.app.meter.st["seq"] == 3
        try:
            yield vm, line.paths[0]
        finally:
            vm.app.transport.close()


@pytest.mark.hil
def test_pymodbus_client_reads_the_meters_register_map(meter_on_bus):
    vm, path = meter_on_bus
    m = vm.app.meter
    trace = Trace()
    with MeterLoop(vm):
        client = client_on(path, 19200, trace)
        try:
            rr = client.read_input_registers(0, count=27, device_id=ADDR)
            assert not rr.isError(), rr
            regs = rr.registers
            assert len(regs) == 27
            assert trace.sent[-1] == mb.read_input_registers(ADDR, 0, 27)
            # a window of the map is the same words
            rr2 = client.read_input_registers(23, count=4, device_id=ADDR)
            assert list(rr2.registers) == list(regs[23:27])
            # past the end: exception 2
            for start, count in ((26, 2), (27, 1), (0, 28), (0, 125), (1000, 1)):
                rr = client.read_input_registers(start, count=count, device_id=ADDR)
                assert exception_of(rr, 0x04) == 2, (start, count)
            # no such function code at the meter (framed there at the silence): exception 1
            assert exception_of(client.read_holding_registers(0, count=1, device_id=ADDR),
                                0x03) == 1
        finally:
            client.close()
    src = m.source
    assert decode(regs[0:1], U16) == 1  # map version
    assert decode(regs[2:4], U32) == m.st["seq"] == 3
    assert decode(regs[4:6], U32) == m.spool.acked == 0
    assert decode(regs[6:8], U32) == src.imp_mwh // 1000
    assert decode(regs[8:10], U32) == src.exp_mwh // 1000
    assert src.imp_mwh + src.exp_mwh >= 1000  # at 08:00 UTC the sim household exports
    p = src.power(src.last_t)  # the last sample's power, as the meter keeps it
    assert decode(regs[11:13], U32) == (int(p) if p > 0 else 0)
    assert decode(regs[13:15], U32) == (int(-p) if p < 0 else 0)
    assert decode(regs[15:16], U16) == 1  # relay closed
    assert decode(regs[18:20], U32) == m.st["last_t"]
    assert decode(regs[20:21], U16) == 60  # interval length
    assert decode(regs[21:22], U16) == len(m.spool) == 3
    assert decode(regs[22:23], U16) == m.st["boot"]
    assert int(decode(regs[23:27], U64)).to_bytes(8, "big") == m.id
    st = vm.app.transport.stats
    assert st["ex_2"] == 5 and st["ex_1"] == 1 and st["crc_errors"] == 0


@pytest.mark.hil
def test_pymodbus_custom_pdus_get_the_birth_and_readings(meter_on_bus):
    """0x44 and 0x41 as pymodbus custom PDUs (ModbusPDU subclasses registered with the
    client): the answers' length comes from their CBOR, found by cbor2."""
    vm, path = meter_on_bus
    m = vm.app.meter
    pub = P.PublicKey(m.key.pub)
    with MeterLoop(vm):
        client = client_on(path, 19200)
        client.register(GetBirthResponse)
        client.register(GetReadingResponse)
        try:
            rr = client.execute(False, GetBirthRequest(dev_id=ADDR))
            assert isinstance(rr, GetBirthResponse) and rr.dev_id == ADDR, rr
            birth = rr.message
            readings = []
            for after in range(4):
                rr = client.execute(False, GetReadingRequest(after, dev_id=ADDR))
                assert isinstance(rr, GetReadingResponse) and rr.dev_id == ADDR, rr
                readings.append(rr.message)
        finally:
            client.close()
    assert birth == vm.app.transport.birth
    msg = P.parse(birth)
    assert msg.type == P.BIRTH and msg.kid == m.id == pub.id
    assert P.verify(birth, pub).fields[1] == m.id
    assert readings[3] == b""  # nothing after seq 3
    for seq, raw in enumerate(readings[:3], start=1):
        assert raw == m.spool.get(seq)
        assert P.verify(raw, pub).fields[2] == seq
    assert vm.app.transport.stats["crc_errors"] == 0


# --- 3. a pymodbus server read by the firmware's SdmSource and by meterledger.wire.modbus ------------
class PymodbusServer:
    """pymodbus's ModbusSerialServer on a serial port (a device path is a pyserial URL), in
    its own thread and event loop; stop() shuts it down and joins the thread."""

    def __init__(self, devices: list[SimDevice], port: str, baud: int) -> None:
        self.devices = devices
        self.port = port
        self.baud = baud
        self.server: ModbusSerialServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pymodbus-server", daemon=True)

    def _run(self) -> None:
        async def serve() -> None:
            self.server = ModbusSerialServer(self.devices, framer=FramerType.RTU,
                                             port=self.port, baudrate=self.baud)
            await self.server.serve_forever(background=True)  # returns once listening
            self.loop = asyncio.get_running_loop()
            self._ready.set()
            await self.server.serving

        try:
            asyncio.run(serve())
        except BaseException as e:  # reported by start()
            self.error = e
            self._ready.set()

    def start(self) -> PymodbusServer:
        self._thread.start()
        assert self._ready.wait(30) and self.error is None, self.error
        return self

    def stop(self) -> None:
        if self.server is not None and self.loop is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(30)
        self._thread.join(30)
        assert not self._thread.is_alive()

    def __enter__(self) -> PymodbusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sdm_device(dev_id: int, volts: float, watts: float, imp_kwh: float, exp_kwh: float) -> SimDevice:
    return SimDevice(dev_id, simdata=[
        SimData(0x0000, values=volts, datatype=DataType.FLOAT32),
        SimData(0x000C, values=watts, datatype=DataType.FLOAT32),
        SimData(0x0048, values=[imp_kwh, exp_kwh], datatype=DataType.FLOAT32),
    ])


# two SDM-style meters on one line, served by pymodbus
METERS = {
    5: dict(volts=231.7, watts=1500.25, imp_kwh=12345.678, exp_kwh=0.0625),
    6: dict(volts=229.96, watts=-1234.5, imp_kwh=98765.4321, exp_kwh=4321.0987),
}


def read_answer(port: Any, timeout: float = TIMEOUT) -> mb.Frame | None:
    """The first frame meterledger.wire.modbus's framer finds in what comes back."""
    fr = mb.RtuFramer(requests=False, baud=9600)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = port.read(port.in_waiting or 1)
        if data:
            frames = fr.feed(data, 0)
            if frames:
                assert len(frames) == 1 and fr.pending == 0
                return frames[0]
        else:
            time.sleep(0.001)
    return None


@pytest.mark.hil
def test_firmware_sdm_source_and_fog_framer_read_a_pymodbus_server():
    sdm = module("core.sdm")
    host = module("hal.host")
    devices = [sdm_device(i, **kw) for i, kw in METERS.items()]
    with Rs485Bus(2, 9600) as line, PymodbusServer(devices, line.paths[0], 9600):
        port = serial.serial_for_url(line.paths[1], baudrate=9600, bytesize=8, parity="N",
                                     stopbits=1, timeout=0)
        try:
            uart = host.SerialRs485(port)
            for address, kw in METERS.items():
                src = sdm.SdmSource(uart, address, timeout_ms=int(TIMEOUT * 1000), retries=2)
                s = src.read(T0)
                watts = kw["watts"]
                assert s.imp == scaled(kw["imp_kwh"], 1000)  # Wh, exact from the float32
                assert s.exp == scaled(kw["exp_kwh"], 1000)
                assert s.v == scaled(kw["volts"], 10)  # 0.1 V
                assert s.p_imp == (scaled(watts, 1) if watts > 0 else 0)
                assert s.p_exp == (-scaled(watts, 1) if watts < 0 else 0)
                assert src.stats["requests"] == 3 and src.stats["timeouts"] == 0
                assert src.stats["crc_errors"] == 0 and src.stats["exceptions"] == 0
            # float32 rounding shows, and halves go to even
            assert scaled(98765.4321, 1000) == 98765430 and round(98765.4321 * 1000) == 98765432
            assert scaled(0.0625, 1000) == 62 and scaled(-1234.5, 1) == -1234
            assert scaled(12345.678, 1000) == 12345678
            # meterledger.wire.modbus: our request bytes, pymodbus's answer framed by our framer
            for address, kw in METERS.items():
                port.reset_input_buffer()
                port.write(mb.read_input_registers(address, 0x48, 4))
                f = read_answer(port)
                assert f is not None and (f.address, f.fc) == (address, 4)
                w = mb.registers(f.data)
                assert mb.words_float32(w[0], w[1]) == f32(kw["imp_kwh"])
                assert mb.words_float32(w[2], w[3]) == f32(kw["exp_kwh"])
                assert w == [*mb.float32_words(kw["imp_kwh"]), *mb.float32_words(kw["exp_kwh"])]
                # between the SDM addresses pymodbus's datastore has no registers: exception 2
                port.write(mb.read_input_registers(address, 0x0002, 2))
                f = read_answer(port)
                assert f is not None and f.address == address and mb.exception_code(f) == 2
        finally:
            port.close()
    # the SdmSource reports pymodbus's exception like the emulator's
    with Rs485Bus(2, 9600) as line, PymodbusServer([SimDevice(5, simdata=[
            SimData(0x0000, values=230.0, datatype=DataType.FLOAT32)])], line.paths[0], 9600):
        port = serial.serial_for_url(line.paths[1], baudrate=9600, timeout=0)
        try:
            src = sdm.SdmSource(host.SerialRs485(port), 5, timeout_ms=int(TIMEOUT * 1000),
                                retries=0)
            with pytest.raises(module("core.sources").SourceError, match="exception 2"):
                src.read(T0)
            assert src.stats["exceptions"] == 1
        finally:
            port.close()
