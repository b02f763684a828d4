"""A serial emulator of an Eastron SDM120/SDM630-style DIN-rail meter (Modbus RTU slave).

    python -m hardware.sdm_emulator --pty --profile daily:300,2000,3000,4000
    python -m hardware.sdm_emulator --port /dev/pts/7 --address 2 --no-answer-rate 0.1

FC 0x04 (read input registers) answers FLOAT32 values, big-endian, high word first, two
registers each (`REGISTERS`). A read of any register outside the map: exception 0x02; a
quantity of 0 or more than 125 registers: exception 0x03 (standard Modbus); any other
function code: exception 0x01; a frame with a bad CRC: no answer (the framer drops it,
counted `rx_crc_errors`); a broadcast (address 0): no answer; another address: ignored
(counted `other`).

Power follows a `LoadProfile` over the `clock` (Unix seconds, injectable); the energy
registers integrate it exactly: power is piecewise constant in whole milliwatts (a daily
shape is constant within each second of the clock, steps and constants between their
change points), time is counted in whole microseconds, and energy is kept as integer
nanojoules (mW x µs), so no rounding accumulates; the FLOAT32 is only the wire format.
Positive power counts into import, negative into export. A clock that goes back adds
nothing until it passes the latest time seen again.

Faults (each decided per request addressed to this meter, seeded, counted):
`alive = False` (vanished: answers nothing until set True again), `no_answer_rate`
(silent), `delay_s` (answers that much later), `noise_rate` (1..8 random bytes, then a
frame silence, then the answer), `crc_error_rate` (the answer's CRC is corrupted).
"""

from __future__ import annotations

import argparse
import math
import random
import select
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol

from hardware.pty import PtyPort, QuietTimeline
from hardware.rs485_bus import serve_until, stop_on_sigterm
from meterledger.infra.args import ArgumentParser
from meterledger.wire.modbus import (
    EX_ILLEGAL_ADDRESS,
    EX_ILLEGAL_FUNCTION,
    EX_ILLEGAL_VALUE,
    FC_READ_INPUT,
    MAX_REGISTERS,
    Frame,
    RtuFramer,
    adu,
    char_us,
    float32_words,
    silence_us,
)

NJ_PER_KWH = 3_600_000_000_000_000  # 1 kWh = 3.6e6 J = 3.6e15 nJ
NJ_PER_MWH = 3_600_000_000  # 1 mWh = 3.6 J
US = 1_000_000
DAY_S = 86_400

# register -> value name (each a FLOAT32 over this register and the next)
REGISTERS: dict[int, str] = {
    0x0000: "voltage",  # V
    0x0006: "current",  # A
    0x000C: "active_power",  # W, negative = export
    0x0012: "apparent_power",  # VA
    0x0018: "reactive_power",  # VAr
    0x001E: "power_factor",  # magnitude (lagging), 1.0 at no load
    0x0046: "frequency",  # Hz
    0x0048: "import_kwh",  # total import active energy
    0x004A: "export_kwh",  # total export active energy
    0x0156: "total_kwh",  # total active energy = import + export
}
_WORD_OWNER: dict[int, tuple[str, int]] = {}
for _reg, _name in REGISTERS.items():
    _WORD_OWNER[_reg] = (_name, 0)
    _WORD_OWNER[_reg + 1] = (_name, 1)


def _to_us(t: float) -> int:
    return round(t * US)


def _kwh_to_nj(kwh: float) -> int:
    # through the decimal repr, so 12345.6 kWh is exactly that many nJ
    return int(Decimal(repr(float(kwh))) * NJ_PER_KWH)


# --- load profiles -------------------------------------------------------------------------
def _bump(hour: float, centre: float, width: float) -> float:
    d = abs(hour - centre) % 24.0
    d = min(d, 24.0 - d)
    return math.exp(-0.5 * (d / width) ** 2)


