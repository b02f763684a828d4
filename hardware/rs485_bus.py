"""An emulated half-duplex multidrop RS485 line joining N pseudo-terminals.

    python -m hardware.rs485_bus --endpoints 4 --baud 19200 [--noise P] [--seed S]

prints one device path per endpoint (the fog master opens one with pyserial, each virtual
or emulated meter another) and forwards until Ctrl-C.

Model (see docs/HIL.md):
- What one endpoint writes reaches every *other* endpoint, never the writer itself (a
  transceiver's receiver is disabled while it drives the line).
- With `pace` the line is a schedule of byte slots of 10 bit times (8N1) at `baud`; an
  endpoint's bytes take consecutive slots from the moment the bus reads them off its pty
  (or from the end of that endpoint's previous byte, as its UART would send them back to
  back). Back-to-back slots form a burst of line activity, and a burst is delivered in one
  piece as soon as its last slot has ended (a burst longer than 256 bytes, one maximal
  ADU, goes in pieces of what is due). So a transfer of N bytes takes at least N*10/baud
  seconds, as on a wire, and receivers see silences only where the line was silent: a
  per-byte drip paced by a Python thread would show them gaps inside frames whenever the
  thread is scheduled late (and a gap of 3.5 characters, 1.8 ms at 19200, ends a frame).
- A byte that starts while another transmitter's slot is on the line collides with it:
  it is ANDed into that slot (a dominant-low line) and takes its end time, and its
  transmitter's following bytes go into the following slots. Every receiver (anybody not
  driving that slot) gets the corrupted byte; each corrupted slot counts once in
  `counters["collisions"]`. Collisions are aligned to byte slots, which a real line is not.
- `noise` is a per-byte probability that one random bit of a line byte flips in transit
  (the same flipped byte for all receivers); `inject(data)` puts bytes on the line from no
  endpoint (all endpoints get them, and they collide like any other transmitter's).
- Without `pace` there is no line time: bytes are forwarded as soon as they are read and
  nothing ever collides (noise and inject still apply).
"""

from __future__ import annotations

import bisect
import math
import os
import random
import select
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from types import TracebackType

from hardware.pty import bytes_waiting, close_pty, open_pty
from meterledger.infra.args import ArgumentParser

INJECT = -1  # the transmitter of inject()ed bytes: no endpoint
MAX_BURST = 256  # one maximal ADU: a longer burst of line activity is delivered in pieces
_READ = 4096


@dataclass
class _Slot:
    start: float
    end: float
    value: int
    sources: set[int] = field(default_factory=set)


