"""The hardware emulators: pseudo-terminals, the RS485 bus and the SDM meter emulator.

Tests marked `hil` run over real pseudo-terminals. Timing is only ever checked as a lower
bound (a transfer takes at least its line time), never as an upper one, and nothing is
assumed to have happened after some time: tests wait for it (with limits on a hang only),
so a loaded host makes them slower, never red.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import struct
import subprocess
import sys
import time

import pytest
import serial

from hardware.pty import PtyPort, QuietTimeline, open_pty
from hardware.rs485_bus import Rs485Bus
from hardware.sdm_emulator import NJ_PER_KWH, REGISTERS, LoadProfile, SdmEmulator
from meterledger.wire.modbus import (
    EX_ILLEGAL_ADDRESS,
    EX_ILLEGAL_FUNCTION,
    EX_ILLEGAL_VALUE,
    Frame,
    RtuFramer,
    adu,
    crc16,
    exception_code,
    read_input_registers,
    silence_us,
)
from tests.kit.fogkit import wait
from tests.kit.procs import LineReader, spawned, stop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- helpers ---------------------------------------------------------------------------------
class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakePort:
    """An in-memory pyserial stand-in: `rx` is what the emulator will read, `tx` what it wrote."""

    def __init__(self) -> None:
        self.rx = bytearray()
        self.tx = bytearray()

    @property
    def in_waiting(self) -> int:
        return len(self.rx)

    def read(self, size: int = 1, /) -> bytes:
        data = bytes(self.rx[:size])
        del self.rx[:size]
        return data

    def write(self, data: bytes, /) -> int:
        self.tx += data
        return len(data)


def f32(data: bytes) -> list[float]:
    """FLOAT32 values (big-endian, high word first) of an FC 0x04 answer's data, decoded
    independently of the code under test."""
    assert data[0] == len(data) - 1
    return [struct.unpack(">f", data[i : i + 4])[0] for i in range(1, len(data), 4)]


def single(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def ask(emu: SdmEmulator, request: bytes) -> list[Frame]:
    """Hand one request to an emulator on a FakePort; the frames it wrote back."""
    port = emu.port
    assert isinstance(port, FakePort)
    port.rx += request
    emu.poll()
    framer = RtuFramer(requests=False, baud=emu.baud)
    out = framer.feed(bytes(port.tx), 0) + framer.idle(10**9)
    port.tx.clear()
    return out


class QuietClock:
    """A µs clock for an emulator's silences that the test moves (`us`)."""

    def __init__(self) -> None:
        self.us = 0

    def __call__(self) -> int:
        return self.us


def fake(**kw) -> SdmEmulator:
    kw.setdefault("clock", FakeClock())
    kw.setdefault("quiet_clock_us", QuietClock())
    return SdmEmulator(FakePort(), kw.pop("address", 1), **kw)


def silence(emu: SdmEmulator) -> None:
    """A silence on an emulator's FakePort line: its quiet clock moves, and it looks."""
    clock = emu._timeline._clock
    assert isinstance(clock, QuietClock)
    clock.us += 10 * silence_us(emu.baud)
    emu.poll()


HANG = 30.0  # seconds: a limit on a hang, never a margin that a loaded host could eat


