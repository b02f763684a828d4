"""The fog node as Modbus RTU master (fog_node/transport/rs485/master.py, docs/PROTOCOL.md section 17).

The fog's BusMaster opens the slave side of a real pseudo-terminal with pyserial; the test
holds the master side and runs a multidrop line on it (`Line`): every meter hears what the
fog sends, what a meter sends reaches the fog (and the other meters), and faults can be put
on either direction. The meters are the real firmware (App + transport_rs485.Rs485Slave on
the host board), enrolled in a real fog node on SQLite files. One test runs the whole stack
over hardware/rs485_bus.py, where the meters' boards open their own pty with pyserial too.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import tty
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fog_node import metrics
from fog_node import service as S
from fog_node.config import FogConfig, load_config
from fog_node.enrollment import apply_request
from fog_node.node import FogNode, init_data_dir
from fog_node.service import FogService
from fog_node.transport.rs485 import master as R
from fog_node.transport.rs485.addresses import parse_addresses
from fog_node.transport.rs485.link import MemoryLink
from fog_node.transport.rs485.master import BusMaster
from hardware.firmware import module
from meterledger import wire as P
from meterledger.wire import modbus as mb
from tests.kit.fogkit import ManualClock, logged_readings, wait

T0 = 1_800_000_000
SLOW = 2.0  # the slow timeout in tests: the host meter verifies and signs in milliseconds
FAST = 0.5


# --- the line --------------------------------------------------------------------------------
Fault = Callable[[bytes], list[tuple[float, bytes]]]  # bytes -> chunks (pause before, bytes)


class LinePort:
    """A meter's end of the line, with the MicroPython UART calls Rs485Slave uses."""

    def __init__(self, line: Line) -> None:
        self.line = line
        self.rx = bytearray()

    def any(self) -> int:
        return len(self.rx)

    def read(self, n: int = 1) -> bytes | None:
        data = bytes(self.rx[:n])
        del self.rx[:n]
        return data or None

    def write(self, data: bytes) -> int:
        self.line.send(self, bytes(data))
        return len(data)