@dataclass(frozen=True)
class LoadProfile:
    """Active power (W; negative = export) over the clock. Three kinds, string forms:

    - `constant:W` - always W;
    - `daily:BASE,MORNING,EVENING[,PV]` - by UTC time of day: BASE W plus a morning peak of
      MORNING W (around 07:30) and an evening one of EVENING W (around 19:00), minus PV W
      of solar at noon (a half sine 06:00-18:00; net power goes negative = export); the
      power is held constant within each second of the clock;
    - `steps:S=W,S=W,...` - W from S seconds after the emulator started (its first clock
      reading; 0 W before the first step), the last step holds for ever.
    """

    kind: str
    watts: float = 0.0
    base: float = 0.0
    morning: float = 0.0
    evening: float = 0.0
    pv: float = 0.0
    steps: tuple[tuple[float, float], ...] = ()

    @classmethod
    def constant(cls, watts: float) -> LoadProfile:
        return cls("constant", watts=float(watts))

    @classmethod
    def daily(cls, base: float, morning: float, evening: float, pv: float = 0.0) -> LoadProfile:
        return cls("daily", base=float(base), morning=float(morning), evening=float(evening),
                   pv=float(pv))

    @classmethod
    def step_list(cls, steps: Iterable[tuple[float, float]]) -> LoadProfile:
        ordered = tuple(sorted((float(s), float(w)) for s, w in steps))
        if not ordered:
            raise ValueError("steps: at least one (seconds, W) step")
        if len({s for s, _ in ordered}) != len(ordered):
            raise ValueError("steps: two steps at the same time")
        return cls("steps", steps=ordered)

    @classmethod
    def parse(cls, spec: str) -> LoadProfile:
        """`constant:800`, `daily:300,2000,3000[,4000]`, `steps:0=500,900=1500`."""
        kind, sep, rest = spec.strip().partition(":")
        if not sep:
            raise ValueError(f"profile {spec!r}: expected KIND:ARGS")
        try:
            if kind == "constant":
                return cls.constant(float(rest))
            if kind == "daily":
                nums = [float(x) for x in rest.split(",")]
                if len(nums) not in (3, 4):
                    raise ValueError("daily takes BASE,MORNING,EVENING[,PV]")
                return cls.daily(*nums)
            if kind == "steps":
                pairs = []
                for item in rest.split(","):
                    s, eq, w = item.partition("=")
                    if not eq:
                        raise ValueError(f"step {item!r}: expected SECONDS=W")
                    pairs.append((float(s), float(w)))
                return cls.step_list(pairs)
        except ValueError as e:
            raise ValueError(f"profile {spec!r}: {e}") from None
        raise ValueError(f"profile {spec!r}: unknown kind {kind!r} (constant, daily, steps)")

    def __str__(self) -> str:
        def g(x: float) -> str:
            return f"{x:g}"

        if self.kind == "constant":
            return f"constant:{g(self.watts)}"
        if self.kind == "daily":
            parts = [self.base, self.morning, self.evening] + ([self.pv] if self.pv else [])
            return "daily:" + ",".join(g(x) for x in parts)
        return "steps:" + ",".join(f"{g(s)}={g(w)}" for s, w in self.steps)

    def watts_at(self, t: float, origin: float = 0.0) -> float:
        """The power in W at clock time t (Unix s), for an emulator started at `origin`."""
        return self.power_mw(_to_us(t), _to_us(origin)) / 1000

    def power_mw(self, t_us: int, origin_us: int) -> int:
        """The power in whole mW at t_us (µs of the clock)."""
        if self.kind == "constant":
            return round(self.watts * 1000)
        if self.kind == "daily":
            hour = (t_us // US % DAY_S) / 3600.0
            w = (self.base + self.morning * _bump(hour, 7.5, 1.0)
                 + self.evening * _bump(hour, 19.0, 1.5))
            if self.pv and 6.0 < hour < 18.0:
                w -= self.pv * math.sin(math.pi * (hour - 6.0) / 12.0)
            return round(w * 1000)
        w = 0.0
        for s, sw in self.steps:
            if t_us - origin_us >= _to_us(s):
                w = sw
            else:
                break
        return round(w * 1000)

    def next_change_us(self, t_us: int, origin_us: int) -> int | None:
        """The first time after t_us at which the power may change (None: never)."""
        if self.kind == "constant":
            return None
        if self.kind == "daily":
            return (t_us // US + 1) * US
        for s, _ in self.steps:
            at = origin_us + _to_us(s)
            if at > t_us:
                return at
        return None


# --- the emulator --------------------------------------------------------------------------
class SerialLike(Protocol):
    """What the emulator needs of its port: pyserial's Serial, or `hardware.pty.PtyPort`."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1, /) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...


class SdmEmulator:
    """An SDM-style meter on `port` (see the module doc). start()/stop() or `with`."""

    def __init__(self, port: SerialLike, address: int = 1, *,
                 profile: LoadProfile | None = None,
                 clock: Callable[[], float] = time.time,
                 import_kwh: float = 0.0, export_kwh: float = 0.0,
                 voltage: float = 230.0, frequency: float = 50.0, power_factor: float = 0.95,
                 crc_error_rate: float = 0.0, no_answer_rate: float = 0.0,
                 delay_s: float = 0.0, noise_rate: float = 0.0,
                 seed: int | None = None, baud: int = 9600,
                 quiet_clock_us: Callable[[], int] | None = None) -> None:
        """`quiet_clock_us`: the clock (µs) that silences on the line are judged on, for the
        framer's `QuietTimeline` (default: the monotonic clock)."""
        if not 1 <= address <= 247:
            raise ValueError("address 1..247")
        for name, p in (("crc_error_rate", crc_error_rate), ("no_answer_rate", no_answer_rate),
                        ("noise_rate", noise_rate)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability")
        if delay_s < 0:
            raise ValueError("delay_s >= 0")
        if not 0.0 < power_factor <= 1.0:
            raise ValueError("power_factor in (0, 1]")
        self.port = port
        self.address = address
        self.profile = profile if profile is not None else LoadProfile.constant(0.0)
        self.clock = clock
        self.voltage = voltage
        self.frequency = frequency
        self.power_factor = power_factor
        self.crc_error_rate = crc_error_rate
        self.no_answer_rate = no_answer_rate
        self.delay_s = delay_s
        self.noise_rate = noise_rate
        self.baud = baud
        self.counters: Counter[str] = Counter()
        self.framer = RtuFramer(requests=True, baud=baud)
        self.owns_port = False  # close the port on stop() (on_pty / on_url)
        self._alive = True
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._import_nj = _kwh_to_nj(import_kwh)
        self._export_nj = _kwh_to_nj(export_kwh)
        self._origin_us = self._last_us = _to_us(clock())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the framer's clock (see poll)
        self._timeline = QuietTimeline() if quiet_clock_us is None else QuietTimeline(quiet_clock_us)

    # --- constructors ---
    @classmethod
    def on_pty(cls, address: int = 1, **kw: Any) -> tuple[SdmEmulator, str]:
        """The emulator on the master side of a new pty; open the returned slave path with
        pyserial to talk to it. Not started yet."""
        port = PtyPort()
        emu = cls(port, address, **kw)
        emu.owns_port = True
        return emu, port.path

    @classmethod
    def on_url(cls, url: str, address: int = 1, *, baud: int = 9600, **kw: Any) -> SdmEmulator:
        """The emulator on a pyserial URL or device path (e.g. an Rs485Bus endpoint)."""
        import serial

        port = serial.serial_for_url(url, baudrate=baud, timeout=0)
        emu = cls(port, address, baud=baud, **kw)
        emu.owns_port = True
        return emu

    # --- presence ---
    @property
    def alive(self) -> bool:
        return self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        if value != self._alive:
            self.counters["returned" if value else "vanished"] += 1
        self._alive = bool(value)

    # --- energy and values ---
    def _integrate(self) -> int:
        """Bring the energy registers up to the clock; returns the clock in µs."""
        now = _to_us(self.clock())
        t = self._last_us
        if now <= t:
            return now
        prof = self.profile
        origin = self._origin_us
        while t < now:
            nxt = prof.next_change_us(t, origin)
            end = now if nxt is None or nxt > now else nxt
            e = prof.power_mw(t, origin) * (end - t)
            if e >= 0:
                self._import_nj += e
            else:
                self._export_nj -= e
            t = end
        self._last_us = now
        return now

    @property
    def import_mwh(self) -> int:
        """Total import in whole mWh (floor), brought up to the clock."""
        with self._lock:
            self._integrate()
            return self._import_nj // NJ_PER_MWH

    @property
    def export_mwh(self) -> int:
        with self._lock:
            self._integrate()
            return self._export_nj // NJ_PER_MWH

    @property
    def energy_nj(self) -> tuple[int, int]:
        """(import, export) in nJ, exact, brought up to the clock."""
        with self._lock:
            self._integrate()
            return self._import_nj, self._export_nj

    def values(self) -> dict[str, float]:
        """Every register value (by `REGISTERS` name) at the clock's now."""
        with self._lock:
            now = self._integrate()
            p = self.profile.power_mw(now, self._origin_us) / 1000
            imp, exp = self._import_nj, self._export_nj
        s = abs(p) / self.power_factor
        return {
            "voltage": self.voltage,
            "current": s / self.voltage if self.voltage else 0.0,
            "active_power": p,
            "apparent_power": s,
            "reactive_power": math.sqrt(max(s * s - p * p, 0.0)),
            "power_factor": self.power_factor if p else 1.0,
            "frequency": self.frequency,
            "import_kwh": imp / NJ_PER_KWH,
            "export_kwh": exp / NJ_PER_KWH,
            "total_kwh": (imp + exp) / NJ_PER_KWH,
        }

    # --- Modbus ---
    def answer(self, frame: Frame) -> bytes | None:
        """The ADU this meter answers to a frame (faults aside); None: no answer."""
        if frame.address == 0:
            self.counters["broadcast"] += 1
            return None
        if frame.address != self.address:
            self.counters["other"] += 1
            return None
        if frame.fc != FC_READ_INPUT:
            return self._exception(frame.fc, EX_ILLEGAL_FUNCTION)
        if len(frame.data) != 4:
            return self._exception(frame.fc, EX_ILLEGAL_VALUE)
        start, count = struct.unpack(">HH", frame.data)
        if not 1 <= count <= MAX_REGISTERS:
            return self._exception(frame.fc, EX_ILLEGAL_VALUE)
        regs = range(start, start + count)
        if any(r not in _WORD_OWNER for r in regs):
            return self._exception(frame.fc, EX_ILLEGAL_ADDRESS)
        vals = self.values()
        words = []
        for r in regs:
            name, half = _WORD_OWNER[r]
            words.append(float32_words(vals[name])[half])
        self.counters["reads"] += 1
        return adu(self.address, FC_READ_INPUT,
                   bytes((2 * count,)) + struct.pack(f">{count}H", *words))

    def _exception(self, fc: int, code: int) -> bytes:
        self.counters["exceptions"] += 1
        self.counters[f"exception_{code:#04x}"] += 1
        return adu(self.address, (fc | 0x80) & 0xFF, bytes((code,)))

    def handle(self, frame: Frame) -> None:
        """Answer one received frame, with the faults applied."""
        if frame.address == self.address:
            self.counters["requests"] += 1
            if not self._alive:
                self.counters["dead"] += 1
                return
            if self.no_answer_rate and self._rng.random() < self.no_answer_rate:
                self.counters["no_answer"] += 1
                return
        reply = self.answer(frame)
        if reply is None:
            return
        if self.delay_s:
            self.counters["delayed"] += 1
            if self._stop.wait(self.delay_s):
                return
        if self.noise_rate and self._rng.random() < self.noise_rate:
            garbage = bytes(self._rng.randrange(256) for _ in range(self._rng.randint(1, 8)))
            self.counters["noise"] += 1
            self.counters["noise_bytes"] += len(garbage)
            self.port.write(garbage)
            # a frame silence after the garbage has left the wire, so a framer drops it
            gap_us = len(garbage) * char_us(self.baud) + 2 * silence_us(self.baud)
            if self._stop.wait(gap_us / US):
                return
        if self.crc_error_rate and self._rng.random() < self.crc_error_rate:
            self.counters["crc_corrupted"] += 1
            reply = reply[:-2] + bytes((reply[-2] ^ 0xFF, reply[-1]))
        self.port.write(reply)
        self.counters["answers"] += 1

    # --- serving ---
    def _wait_readable(self, timeout: float) -> None:
        fileno = getattr(self.port, "fileno", None)
        if fileno is not None:
            try:
                select.select([fileno()], [], [], timeout)
                return
            except (OSError, ValueError, TypeError, AttributeError):
                pass
        self._stop.wait(min(timeout, 0.001))

    def poll(self, timeout: float = 0.0) -> int:
        """Read what has arrived (waiting up to `timeout` s for it), answer every frame that
        is complete; returns the number of frames handled.

        Silences are judged on a `QuietTimeline` (only quiet that was seen counts), so a
        slow or descheduled emulator thread never splits a frame with a silence that was
        not on the line."""
        frames: list[Frame] = []
        n = self.port.in_waiting
        if not n:
            frames += self.framer.idle(self._timeline.quiet())
            if not frames and timeout > 0:
                self._wait_readable(timeout)
                n = self.port.in_waiting
                if not n:
                    frames += self.framer.idle(self._timeline.quiet())
        if n:
            data = self.port.read(n)
            frames += self.framer.feed(data, self._timeline.arrived())
        fc = self.framer.counters
        self.counters["rx_crc_errors"] = fc["crc_errors"]
        self.counters["rx_garbage"] = fc["garbage"]
        for frame in frames:
            self.handle(frame)
        return len(frames)

    def serve_forever(self) -> None:
        """Serve until stop() (or until the port fails, e.g. closed under us)."""
        while not self._stop.is_set():
            try:
                self.poll(0.002 if self.framer.pending else 0.02)
            except (OSError, ValueError, TypeError):
                if self._stop.is_set():
                    break
                raise

    def start(self) -> SdmEmulator:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.serve_forever, daemon=True,
                                            name=f"sdm-emulator-{self.address}")
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; an owned port (on_pty / on_url) is closed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self.owns_port:
            close = getattr(self.port, "close", None)
            if close is not None:
                close()
            self.owns_port = False

    def __enter__(self) -> SdmEmulator:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _profile_arg(spec: str) -> LoadProfile:
    try:
        return LoadProfile.parse(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None, prog: str = "python -m hardware.sdm_emulator") -> int:
    ap = ArgumentParser(prog=prog,
                                 description="Eastron SDM-style Modbus RTU meter emulator.")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal")
    where.add_argument("--port", metavar="URL", help="serve on a pyserial URL or device path")
    ap.add_argument("--address", type=int, default=1, help="Modbus address 1..247")
    ap.add_argument("--baud", type=int, default=9600, help="line rate (frame silence)")
    ap.add_argument("--profile", type=_profile_arg, default=LoadProfile.constant(0.0),
                    help="constant:W | daily:BASE,MORNING,EVENING[,PV] | steps:S=W,...")
    ap.add_argument("--import-kwh", type=float, default=0.0,
                    help="the import register at start, kWh (default: 0)")
    ap.add_argument("--export-kwh", type=float, default=0.0,
                    help="the export register at start, kWh (default: 0)")
    ap.add_argument("--voltage", type=float, default=230.0,
                    help="the line voltage it reports, V (default: 230)")
    ap.add_argument("--crc-error-rate", type=float, default=0.0,
                    help="probability that an answer carries a corrupted CRC")
    ap.add_argument("--no-answer-rate", type=float, default=0.0,
                    help="probability that a request is ignored")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="answer this much later")
    ap.add_argument("--noise", type=float, default=0.0,
                    help="probability of random bytes on the line before an answer")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the load profile's noise (default: random)")
    args = ap.parse_args(argv)
    kw: dict[str, Any] = dict(
        profile=args.profile, import_kwh=args.import_kwh, export_kwh=args.export_kwh,
        voltage=args.voltage, crc_error_rate=args.crc_error_rate,
        no_answer_rate=args.no_answer_rate, delay_s=args.delay_ms / 1000,
        noise_rate=args.noise, seed=args.seed, baud=args.baud)
    stop = stop_on_sigterm()
    if args.pty:
        emu, path = SdmEmulator.on_pty(args.address, **kw)
    else:
        emu, path = SdmEmulator.on_url(args.port, args.address, **kw), args.port
    with emu:
        print(path, flush=True)
        serve_until(stop)
    print(f"counters: {dict(emu.counters)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