def read_for(port, n: int, timeout: float = HANG) -> bytes:
    """Read from a pyserial port until n bytes came (or the limit on a hang passed)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += port.read(n - len(out))
    return bytes(out)


def settle(*emus: SdmEmulator) -> None:
    """Wait until every emulator's framer is empty: it has framed or dropped (at a silence
    it saw) all it heard, so the next request starts at a frame boundary for all of them."""
    wait(lambda: all(not e.framer.pending for e in emus), timeout=HANG,
         what="the emulators' framers to clear")


def transact(port, request: bytes, baud: int = 19200, timeout: float = HANG,
             quiet: tuple[SdmEmulator, ...] = ()) -> Frame | None:
    """Master side: send a request, frame the answer with the host framer; None if no
    answer came within `timeout` (a limit on a hang: tests that expect no answer wait for
    the emulator to have dealt with the request instead, see `unanswered`).

    Like any Modbus master it keeps a silence before the request: other slaves on a bus
    heard the previous answer as garbage, which only a silence clears from their framers;
    `quiet` are the emulators that must have seen it."""
    settle(*quiet)
    framer = RtuFramer(requests=False, baud=baud)
    timeline = QuietTimeline()
    port.reset_input_buffer()
    port.write(request)
    got: list[Frame] = []

    def answered() -> bool:
        n = port.in_waiting
        if n:
            got.extend(framer.feed(port.read(n), timeline.arrived()))
        else:
            got.extend(framer.idle(timeline.quiet()))
        return bool(got)

    try:
        wait(answered, timeout=timeout, what="an answer")
    except AssertionError:
        return None
    return got[0]


def unanswered(port, request: bytes, emu: SdmEmulator, counter: str) -> None:
    """Send a request the emulator must not answer; wait until it has dealt with it (its
    `counter` went up), then check that nothing came back."""
    before = emu.counters[counter]
    port.reset_input_buffer()
    port.write(request)
    wait(lambda: emu.counters[counter] > before, timeout=HANG, what=f"the emulator's {counter}")
    settle(emu)
    assert port.in_waiting == 0


def open_serial(path: str, baud: int = 19200, timeout: float = 0.05):
    return serial.serial_for_url(path, baudrate=baud, timeout=timeout)


# --- load profiles and energy (no pty) -------------------------------------------------------
def test_profile_parse_and_str():
    for spec in ("constant:800", "constant:-1500", "daily:300,2000,3000",
                 "daily:300,2000,3000,4000", "steps:0=500,900=1500"):
        assert str(LoadProfile.parse(spec)) == spec
    p = LoadProfile.parse("steps:900=1500,0=500")
    assert p.steps == ((0.0, 500.0), (900.0, 1500.0))
    for bad in ("800", "constant:x", "daily:1,2", "steps:0", "steps:0=1,0=2", "sine:3"):
        with pytest.raises(ValueError):
            LoadProfile.parse(bad)


def test_profile_shapes():
    assert LoadProfile.constant(800).watts_at(12345.0) == 800.0
    steps = LoadProfile.parse("steps:0=500,900=1500")
    assert steps.watts_at(1000.0, origin=1000.0) == 500.0
    assert steps.watts_at(1899.0, origin=1000.0) == 500.0
    assert steps.watts_at(1900.0, origin=1000.0) == 1500.0
    assert steps.watts_at(999.0, origin=1000.0) == 0.0
    midnight = 1_799_971_200.0  # a UTC midnight
    assert midnight % 86400 == 0
    day = LoadProfile.daily(300, 2000, 3000)
    assert day.watts_at(midnight + 7.5 * 3600) == 2300  # morning peak
    assert day.watts_at(midnight + 19 * 3600) == 3300  # evening peak
    assert 300 <= day.watts_at(midnight + 3 * 3600) < 310
    assert day.watts_at(midnight + 23 * 3600 + 59 * 60) > 300  # evening tail over midnight
    pv = LoadProfile.daily(300, 2000, 3000, 4000)
    assert pv.watts_at(midnight + 12 * 3600) < -3000  # PV at noon: export
    assert pv.watts_at(midnight + 3 * 3600) == day.watts_at(midnight + 3 * 3600)


def test_energy_constant_import_and_export_exact():
    clock = FakeClock()
    emu = fake(profile=LoadProfile.constant(800), clock=clock)
    clock.t += 3600
    assert emu.import_mwh == 800_000 and emu.export_mwh == 0
    emu.profile = LoadProfile.constant(-1234.5)
    clock.t += 1800
    assert emu.export_mwh == 617_250 and emu.import_mwh == 800_000


def test_energy_is_independent_of_how_often_it_is_read():
    def run(chunks: list[float]) -> tuple[int, int]:
        clock = FakeClock(1_799_971_200.0 + 5 * 3600)
        emu = fake(profile=LoadProfile.daily(300, 2000, 3000, 4000), clock=clock)
        for c in chunks:
            clock.t += c
            emu.values()
        return emu.energy_nj

    total = 4 * 3600.0
    one = run([total])
    many = run([0.37, 1.5, 999.999, 3.25, total - 1005.119])
    assert one == many
    imp, exp = one
    assert imp > 0 and exp > 0  # morning load imports, the PV morning exports


def test_energy_daily_matches_per_second_sum():
    start = 1_799_971_200.0 + 6 * 3600
    profile = LoadProfile.daily(300, 2000, 3000, 4000)
    clock = FakeClock(start)
    emu = fake(profile=profile, clock=clock)
    clock.t += 7200
    imp = exp = 0
    for s in range(7200):
        mw = profile.power_mw(int((start + s) * 1_000_000), 0)
        if mw >= 0:
            imp += mw * 1_000_000
        else:
            exp -= mw * 1_000_000
    assert emu.energy_nj == (imp, exp)


def test_energy_steps_and_start_registers():
    clock = FakeClock()
    emu = fake(profile=LoadProfile.parse("steps:0=500,900=1500"), clock=clock,
               import_kwh=12345.6, export_kwh=7.25)
    assert emu.energy_nj == (12345_6 * NJ_PER_KWH // 10, 725 * NJ_PER_KWH // 100)
    clock.t += 1800  # 900 s at 500 W + 900 s at 1500 W = 500 Wh
    assert emu.import_mwh == 12_345_600_000 + 500_000
    clock.t -= 600  # a clock going back adds nothing, and nothing twice later
    assert emu.import_mwh == 12_345_600_000 + 500_000
    clock.t += 600
    assert emu.import_mwh == 12_345_600_000 + 500_000
    clock.t += 3600
    assert emu.import_mwh == 12_345_600_000 + 2_000_000


# --- Modbus answers (no pty) -----------------------------------------------------------------
def test_register_values_decode_as_float32():
    clock = FakeClock()
    emu = fake(profile=LoadProfile.constant(800), clock=clock, import_kwh=100.0,
               export_kwh=2.5, voltage=231.0)
    clock.t += 3600
    want = {
        0x0000: 231.0,
        0x0006: 800 / 0.95 / 231.0,
        0x000C: 800.0,
        0x0012: 800 / 0.95,
        0x001E: 0.95,
        0x0046: 50.0,
        0x0048: 100.8,
        0x004A: 2.5,
        0x0156: 103.3,
    }
    for reg, value in want.items():
        (frame,) = ask(emu, read_input_registers(1, reg, 2))
        assert frame.address == 1 and frame.fc == 0x04
        (got,) = f32(frame.data)
        assert got == single(value), hex(reg)
    # one read spanning import and export
    (frame,) = ask(emu, read_input_registers(1, 0x0048, 4))
    assert f32(frame.data) == [single(100.8), single(2.5)]
    # export: negative active power
    emu.profile = LoadProfile.constant(-2000)
    (frame,) = ask(emu, read_input_registers(1, 0x000C, 2))
    assert f32(frame.data) == [-2000.0]
    assert emu.counters["reads"] == 11 and emu.counters["answers"] == 11


def test_exceptions_and_silence():
    emu = fake()
    cases = [
        (read_input_registers(1, 0x0002, 2), 0x84, EX_ILLEGAL_ADDRESS),  # a gap in the map
        (read_input_registers(1, 0x0046, 8), 0x84, EX_ILLEGAL_ADDRESS),  # runs past 0x004B
        (read_input_registers(1, 0x1000, 2), 0x84, EX_ILLEGAL_ADDRESS),
        (read_input_registers(1, 0x0000, 0), 0x84, EX_ILLEGAL_VALUE),
        (read_input_registers(1, 0x0000, 126), 0x84, EX_ILLEGAL_VALUE),
        (adu(1, 0x41, b"\0\0\0\0"), 0xC1, EX_ILLEGAL_FUNCTION),
        (adu(1, 0x44), 0xC4, EX_ILLEGAL_FUNCTION),
    ]
    for request, fc, code in cases:
        (frame,) = ask(emu, request)
        assert (frame.fc, exception_code(frame)) == (fc, code)
    assert emu.counters["exceptions"] == len(cases)
    # an unknown function code ends only at the silence: answered once it has come
    port = emu.port
    assert isinstance(port, FakePort)
    port.rx += adu(1, 0x03, b"\0\0\0\2")
    emu.poll()
    assert not port.tx
    silence(emu)
    assert port.tx == adu(1, 0x83, bytes((EX_ILLEGAL_FUNCTION,)))
    port.tx.clear()
    # bad CRC: no answer, counted by the framer
    bad = bytearray(read_input_registers(1, 0, 2))
    bad[-1] ^= 0x01
    assert ask(emu, bytes(bad)) == []
    silence(emu)
    assert not port.tx and emu.counters["rx_crc_errors"] == 1
    # other address: ignored; broadcast: not answered
    assert ask(emu, read_input_registers(2, 0, 2)) == []
    assert ask(emu, read_input_registers(0, 0, 2)) == []
    assert emu.counters["other"] == 1 and emu.counters["broadcast"] == 1
    # all of the register map is readable in one go where it is contiguous
    (frame,) = ask(emu, read_input_registers(1, 0x0156, 2))
    assert len(f32(frame.data)) == 1
    assert set(REGISTERS) >= {0x0000, 0x0006, 0x000C, 0x0012, 0x001E, 0x0046, 0x0048, 0x004A,
                              0x0156}


def test_fault_crc_error_rate():
    emu = fake(profile=LoadProfile.constant(500), crc_error_rate=1.0, seed=1)
    port = emu.port
    assert isinstance(port, FakePort)
    port.rx += read_input_registers(1, 0x000C, 2)
    emu.poll()
    reply = bytes(port.tx)
    assert len(reply) == 9 and reply[:2] == b"\x01\x04"
    crc = crc16(reply[:-2])
    assert reply[-2:] != bytes((crc & 0xFF, crc >> 8))
    assert struct.unpack(">f", reply[3:7])[0] == 500.0  # only the CRC is wrong
    framer = RtuFramer(requests=False, baud=emu.baud)
    assert framer.feed(reply, 0) + framer.idle(10**9) == []
    assert emu.counters["crc_corrupted"] == 1 and emu.counters["answers"] == 1


def test_fault_rates_are_seeded_and_counted():
    def run(seed: int) -> tuple[list[bool], int]:
        emu = fake(no_answer_rate=0.5, seed=seed)
        answered = [bool(ask(emu, read_input_registers(1, 0, 2))) for _ in range(200)]
        assert emu.counters["no_answer"] == answered.count(False)
        assert emu.counters["answers"] == answered.count(True)
        assert emu.counters["requests"] == 200
        return answered, emu.counters["no_answer"]

    a, silent = run(7)
    assert run(7)[0] == a
    assert 50 < silent < 150
    emu = fake(no_answer_rate=1.0)
    assert ask(emu, read_input_registers(1, 0, 2)) == []
    assert emu.counters["no_answer"] == 1


def test_fault_noise_before_answer():
    emu = fake(profile=LoadProfile.constant(42), noise_rate=1.0, seed=3)
    port = emu.port
    assert isinstance(port, FakePort)
    port.rx += read_input_registers(1, 0x000C, 2)
    emu.poll()
    answer = adu(1, 0x04, b"\x04" + struct.pack(">f", 42.0))
    n = emu.counters["noise_bytes"]
    assert emu.counters["noise"] == 1 and 1 <= n <= 8
    assert len(port.tx) == n + len(answer) and port.tx.endswith(answer)


def test_fault_delay():
    emu = fake(delay_s=0.25)
    port = emu.port
    assert isinstance(port, FakePort)
    port.rx += read_input_registers(1, 0, 2)
    t0 = time.monotonic()
    emu.poll()
    assert time.monotonic() - t0 >= 0.25
    assert len(port.tx) == 9 and emu.counters["delayed"] == 1


def test_vanish_and_return():
    emu = fake()
    assert ask(emu, read_input_registers(1, 0, 2))
    emu.alive = False
    assert ask(emu, read_input_registers(1, 0, 2)) == []
    assert ask(emu, read_input_registers(1, 0x1000, 2)) == []  # not even an exception
    emu.alive = True
    assert ask(emu, read_input_registers(1, 0, 2))
    c = emu.counters
    assert (c["vanished"], c["returned"], c["dead"], c["answers"]) == (1, 1, 2, 2)


# --- pseudo-terminals ------------------------------------------------------------------------
@pytest.mark.hil
def test_pty_endpoint_can_come_and_go():
    with PtyPort() as master:
        for round_ in range(3):
            with open_serial(master.path) as ser:
                ser.write(b"ping%d" % round_)
                got = b""
                deadline = time.monotonic() + 5
                while len(got) < 5 and time.monotonic() < deadline:
                    got += master.read(100)
                assert got == b"ping%d" % round_
                assert master.write(b"\r\n\x00\xff") == 4  # raw: no translation
                assert read_for(ser, 4) == b"\r\n\x00\xff"
            # the slave is closed by pyserial: the master still reads nothing, not EIO
            assert master.read(10) == b""
            assert master.in_waiting == 0


@pytest.mark.hil
def test_open_pty_raw_and_nonblocking():
    import hardware.pty as hpty

    fd, path = open_pty()
    try:
        assert path.startswith("/dev/")
        assert not os.get_blocking(fd)
        with pytest.raises(BlockingIOError):
            os.read(fd, 1)
        slave = os.open(path, os.O_RDWR | os.O_NOCTTY)
        os.write(fd, b"x\n")
        assert select.select([slave], [], [], HANG)[0] == [slave]
        assert os.read(slave, 10) == b"x\n"  # raw: no line discipline, no echo back
        assert select.select([fd], [], [], 0.2)[0] == []  # and nothing echoed back
        os.close(slave)
        assert select.select([fd], [], [], 0.2)[0] == []  # no hang-up (EIO) either
    finally:
        hpty.close_pty(fd)


# --- the bus ---------------------------------------------------------------------------------
@pytest.mark.hil
@pytest.mark.parametrize("pace", [True, False])
def test_bus_delivers_to_all_others_not_back(pace: bool):
    with Rs485Bus(3, 115200, pace=pace) as bus:
        ports = [open_serial(p) for p in bus.paths]
        try:
            for i, port in enumerate(ports):
                msg = b"from %d:" % i + bytes(range(256))
                port.write(msg)
                for j, other in enumerate(ports):
                    if j != i:
                        assert read_for(other, len(msg)) == msg
                assert bus.wait_idle()
                assert ports[i].in_waiting == 0  # no echo to the writer
            assert all(p.in_waiting == 0 for p in ports)
            assert bus.counters["collisions"] == 0
            assert bus.counters["bytes"] == 3 * len(msg)
        finally:
            for p in ports:
                p.close()


@pytest.mark.hil
def test_bus_paces_at_the_baud_rate():
    n, baud = 480, 9600
    with Rs485Bus(2, baud) as bus:
        a, b = (open_serial(p, baud) for p in bus.paths)
        with a, b:
            data = os.urandom(n)
            t0 = time.monotonic()
            a.write(data)
            got = read_for(b, n)
            elapsed = time.monotonic() - t0
            assert got == data
            assert elapsed >= n * 10 / baud  # a lower bound only


@pytest.mark.hil
def test_bus_delivers_a_burst_in_one_piece():
    # a frame's bytes arrive together once its last byte has left the line, never dripped
    # with gaps inside (which a framer would take for the end of the frame)
    # (a drip would show a few bytes first: over 0.8 s of line time the reader looks often)
    n, baud = 100, 1200
    with Rs485Bus(2, baud) as bus:
        a, b = (open_serial(p, baud) for p in bus.paths)
        with a, b:
            a.write(os.urandom(n))
            wait(lambda: b.in_waiting > 0, timeout=HANG, what="the burst")
            assert b.in_waiting == n


@pytest.mark.hil
def test_bus_collisions_are_corrupted_and_counted():
    n, baud = 400, 9600
    with Rs485Bus(3, baud) as bus:
        a, b, c = (open_serial(p, baud) for p in bus.paths)
        with a, b, c:
            a.write(b"\x55" * n)
            b.write(b"\xaa" * n)  # while a's bytes still take the line: collisions
            # (a burst longer than 256 bytes comes in pieces of up to 256 byte times)
            # every byte written is on the line once the slots sent and the bytes ANDed into
            # a slot make 2n; then c gets one byte per slot, a and b the slots they did
            # not drive
            wait(lambda: bus.counters["bytes"] + bus.counters["collisions"] == 2 * n,
                 timeout=HANG, what="both transmissions on the line")
            collisions = bus.counters["collisions"]
            got_c = read_for(c, 2 * n - collisions)
            head = len(got_c) - len(got_c.lstrip(b"\x55"))
            got_a, got_b = read_for(a, n - collisions), read_for(b, head)
            assert collisions > 0
            # c hears a's head, the ANDed overlap (0x55 & 0xAA = 0), then b's tail
            assert got_c == b"\x55" * head + b"\x00" * collisions + b"\xaa" * (n - collisions)
            assert head + collisions == n
            # the transmitters do not hear the overlap (their receivers are off)
            assert got_a == b"\xaa" * (n - collisions)
            assert got_b == b"\x55" * head


@pytest.mark.hil
def test_bus_noise_flips_bits_seeded_and_counted():
    data = bytes(range(256)) * 8

    def run() -> bytes:
        with Rs485Bus(2, 115200, noise=0.1, seed=1234, pace=False) as bus:
            a, b = (open_serial(p) for p in bus.paths)
            with a, b:
                a.write(data)
                got = read_for(b, len(data))
                flips = bus.counters["noise_flips"]
        assert len(got) == len(data)
        diffs = [x ^ y for x, y in zip(got, data, strict=True) if x != y]
        assert len(diffs) == flips and 100 < flips < 320
        assert all(bin(d).count("1") == 1 for d in diffs)  # exactly one bit each
        return got

    assert run() == run()  # seeded: the same flips


@pytest.mark.hil
def test_bus_inject_reaches_everyone():
    with Rs485Bus(3, 19200) as bus:
        ports = [open_serial(p) for p in bus.paths]
        try:
            bus.inject(b"\xde\xad\xbe\xef")
            for p in ports:
                assert read_for(p, 4) == b"\xde\xad\xbe\xef"
            assert bus.counters["injected"] == 4 and bus.counters["bytes"] == 4
        finally:
            for p in ports:
                p.close()


@pytest.mark.hil
def test_bus_endpoint_can_close_and_reopen():
    import hardware.pty as hpty

    with Rs485Bus(2, 115200) as bus:
        a = open_serial(bus.paths[0])
        with open_serial(bus.paths[1]) as b:
            a.write(b"one")
            assert read_for(b, 3) == b"one"
        a.write(b"lost")  # nobody has endpoint 1 open: queued in the pty, flushed on open
        assert bus.wait_idle()
        # the kernel moves pty bytes to the slave's input queue asynchronously: wait until
        # they are there (on the slave fd the bus holds), so that opening flushes them
        held = hpty._held[bus._masters[1]]
        wait(lambda: hpty.bytes_waiting(held) == 4, timeout=HANG, what="the queued bytes")
        with open_serial(bus.paths[1]) as b:
            a.write(b"two")
            assert read_for(b, 3) == b"two"
            b.write(b"back")
            assert read_for(a, 4) == b"back"
        a.close()


# --- the SDM emulator over ptys --------------------------------------------------------------
@pytest.mark.hil
def test_sdm_on_pty_answers():
    emu, path = SdmEmulator.on_pty(profile=LoadProfile.constant(800), import_kwh=12.5,
                                   baud=19200)
    with emu, open_serial(path) as ser:
        frame = transact(ser, read_input_registers(1, 0x0048, 2))
        assert frame is not None and 12.5 <= f32(frame.data)[0] < 12.51
        frame = transact(ser, read_input_registers(1, 0x000C, 2))
        assert frame is not None and f32(frame.data) == [800.0]
        bad = bytearray(read_input_registers(1, 0x000C, 2))
        bad[3] ^= 0x40
        unanswered(ser, bytes(bad), emu, "rx_crc_errors")
        frame = transact(ser, adu(1, 0x03, b"\0\0\0\2"))
        assert frame is not None and exception_code(frame) == EX_ILLEGAL_FUNCTION
    assert emu.counters["rx_crc_errors"] == 1


@pytest.mark.hil
def test_sdm_faults_over_pty():
    emu, path = SdmEmulator.on_pty(baud=19200, delay_s=0.2)
    with emu, open_serial(path) as ser:
        t0 = time.monotonic()
        assert transact(ser, read_input_registers(1, 0, 2)) is not None
        assert time.monotonic() - t0 >= 0.2
        emu.alive = False
        unanswered(ser, read_input_registers(1, 0, 2), emu, "dead")
        emu.alive = True
        assert transact(ser, read_input_registers(1, 0, 2)) is not None
        emu.delay_s = 0
        emu.noise_rate = 1.0
        # garbage, a silence, the answer: a framer that honours silences gets the answer
        answers = [transact(ser, read_input_registers(1, 0, 2), timeout=5) for _ in range(5)]
        assert any(f is not None and f32(f.data) == [230.0] for f in answers)
        assert emu.counters["noise"] == 5
    c = emu.counters
    assert (c["delayed"], c["dead"], c["vanished"], c["returned"]) == (2, 1, 1, 1)


@pytest.mark.hil
def test_sdm_through_the_bus():
    clock = FakeClock()
    with Rs485Bus(3, 19200) as bus:
        m1 = SdmEmulator.on_url(bus.paths[1], 1, baud=19200, clock=clock,
                                profile=LoadProfile.constant(1000))
        m2 = SdmEmulator.on_url(bus.paths[2], 2, baud=19200, clock=clock,
                                profile=LoadProfile.constant(-300), export_kwh=5.0)
        with m1, m2, open_serial(bus.paths[0]) as master:
            clock.t += 3600
            both = (m1, m2)
            frame = transact(master, read_input_registers(1, 0x0048, 4), quiet=both)
            assert frame is not None and frame.address == 1
            assert f32(frame.data) == [1.0, 0.0]
            frame = transact(master, read_input_registers(2, 0x0048, 4), quiet=both)
            assert frame is not None and frame.address == 2
            assert f32(frame.data) == [0.0, single(5.3)]
            frame = transact(master, read_input_registers(2, 0x000C, 2), quiet=both)
            assert frame is not None and f32(frame.data) == [-300.0]
            frame = transact(master, read_input_registers(1, 0x0002, 2), quiet=both)
            assert frame is not None and exception_code(frame) == EX_ILLEGAL_ADDRESS
            assert bus.wait_idle()
            # m2 frames m1's exception answer once it has seen a silence after it
            wait(lambda: m1.counters["other"] >= 2 and m2.counters["other"] >= 3,
                 timeout=HANG, what="both meters to frame what they heard")
            settle(m1, m2)
        # each meter hears the requests for the other and the other's answers; framed as
        # requests, a read answer is garbage, an exception answer (5 bytes, CRC good) a
        # frame for the other address
        assert m1.counters["other"] == 2 and m2.counters["other"] == 3
        assert m1.counters["answers"] == 2 and m2.counters["answers"] == 2
        assert bus.counters["collisions"] == 0


# --- the CLIs --------------------------------------------------------------------------------
def _spawn(*args: str) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    """The CLI as a process, stopped (killed if need be) however the test ends."""
    return spawned([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, sig=signal.SIGINT)


def _finish(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C: it stops cleanly (exit 0) and reports its counters."""
    _, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    return str(err)