class Line:
    """A pty pair as a multidrop RS485 line (module doc). Only the meter thread calls
    pump() and send(); tests queue faults: `answer_faults` apply to the next answers,
    `request_faults` to the next requests the meters receive.

    Meters hear each other's answers only with `echo`: on this line a meter may read them
    late (its thread shares the interpreter with the fog's), so that the silence before
    the next request, which a real line keeps, is gone; the framer then finds the request
    behind the answer by resynchronising (at worst at the silence after it). The test over
    hardware/rs485_bus.py has the real thing."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # held open, so the master side never sees EIO
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.ports: list[LinePort] = []
        self.answer_faults: deque[Fault] = deque()
        self.request_faults: deque[Fault] = deque()
        self.lose_requests: Counter[int] = Counter()  # fc -> how many such requests to lose
        self.log: list[tuple[str, bytes]] = []

    def port(self) -> LinePort:
        p = LinePort(self)
        self.ports.append(p)
        return p

    def _hear(self, data: bytes, sender: LinePort | None) -> None:
        for p in self.ports:
            if p is not sender:
                p.rx += data

    def pump(self) -> bool:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return False
        self.log.append(("fog", data))
        if len(data) > 1 and self.lose_requests[data[1]] > 0:
            self.lose_requests[data[1]] -= 1
            return True
        chunks = self.request_faults.popleft()(data) if self.request_faults else [(0.0, data)]
        for _pause, chunk in chunks:
            self._hear(chunk, None)
        return True

    def send(self, sender: LinePort, data: bytes) -> None:
        self.log.append(("meter", data))
        chunks = self.answer_faults.popleft()(data) if self.answer_faults else [(0.0, data)]
        for pause, chunk in chunks:
            if pause:
                time.sleep(pause)
            if self.echo:
                self._hear(chunk, sender)
            view = memoryview(chunk)
            while view:
                try:
                    view = view[os.write(self.master, view):]
                except BlockingIOError:
                    time.sleep(0.001)

    def close(self) -> None:
        os.close(self.master)
        os.close(self._slave)


# faults (each replaces one transmission)
def drop(data: bytes) -> list[tuple[float, bytes]]:
    return []


def corrupt(data: bytes) -> list[tuple[float, bytes]]:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x10
    return [(0.0, bytes(b))]


def truncate(data: bytes) -> list[tuple[float, bytes]]:
    return [(0.0, data[: len(data) // 2])]


def garbage_before(data: bytes) -> list[tuple[float, bytes]]:
    return [(0.0, b"\xff\x00" + data)]  # same burst: the framer resynchronises on the answer


def garbage_then_silence(data: bytes) -> list[tuple[float, bytes]]:
    return [(0.0, b"\xff\x00"), (0.06, data)]  # quiet longer than the master's gap


def rewrite(address: int | None = None, fc: int | None = None, data: bytes | None = None,
            ) -> Fault:
    def f(raw: bytes) -> list[tuple[float, bytes]]:
        a = raw[0] if address is None else address
        c = raw[1] if fc is None else fc
        d = raw[2:-2] if data is None else data
        return [(0.0, mb.Frame(a, c, d).raw)]
    return f


# --- meters ----------------------------------------------------------------------------------
class Meter:
    def __init__(self, app: Any, slave: Any, board: Any) -> None:
        self.app, self.slave, self.board = app, slave, board

    @property
    def id(self) -> bytes:
        return bytes(self.app.meter.id)

    @property
    def seq(self) -> int:
        return int(self.app.meter.st["seq"])

    @property
    def acked(self) -> int:
        return int(self.app.meter.spool.acked)

    @property
    def spooled(self) -> int:
        return len(self.app.meter.spool)


def meter_config(fog: P.SigningKey, index: int, address: int, **extra: Any) -> dict[str, Any]:
    return {"fog": fog.id.hex(), "fog_pub": fog.public_key.raw.hex(), "source": "sim",
            "dur": 900, "seed": index + 1, "transport": "rs485", "rs485_address": address,
            **extra}


def firmware_meter(tmp: Path, index: int, clock: ManualClock, cfg: dict[str, Any],
                   port: Any = None) -> Meter:
    """The firmware app with its RS485 slave, on the host board (virtual_meter.make_meter's
    way). Without `port` the board opens cfg["rs485_port"] with pyserial."""
    host, app_mod, tr = module("hal.host"), module("app"), module("transport_rs485")
    board = host.Board(dict(cfg, data_dir=str(tmp / f"meter-{index:03d}"), clock=clock.now,
                            ticks_ms=clock.ticks_ms, sleep_ms=lambda ms: None))
    slave = tr.Rs485Slave(port if port is not None else board.uart_rs485("bus"),
                          cfg["rs485_address"], cfg.get("rs485_baud", 19200))
    app = app_mod.App(board, cfg, slave)
    app.start()
    return Meter(app, slave, board)


class MeterThread:
    """Runs the meters' slaves (and the line's pump) in one thread; the test thread takes
    `lock` to touch a meter (step it, read it, change it)."""

    def __init__(self, line: Line | None = None) -> None:
        self.line = line
        self.meters: list[Meter] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meters", daemon=True)

    def start(self) -> MeterThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                busy = self.line.pump() if self.line is not None else False
                for m in self.meters:
                    m.slave.poll()
            if not busy:
                time.sleep(0.0005)

    def step(self) -> None:
        """One main-loop pass of every meter (makes a reading when an interval closed)."""
        with self.lock:
            for m in self.meters:
                m.app.step()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Rig:
    """A fog node on SQLite files, a line, firmware meters at addresses, and a clock."""

    def __init__(self, tmp: Path, addresses: list[int], enroll: bool = True) -> None:
        self.tmp = tmp
        self.clock = ManualClock(T0 - 10)
        init_data_dir(tmp / "fog")
        self.node = FogNode(FogConfig(data_dir=tmp / "fog"), self.clock.now)
        self.line = Line()
        self.meters = MeterThread(self.line)
        self.by_address: dict[int, Meter] = {}
        self.masters: list[BusMaster] = []
        for i, a in enumerate(addresses):
            m = firmware_meter(tmp, i, self.clock, meter_config(self.node.key, i, a),
                               self.line.port())
            self.meters.meters.append(m)
            self.by_address[a] = m
            if enroll:
                self.enroll(m)
        self.meters.start()

    def enroll(self, m: Meter) -> None:
        apply_request(self.node, {"pub": m.app.meter.key.pub.hex(), "status": "active"})

    def master(self, addresses: list[int], **kw: Any) -> BusMaster:
        kw.setdefault("clock", self.clock.now)
        kw.setdefault("timeout_s", FAST)  # margin for a loaded test machine
        kw.setdefault("slow_timeout_s", SLOW)
        bus = BusMaster(self.node, self.line.path, addresses, **kw)
        self.masters.append(bus)
        return bus

    def intervals(self, n: int) -> None:
        for _ in range(n):
            self.clock.advance(900)
            self.meters.step()

    def close(self) -> None:
        for bus in self.masters:
            bus.close()
        self.meters.stop()
        self.node.close()
        self.line.close()


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(addresses: list[int], enroll: bool = True) -> Rig:
        rig = Rig(tmp_path, addresses, enroll)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


def poll_until(bus: BusMaster, cond: Callable[[], bool], rounds: int = 20) -> int:
    for i in range(rounds):
        bus.poll_once()
        if cond():
            return i + 1
    raise AssertionError(f"not done after {rounds} rounds; counters {dict(bus.counters)}")


def assert_logged_once(node: FogNode, meters: list[Meter]) -> None:
    with node.lock:
        counts = logged_readings(node.log)
    assert set(counts.values()) <= {1}, "a reading was logged twice"
    for m in meters:
        assert {s for (d, s) in counts if d == m.id} == set(range(1, m.seq + 1))


def drained(meters: list[Meter]) -> Callable[[], bool]:
    return lambda: all(m.acked == m.seq and m.spooled == 0 for m in meters)


# --- without a line -------------------------------------------------------------------------
def test_addresses_and_timeouts():
    assert parse_addresses("1,2,5-9") == [1, 2, 5, 6, 7, 8, 9]
    assert parse_addresses(" 7 ") == [7]
    for bad in ("0", "248", "1,1", "5-3", "x", "1-2-3"):
        with pytest.raises(ValueError):
            parse_addresses(bad)
    assert R.default_timeout_s(19200) == pytest.approx(0.1 + 256 * 10 / 19200, abs=1e-3)
    assert R.default_timeout_s(9600) > R.default_timeout_s(115200)


def test_config_keys(tmp_path):
    cfg = tmp_path / "fog.toml"
    cfg.write_text('rs485_port = "/dev/ttyUSB0"\nrs485_baud = 9600\nrs485_addresses = [1, 2, 9]\n'
                   'rs485_timeout_s = 0.5\nrs485_slow_timeout_s = 12.0\nrs485_batch = 8\n')
    c = load_config(cfg, {})
    assert (c.rs485_port, c.rs485_baud, c.rs485_addresses, c.rs485_timeout_s,
            c.rs485_slow_timeout_s, c.rs485_batch) == ("/dev/ttyUSB0", 9600, [1, 2, 9], 0.5, 12.0, 8)
    assert load_config(cfg, {"rs485_addresses": parse_addresses("3-4")}).rs485_addresses == [3, 4]
    d = FogConfig()
    assert (d.rs485_port, d.rs485_baud, d.rs485_addresses, d.rs485_timeout_s,
            d.rs485_slow_timeout_s, d.rs485_batch) == ("", 19200, [], 0.0, 10.0, 32)
    cfg.write_text("rs485_addresses = [1, 300]\n")
    with pytest.raises(Exception, match="300"):
        load_config(cfg, {})


def test_cli_flag_parses_address_ranges(tmp_path, monkeypatch):
    from fog_node import __main__ as cli

    seen: dict[str, FogConfig] = {}
    monkeypatch.setattr(cli, "run", lambda config: seen.setdefault("c", config) and 0)
    cli.main(["run", "--data-dir", str(tmp_path), "--rs485-port", "loop://",
              "--rs485-addresses", "1,2,5-9", "--rs485-baud", "9600"])
    c = seen["c"]
    assert c.rs485_port == "loop://" and c.rs485_addresses == [1, 2, 5, 6, 7, 8, 9]
    assert c.rs485_baud == 9600


# --- a master against firmware meters on a pty -----------------------------------------------
@pytest.mark.hil
def test_readings_fetched_verified_logged_acked(rig_factory):
    rig = rig_factory([1, 2, 3])
    ms = rig.meters.meters
    rig.intervals(3)
    assert all(m.seq == 3 and m.spooled == 3 for m in ms)
    bus = rig.master([1, 2, 3])
    assert bus.poll_once() == 3 + 9  # three births, nine readings
    assert drained(ms)()
    c = bus.counters
    assert c["births"] == 3 and c["readings"] == 9 and c["acks_pushed"] == 3
    assert c["timeouts"] == c["crc_errors"] == c["bad_answers"] == c["acks_not_taken"] == 0
    assert [bus.device_at(a) for a in (1, 2, 3)] == [m.id for m in ms]
    with rig.node.lock:
        births = [P.parse(rig.node.log.entry(i), schema=False)
                  for i in range(rig.node.log.size())]
    assert sorted(b.kid for b in births if b.type == P.BIRTH) == sorted(m.id for m in ms)
    # the next interval: no birth again, one reading each, acked
    rig.intervals(1)
    bus.poll_once()
    assert drained(ms)() and all(m.seq == 4 for m in ms)
    assert c["births"] == 3 and c["readings"] == 12 and c["acks_pushed"] == 6
    # a round with nothing new: one GET_READING per meter, nothing ingested, no ack
    before = c["requests"]
    assert bus.poll_once() == 0
    assert c["requests"] == before + 3 and c["acks_pushed"] == 6
    assert_logged_once(rig.node, ms)
    # the meters' own counters: every request answered, nothing refused; they also heard
    # the requests to the others ("other")
    for m in ms:
        st = m.slave.stats
        assert st["exceptions"] == 0 and st["answers"] == st["requests"] > 0
        assert st["other"] > 0


@pytest.mark.hil
def test_batch_limits_a_visit(rig_factory):
    rig = rig_factory([1, 2])
    ms = rig.meters.meters
    rig.intervals(5)
    bus = rig.master([1, 2], batch=2)
    bus.poll_once()
    assert all(m.acked == 2 for m in ms) and bus.counters["readings"] == 4
    assert poll_until(bus, drained(ms)) == 2
    assert_logged_once(rig.node, ms)


@pytest.mark.hil
def test_silent_address_does_not_stall_the_others(rig_factory):
    rig = rig_factory([1, 2])
    ms = rig.meters.meters
    rig.intervals(2)
    bus = rig.master([1, 77, 2], timeout_s=0.15)
    t = time.monotonic()
    bus.poll_once()
    took = time.monotonic() - t
    assert drained(ms)()
    assert bus.counters["timeouts"] == 2  # the birth of 77, and its retry
    assert bus.device_at(77) is None
    assert took >= 0.3  # it did wait for 77 (two timeouts), and then went on
    rig.intervals(1)
    bus.poll_once()
    assert drained(ms)() and bus.counters["timeouts"] == 4
    assert_logged_once(rig.node, ms)


@pytest.mark.hil
def test_answer_faults_are_counted_and_retried(rig_factory):
    rig = rig_factory([1, 2])
    ms = rig.meters.meters
    rig.intervals(3)
    bus = rig.master([1, 2])
    c = bus.counters
    faults = rig.line.answer_faults
    # address 1: birth answer lost, then its retry arrives; first reading corrupted, then
    # its retry arrives; second reading with garbage in the same burst (only the garbage is
    # lost); third reading from the wrong address, then with the wrong function code
    faults.extend([drop, lambda d: [(0.0, d)], corrupt, lambda d: [(0.0, d)],
                   garbage_before, rewrite(address=9), rewrite(fc=0x44)])
    bus.poll_once()
    assert c["timeouts"] == 1 and c["crc_errors"] == 1 and c["bad_answers"] == 2
    assert c["garbage"] == 1
    assert not faults
    # both tries for the third reading were answered wrongly: address 1's visit ended
    # there (readings 1-2 logged, their ack waits for the next visit), and the rest of the
    # round (address 2) went on
    assert drained([ms[1]])() and ms[0].acked == 0
    with rig.node.lock:
        assert rig.node.registry.contiguous_seq(ms[0].id) == 2
    poll_until(bus, drained(ms))
    # garbage separated from the answer by a silence only costs the garbage; an answer cut
    # to 2 bytes (the empty answer after the new reading) is garbage, then a timeout
    rig.intervals(1)
    before = dict(c)
    faults.extend([garbage_then_silence, truncate])
    poll_until(bus, drained(ms))
    assert c["garbage"] == before["garbage"] + 2
    assert c["crc_errors"] == before["crc_errors"]
    assert c["timeouts"] == before["timeouts"] + 1
    assert_logged_once(rig.node, ms)
    assert c["readings"] >= 8


@pytest.mark.hil
def test_exception_answers_end_the_visit(rig_factory):
    rig = rig_factory([1, 2])
    ms = rig.meters.meters
    rig.intervals(1)
    bus = rig.master([1, 2])
    rig.line.answer_faults.append(rewrite(fc=0x44 | 0x80, data=bytes([mb.EX_DEVICE_FAILURE])))
    bus.poll_once()
    assert bus.counters["exceptions"] == 1 and bus.device_at(1) is None
    assert drained([ms[1]])() and ms[0].acked == 0
    poll_until(bus, drained(ms))
    assert bus.counters["exceptions"] == 1 and bus.counters["timeouts"] == 0


@pytest.mark.hil
def test_lost_ack_is_pushed_after_the_meter_comes_back(rig_factory):
    """The meter never hears our ack (twice): the master marks it silent, reads its birth
    again, asks for its watermark, and pushes the ack; a fresh master (a fog restart) does
    the same from the log alone. Nothing is fetched or logged twice."""
    rig = rig_factory([1])
    (m,) = rig.meters.meters
    rig.intervals(2)
    bus = rig.master([1], slow_timeout_s=0.5)

    rig.line.lose_requests[mb.FC_PUT_ACK] = 2
    bus.poll_once()  # birth, 2 readings, empty answer, then PUT_ACK lost twice
    assert bus.counters["timeouts"] == 2 and m.acked == 0 and m.spooled == 2
    bus.poll_once()
    assert drained([m])()
    assert bus.counters["births"] == 2 and bus.counters["acks_pushed"] == 1
    assert bus.counters["readings"] == 2
    # a restarted fog (a new master) whose ack was lost: the watermark says so
    rig.intervals(1)
    rig.line.lose_requests[mb.FC_PUT_ACK] = 2
    bus.poll_once()
    assert m.acked == 2 and m.spooled == 1
    fresh = rig.master([1])
    fresh.poll_once()
    assert drained([m])()
    assert fresh.counters["readings"] == 0 and fresh.counters["acks_pushed"] == 1
    assert_logged_once(rig.node, [m])


@pytest.mark.hil
def test_cursor_falls_back_when_acks_stall(rig_factory):
    """Readings the fog rejected (here: t in its future) leave a hole; 60 s without ack
    progress the master fetches again from the contiguous seq, as an MQTT meter resends."""
    rig = rig_factory([1])
    (m,) = rig.meters.meters
    rig.intervals(2)
    behind = ManualClock(T0 - 2000)  # the fog's clock is 2000 s behind the meter's
    rig.node.ingest.clock = behind.now
    bus = rig.master([1], clock=behind.now)
    bus.poll_once()
    assert rig.node.ingest.rejected["future_t"] == 2 and m.spooled == 2
    bus.poll_once()  # nothing after the cursor, and no 60 s yet: nothing fetched again
    assert bus.counters["readings"] == 2
    behind.advance(3000)  # the clock caught up; no ack progress for 3000 s
    bus.poll_once()
    assert drained([m])() and bus.counters["readings"] == 4
    assert_logged_once(rig.node, [m])


@pytest.mark.hil
def test_commands_go_out_and_results_are_logged(rig_factory):
    rig = rig_factory([1, 2])
    ms = rig.meters.meters
    bus = rig.master([1, 2])
    bus.poll_once()  # births
    key = rig.node.key

    def command(dev: bytes, cid: int, op: str, args: dict[int, Any]) -> bytes:
        return P.sign1(key, P.command(dev, cid, op, args, T0 + 86_400, b"", key.id))

    bus.queue_command(ms[0].id, command(ms[0].id, 1, "relay", {1: False}))
    bus.queue_command(ms[0].id, command(ms[0].id, 1, "ping", {}))  # cid not greater: rejected
    bus.queue_command(ms[1].id, command(ms[1].id, 5, "limit", {1: 2500}))
    assert bus.queued_commands(ms[0].id) == 2
    bus.poll_once()
    assert bus.counters["commands"] == 3 and bus.counters["results"] == 3
    assert bus.queued_commands(ms[0].id) == 0 and bus.queued_commands(ms[1].id) == 0
    assert ms[0].board.relay() is False
    with rig.node.lock:
        results = [P.parse(rig.node.log.entry(i), schema=False)
                   for i in range(rig.node.log.size())]
    got = [(r.kid, r.fields[2], r.fields[3]) for r in results if r.type == P.RESULT]
    assert got == [(ms[0].id, 1, P.RESULT_DONE), (ms[0].id, 1, P.RESULT_REJECTED),
                   (ms[1].id, 5, P.RESULT_DONE)]
    # a command whose answer is lost stays queued; the meter refuses the repeat
    bus.queue_command(ms[1].id, command(ms[1].id, 6, "ping", {}))
    rig.line.answer_faults.extend([lambda d: [(0.0, d)], drop, drop])  # reading ok, cmd lost
    bus.poll_once()
    assert bus.queued_commands(ms[1].id) == 1 and bus.counters["timeouts"] == 2
    poll_until(bus, lambda: bus.queued_commands(ms[1].id) == 0)
    with pytest.raises(ValueError):
        bus.queue_command(ms[1].id, bytes(300))


@pytest.mark.hil
def test_meter_at_another_address_is_rejected_then_relearned(rig_factory):
    rig = rig_factory([1, 2])
    a, b = rig.meters.meters
    rig.intervals(1)
    bus = rig.master([1, 2])
    bus.poll_once()
    assert drained([a, b])()
    with rig.meters.lock:  # the installer swaps the two meters' addresses
        a.slave.address, b.slave.address = 2, 1
    rig.intervals(2)
    poll_until(bus, drained([a, b]))
    assert rig.node.ingest.rejected["topic_mismatch"] >= 1
    assert bus.device_at(1) == b.id and bus.device_at(2) == a.id
    assert_logged_once(rig.node, [a, b])


@pytest.mark.hil
def test_unknown_meter_waits_in_quarantine_until_enrolled(rig_factory):
    rig = rig_factory([1], enroll=False)
    (m,) = rig.meters.meters
    rig.intervals(2)
    bus = rig.master([1])
    bus.poll_once()
    assert m.id in rig.node.ingest.pending_births
    with rig.node.lock:
        assert len(rig.node.registry.quarantined()) == 2
    assert m.acked == 0 and bus.counters["readings"] == 2
    rig.enroll(m)  # releases the quarantine into the log
    rig.clock.advance(61)  # no ack progress for 60 s: the master catches up
    poll_until(bus, drained([m]))
    assert_logged_once(rig.node, [m])


@pytest.mark.hil
def test_request_noise_and_stale_answers(rig_factory):
    """Requests the meter cannot frame (CRC), and a late answer arriving before the next
    request: counted, and nothing is lost or logged twice."""
    rig = rig_factory([1])
    (m,) = rig.meters.meters
    rig.intervals(3)
    bus = rig.master([1], timeout_s=0.15)
    rig.line.request_faults.extend([corrupt, lambda d: [(0.0, d)], corrupt])
    rig.line.answer_faults.extend([lambda d: [(0.0, d)], lambda d: [(0.2, d)]])  # 2nd late
    poll_until(bus, drained([m]))
    c = bus.counters
    assert c["timeouts"] >= 2
    assert m.slave.stats["crc_errors"] >= 2
    assert_logged_once(rig.node, [m])


# --- the service --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.hil
def test_service_runs_the_bus_from_config(tmp_path, monkeypatch):
    """FogService starts the bus thread from FogConfig (no MQTT broker at all: its link keeps
    retrying beside), restarts it when it dies, and /metrics has the bus counters."""
    monkeypatch.setattr(S, "RESTART_PAUSE_S", 0.2)
    clock = ManualClock(T0 - 10)
    line = Line()
    meters = MeterThread(line)
    init_data_dir(tmp_path / "fog")
    config = FogConfig(data_dir=tmp_path / "fog", mqtt_port=_free_port(), seal_period_s=0.2,
                       rs485_port=line.path, rs485_addresses=[1, 2], rs485_timeout_s=FAST,
                       rs485_slow_timeout_s=SLOW)
    node = FogNode(config, clock.now)
    for i, a in enumerate([1, 2]):
        m = firmware_meter(tmp_path, i, clock, meter_config(node.key, i, a), line.port())
        meters.meters.append(m)
        apply_request(node, {"pub": m.app.meter.key.pub.hex(), "status": "active"})
    meters.start()
    svc = FogService(node, clock.now)
    assert svc.bus is not None and node.rs485 is svc.bus
    real_poll = svc.bus.poll_once
    calls = [0]

    def flaky_poll(stop: threading.Event | None = None) -> int:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError("adapter unplugged")
        return real_poll(stop)

    monkeypatch.setattr(svc.bus, "poll_once", flaky_poll)
    try:
        svc.start()
        for _ in range(3):
            clock.advance(900)
            meters.step()
        wait(drained(meters.meters), what="spools drained over RS485")
        wait(lambda: calls[0] > 3, what="bus thread restarted")
        text = metrics.render(node, clock.now())
        values = metrics.parse_metrics(text)
        for kind in R.COUNTER_HELP:
            assert f"meterledger_fog_rs485_{kind}_total" in values
        assert values["meterledger_fog_rs485_readings_total"] == 6
        assert values["meterledger_fog_rs485_births_total"] >= 2
    finally:
        svc.stop()
        meters.stop()
    assert_logged_once(node, meters.meters)
    node.close()
    line.close()


def test_service_without_bus_exports_no_bus_metrics(tmp_path):
    init_data_dir(tmp_path / "fog")
    node = FogNode(FogConfig(data_dir=tmp_path / "fog"), time.time)
    try:
        svc = FogService(node)
        assert svc.bus is None and node.rs485 is None
        assert "rs485" not in metrics.render(node, time.time())
    finally:
        node.close()


def test_bus_needs_addresses(tmp_path):
    init_data_dir(tmp_path / "fog")
    node = FogNode(FogConfig(data_dir=tmp_path / "fog", rs485_port="loop://"), time.time)
    try:
        with pytest.raises(Exception, match="rs485_addresses"):
            FogService(node)
    finally:
        node.close()


# --- the whole stack over the emulated bus ----------------------------------------------------
@pytest.mark.hil
def test_full_stack_over_the_emulated_bus(tmp_path):
    """hardware/rs485_bus.py: paced line time at 19200 baud, every endpoint a pty opened with
    pyserial (the fog's BusMaster and each meter's host board)."""
    from hardware.rs485_bus import Rs485Bus

    clock = ManualClock(T0 - 10)
    init_data_dir(tmp_path / "fog")
    node = FogNode(FogConfig(data_dir=tmp_path / "fog"), clock.now)
    with Rs485Bus(3, 19200) as line:
        meters = MeterThread()
        for i, a in enumerate([4, 5]):
            m = firmware_meter(tmp_path, i, clock,
                               meter_config(node.key, i, a, rs485_port=line.paths[i + 1]))
            meters.meters.append(m)
            apply_request(node, {"pub": m.app.meter.key.pub.hex(), "status": "active"})
        meters.start()
        bus = BusMaster(node, line.paths[0], [4, 5], clock=clock.now, timeout_s=FAST,
                        slow_timeout_s=SLOW)
        try:
            for _ in range(3):
                clock.advance(900)
                meters.step()
            poll_until(bus, drained(meters.meters), rounds=10)
            # the line, its pacing thread and the meters share this interpreter with the
            # fog: under load a request can be lost (a timeout, a retry, a birth read
            # again), so only what must hold whatever the timing is checked here
            assert bus.counters["readings"] == 6 and bus.counters["births"] >= 2
            assert bus.counters["acks_pushed"] >= 2
        finally:
            bus.close()
            meters.stop()
            for m in meters.meters:
                m.slave.close()
    assert_logged_once(node, meters.meters)
    node.close()


def test_own_echo_on_a_loopback_port_is_counted_not_fatal(tmp_path):
    """pyserial's loop:// hands the master its own requests back (an adapter that echoes):
    they frame (at the silence) as answers of the wrong shape; counted, retried, no crash."""
    init_data_dir(tmp_path / "fog")
    node = FogNode(FogConfig(data_dir=tmp_path / "fog"), time.time)
    bus = BusMaster(node, "loop://", [1, 2], clock=time.time, timeout_s=0.1)
    try:
        assert bus.poll_once() == 0
        c = bus.counters
        assert c["requests"] == 4 and c["bad_answers"] == 4 and c["answers"] == 0
        assert bus.device_at(1) is None and bus.device_at(2) is None
        stop = threading.Event()
        stop.set()
        assert bus.poll_once(stop) == 0 and c["requests"] == 4  # a set stop ends the round
    finally:
        bus.close()
        node.close()


@pytest.mark.hil
def test_a_babbling_line_is_survived(rig_factory):
    """Every answer of one round replaced by noise: counted, nothing ingested, and the next
    round (a quiet line) drains the meters."""
    import random

    rig = rig_factory([1, 2])
    ms = rig.meters.meters
    rig.intervals(2)
    bus = rig.master([1, 2], timeout_s=0.2)
    rnd = random.Random(5)

    def noise(data: bytes) -> list[tuple[float, bytes]]:
        return [(0.0, bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))))]

    rig.line.answer_faults.extend([noise] * 4)
    assert bus.poll_once() == 0
    c = bus.counters
    assert c["requests"] == 4 and c["answers"] == 0
    assert c["crc_errors"] + c["garbage"] + c["bad_answers"] + c["timeouts"] >= 4
    poll_until(bus, drained(ms))
    assert_logged_once(rig.node, ms)


def test_the_example_config_is_every_setting_at_its_default() -> None:
    # docs/examples/fog.toml is what a newcomer copies: it must load, and it must show each
    # setting (but the simulation ones) at the default `fog_node run --help` states
    import dataclasses

    from fog_node.config import FogConfig

    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "fog.toml"
    assert load_config(example, {}) == FogConfig()
    text = example.read_text()
    for f in dataclasses.fields(FogConfig):
        if "meterledger.help" in f.metadata and not f.name.startswith("sim_"):
            assert f"\n{f.name} = " in text or f.name == "feeders", f.name


# --- the in-memory link twin -----------------------------------------------------------------
class MemoryDrop:
    """The meters' end of a MemoryLink as a multidrop line: what the master sends reaches
    every meter's port, what a meter sends goes to the master."""

    def __init__(self, link: MemoryLink) -> None:
        self.link = link
        self.ports: list[MemoryUart] = []

    def port(self) -> MemoryUart:
        self.ports.append(MemoryUart(self))
        return self.ports[-1]

    def pull(self) -> None:
        data = self.link.read()
        for p in self.ports:
            p.rx += data