class Rs485Bus:
    """See the module doc. `paths[i]` is endpoint i's device; start()/stop() or `with`."""

    def __init__(self, endpoints: int, baud: int = 19200, *, noise: float = 0.0,
                 seed: int | None = None, pace: bool = True) -> None:
        if endpoints < 2:
            raise ValueError("a bus needs at least 2 endpoints")
        if baud <= 0:
            raise ValueError("baud must be positive")
        if not 0.0 <= noise <= 1.0:
            raise ValueError("noise is a probability")
        self.baud = baud
        self.byte_time = 10.0 / baud
        self.noise = noise
        self.pace = pace
        self.counters: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._masters: list[int] = []
        self.paths: list[str] = []
        try:
            for _ in range(endpoints):
                fd, path = open_pty()
                self._masters.append(fd)
                self.paths.append(path)
        except BaseException:
            for fd in self._masters:
                close_pty(fd)
            raise
        # pending line bytes as bursts of back-to-back slots, in time order
        self._bursts: deque[list[_Slot]] = deque()
        self._tx_end: dict[int, float] = {}  # transmitter -> end of its last slot
        self._injected: list[bytes] = []
        self._lock = threading.Lock()  # held while the thread moves bytes
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- control ---------------------------------------------------------------------

    def start(self) -> Rs485Bus:
        if self._closed:
            raise RuntimeError("bus stopped; make a new one")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rs485-bus", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop forwarding and close the pseudo-terminals (the paths go away)."""
        if self._closed:
            return
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self._closed = True
        for fd in self._masters:
            close_pty(fd)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> Rs485Bus:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def inject(self, data: bytes) -> None:
        """Put raw bytes on the line as if from nowhere: every endpoint receives them."""
        if not data:
            return
        with self._lock:
            self._injected.append(bytes(data))
        self._wake()

    def idle(self) -> bool:
        """True when nothing is in flight: no unread endpoint bytes, nothing undelivered."""
        with self._lock:
            return (not self._bursts and not self._injected
                    and not any(bytes_waiting(fd) for fd in self._masters))

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait (polling) until `idle()`; False if it did not happen within `timeout` (a limit
        on a hang: a loaded host delays the bus thread, and a paced line takes its time)."""
        deadline = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass

    # --- the line --------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        for fd in self._masters:
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        index = {fd: i for i, fd in enumerate(self._masters)}
        while not self._stopping:
            timeout_ms: int | None = None
            with self._lock:
                if self._bursts:
                    first = self._bursts[0]
                    due = first[min(len(first), MAX_BURST) - 1].end - time.monotonic()
                    timeout_ms = math.ceil(max(due, 0.0) * 1000)
            events = poller.poll(timeout_ms)
            if self._stopping:
                break
            with self._lock:
                now = time.monotonic()
                for fd, _ in events:
                    if fd == self._wake_r:
                        try:
                            while os.read(self._wake_r, 64):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        self._transmit(index[fd], self._drain(fd), now)
                injected, self._injected = self._injected, []
                for data in injected:
                    self.counters["injected"] += len(data)
                    self._transmit(INJECT, data, now)
                self._deliver(now)

    @staticmethod
    def _drain(fd: int) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = os.read(fd, _READ)
            except (BlockingIOError, OSError):  # OSError: EIO cannot happen while we hold
                break                           # the slave, but never kill the thread
            if not chunk:
                break
            out += chunk
            if len(chunk) < _READ:
                break
        return bytes(out)

    def _transmit(self, src: int, data: bytes, now: float) -> None:
        if not data:
            return
        if not self.pace:
            self._send([_Slot(now, now, b, {src}) for b in data])
            return
        tau = self.byte_time
        t = max(now, self._tx_end.get(src, 0.0))
        for b in data:
            slot = self._on_line(t)
            if slot is not None:  # another transmitter drives the line then: collision
                if len(slot.sources) == 1:
                    self.counters["collisions"] += 1
                slot.value &= b
                slot.sources.add(src)
            else:
                bursts = self._bursts
                last = bursts[-1][-1].end if bursts else -math.inf
                if t <= last + tau * 1e-6:  # back to back with the line's last byte
                    slot = _Slot(last, last + tau, b, {src})  # (t < last cannot happen)
                    bursts[-1].append(slot)
                else:
                    slot = _Slot(t, t + tau, b, {src})
                    bursts.append([slot])
            t = slot.end
        self._tx_end[src] = t

    def _on_line(self, t: float) -> _Slot | None:
        """The pending slot that a byte starting at t would overlap, if any.

        Pending slots after any time t >= now are back to back (every slot starts at the
        time its transmitter's bytes were read, or where that transmitter's previous slot
        ended), so a byte either overlaps a slot or starts after the line's last one."""
        tau = self.byte_time
        for burst in reversed(self._bursts):
            if burst[-1].end <= t:
                return None
            i = bisect.bisect_right(burst, t, key=lambda s: s.end)  # first slot ending > t
            if burst[i].start < t + tau * (1 - 1e-9):
                return burst[i]
        return None

    def _deliver(self, now: float) -> None:
        """Hand over every burst of line activity that has ended, in one piece: receivers see
        silences only where the line was silent (a per-byte drip, at the mercy of thread
        scheduling, would show them gaps inside frames). A burst longer than MAX_BURST goes
        in pieces of what is due."""
        bursts = self._bursts
        out: list[_Slot] = []
        while bursts and bursts[0][-1].end <= now:
            out += bursts.popleft()
        if bursts and len(bursts[0]) >= MAX_BURST and bursts[0][MAX_BURST - 1].end <= now:
            first = bursts[0]
            k = bisect.bisect_right(first, now, key=lambda s: s.end)
            out += first[:k]
            del first[:k]
        if out:
            self._send(out)

    def _send(self, slots: list[_Slot]) -> None:
        out = [bytearray() for _ in self._masters]
        for slot in slots:
            value = slot.value
            if self.noise and self._rng.random() < self.noise:
                value ^= 1 << self._rng.randrange(8)
                self.counters["noise_flips"] += 1
            self.counters["bytes"] += 1
            for i, buf in enumerate(out):
                if i not in slot.sources:
                    buf.append(value)
        for fd, buf in zip(self._masters, out, strict=True):
            done = 0
            while done < len(buf):
                try:
                    done += os.write(fd, buf[done:])
                except (BlockingIOError, OSError):  # nobody reads that endpoint: full
                    break
            if done < len(buf):
                self.counters["dropped"] += len(buf) - done


def main(argv: list[str] | None = None, prog: str = "python -m hardware.rs485_bus") -> int:
    ap = ArgumentParser(prog=prog,
                                 description="Emulated RS485 multidrop line over ptys.")
    ap.add_argument("--endpoints", type=int, default=2, help="number of endpoints (>= 2)")
    ap.add_argument("--baud", type=int, default=19200, help="line rate (pacing), 8N1")
    ap.add_argument("--noise", type=float, default=0.0,
                    help="per-byte probability of one flipped bit")
    ap.add_argument("--seed", type=int, default=None, help="seed for the noise")
    ap.add_argument("--no-pace", action="store_true",
                    help="forward at once (no line time, no collisions)")
    args = ap.parse_args(argv)
    stop = stop_on_sigterm()
    bus = Rs485Bus(args.endpoints, args.baud, noise=args.noise, seed=args.seed,
                   pace=not args.no_pace)
    with bus:
        for i, path in enumerate(bus.paths):
            print(f"endpoint {i}: {path}", flush=True)
        serve_until(stop)
    print(f"counters: {dict(bus.counters)}", file=sys.stderr, flush=True)
    return 0


def stop_on_sigterm() -> threading.Event:
    """An event that SIGTERM sets (a service manager's or a test's stop): the emulator then
    leaves its `with` block like after Ctrl-C, closing its ptys, and exits 0."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    return stop


def serve_until(stop: threading.Event) -> None:
    """Wait in the main thread (the emulator's own threads do the work) until SIGTERM or
    Ctrl-C."""
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