@pytest.mark.hil
def test_cli_bus_and_sdm_emulator():
    with _spawn("hardware.rs485_bus", "--endpoints", "2", "--baud", "19200") as bus:
        out = LineReader(bus.stdout)
        paths = [out.next("endpoint path").split(": ", 1)[1].strip() for _ in range(2)]
        with _spawn("hardware.sdm_emulator", "--port", paths[1], "--baud", "19200",
                    "--address", "7", "--profile", "constant:-250", "--import-kwh", "3") as sdm:
            assert LineReader(sdm.stdout).next("port path") == paths[1]
            with open_serial(paths[0]) as master:
                frame = transact(master, read_input_registers(7, 0x000C, 2))
                assert frame is not None and f32(frame.data) == [-250.0]
                frame = transact(master, read_input_registers(7, 0x0048, 2))
                assert frame is not None and math.isclose(f32(frame.data)[0], 3.0)
            assert "answers" in _finish(sdm)
        assert "bytes" in _finish(bus)


@pytest.mark.hil
def test_cli_sdm_on_pty():
    with _spawn("hardware.sdm_emulator", "--pty", "--baud", "19200", "--profile",
                "steps:0=100,900=200") as sdm:
        path = LineReader(sdm.stdout).next("pty path")
        with open_serial(path) as ser:
            frame = transact(ser, read_input_registers(1, 0x000C, 2))
            assert frame is not None and f32(frame.data) == [100.0]
        _finish(sdm)