class MemoryUart:
    """One meter's port on a MemoryDrop, with the MicroPython UART calls Rs485Slave uses."""

    def __init__(self, line: MemoryDrop) -> None:
        self.line = line
        self.link = line.link
        self.rx = bytearray()

    def any(self) -> int:
        self.line.pull()
        return len(self.rx)

    def read(self, n: int = 1) -> bytes | None:
        self.any()
        data = bytes(self.rx[:n])
        del self.rx[:n]
        return data or None

    def write(self, data: bytes) -> int:
        self.link.write(bytes(data))
        return len(data)


def test_memory_link_pairs_carry_bytes_both_ways_in_order():
    a, b = MemoryLink.pair()
    assert a.read() == b"" and b.read() == b""
    a.write(b"\x01\x02")
    a.write(b"\x03")
    b.wait(5.0)  # returns at once: bytes are there
    assert b.read() == b"\x01\x02\x03" and b.read() == b""
    b.write(b"ok")
    assert a.read() == b"ok"
    a.close()
    with pytest.raises(OSError):
        a.write(b"x")


def test_the_polling_protocol_over_the_in_memory_link(tmp_path):
    """The master's whole protocol (birth, readings, ack) with real firmware meters, over the
    in-memory twin of the serial line: the same outcome as on a pty, no device at all."""
    clock = ManualClock(T0 - 10)
    init_data_dir(tmp_path / "fog")
    node = FogNode(FogConfig(data_dir=tmp_path / "fog"), clock.now)
    fog_end, meters_end = MemoryLink.pair()
    line = MemoryDrop(meters_end)  # both meters hear the master, as on RS485
    meters = MeterThread()
    for i, address in enumerate((3, 4)):
        m = firmware_meter(tmp_path, i, clock, meter_config(node.key, i, address), line.port())
        meters.meters.append(m)
        apply_request(node, {"pub": m.app.meter.key.pub.hex(), "status": "active"})
    meters.start()
    opened: list[MemoryLink] = []

    def link() -> MemoryLink:
        opened.append(fog_end)
        return fog_end

    bus = BusMaster(node, "memory", [3, 4], clock=clock.now, timeout_s=FAST,
                    slow_timeout_s=SLOW, link=link)
    try:
        for _ in range(2):
            clock.advance(900)
            meters.step()
        poll_until(bus, drained(meters.meters))
        assert_logged_once(node, meters.meters)
        assert [bus.device_at(a) for a in (3, 4)] == [m.id for m in meters.meters]
        c = bus.counters
        assert c["timeouts"] == 0 and c["crc_errors"] == 0 and c["answers"] == c["requests"]
        assert opened == [fog_end]  # opened once, kept
    finally:
        bus.close()
        meters.stop()
        node.close()
    assert fog_end.closed
