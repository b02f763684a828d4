"""Pseudo-terminals for hardware-in-the-loop tests: a serial port without the hardware.

`open_pty()` gives the master side (a non-blocking fd that this process drives) and the
path of the slave side (a tty device that a program under test opens with pyserial, as
it would /dev/ttyUSB0). The slave is put in raw mode (no echo, no newline translation,
no line editing); pyserial sets raw mode itself again when it opens the device.

Linux caveat, handled here: once the *last* holder of the slave side closes it, reads on
the master fail with EIO (and `poll` reports POLLHUP continuously) until somebody opens the
slave again. So `open_pty()` keeps the slave fd it got from `openpty()` open itself, held
until `close_pty(master)`: the endpoints under test can then open, close and reopen the
path as often as they like and the master never sees EIO. The held fd is never read, so
bytes written to the master while no endpoint has the slave open stay in the slave's input
queue (pyserial flushes that queue when it opens the port); once the queue is full (some
KB) writes on the master fail with EAGAIN, which `PtyPort.write` reports as a short write.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import termios
import threading
import time
import tty
from collections.abc import Callable
from types import TracebackType

# master fd -> the slave fd we hold so that the master never sees EIO
_held: dict[int, int] = {}
_held_lock = threading.Lock()


def open_pty() -> tuple[int, str]:
    """A new pseudo-terminal: (master fd, non-blocking; slave device path, raw mode).

    The slave's own fd stays open (held) until `close_pty(master)`; see the module doc."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        path = os.ttyname(slave)
        os.set_blocking(master, False)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    with _held_lock:
        _held[master] = slave
    return master, path


def close_pty(master: int) -> None:
    """Close a master fd from `open_pty()` and the slave fd held for it (idempotent)."""
    with _held_lock:
        slave = _held.pop(master, None)
    for fd in (master, slave):
        if fd is None:
            continue
        try:
            os.close(fd)
        except OSError:
            pass


def bytes_waiting(fd: int) -> int:
    """Bytes readable on a tty fd right now (FIONREAD); 0 when the fd cannot tell."""
    try:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


class PtyPort:
    """A pseudo-terminal's master side with a small pyserial-like API.

    `PtyPort()` opens a new pty (`.path` is the slave for the other end); `PtyPort(fd)`
    wraps an existing master fd (it is then closed by `close()` all the same). `read(n)`
    never blocks (returns what is there, possibly b""), unless a `timeout` in seconds is
    set, in which case it waits up to that long for the first byte, as pyserial does."""

    def __init__(self, fd: int | None = None, *, timeout: float | None = None) -> None:
        if fd is None:
            fd, path = open_pty()
        else:
            os.set_blocking(fd, False)
            try:
                path = os.ttyname(_held.get(fd, fd))
            except OSError:
                path = ""
        self.fd = fd
        self.path = path
        self.timeout = timeout
        self._closed = False

    @property
    def is_open(self) -> bool:
        return not self._closed

    def fileno(self) -> int:
        return self.fd

    @property
    def in_waiting(self) -> int:
        return 0 if self._closed else bytes_waiting(self.fd)

    def read(self, n: int = 1) -> bytes:
        if self._closed:
            raise ValueError("port closed")
        if n <= 0:
            return b""
        if self.timeout and not self.in_waiting:
            select.select([self.fd], [], [], self.timeout)
        try:
            return os.read(self.fd, n)
        except BlockingIOError:
            return b""
        except OSError as e:
            if e.errno == errno.EIO:  # no holder of the slave side (only without our hold)
                return b""
            raise

    def write(self, data: bytes) -> int:
        """Write what the pty takes now; returns the count (short when its queue is full)."""
        if self._closed:
            raise ValueError("port closed")
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                done += os.write(self.fd, view[done:])
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EIO:
                    break
                raise
        return done

    def flush(self) -> None:
        """Nothing to do: writes go straight to the pty."""

    def reset_input_buffer(self) -> None:
        while self.read(4096):
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close_pty(self.fd)

    def __enter__(self) -> PtyPort:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _mono_us() -> int:
    return time.monotonic_ns() // 1000


class QuietTimeline:
    """Timestamps (µs) for a Modbus RTU framer fed from a pty (or a USB adapter), where the
    time a read happens says little about when its bytes came.

    Stamping each read with the time of the read turns any delay of the reading thread (the
    GIL, a loaded host) into a silence that was never on the line, and a silence in the
    middle of a frame makes the framer throw the frame away. This timeline counts only the
    quiet that was *seen*: call `quiet()` whenever the port is found empty (pass the result
    to `framer.idle`), and `arrived()` right after reading bytes (pass it to `framer.feed`).
    Bytes found waiting are stamped with the moment the port was last seen empty, and the
    quiet after them counts from the moment they were read; a real silence is seen as
    at least what it was minus one polling interval, never more."""

    def __init__(self, clock_us: Callable[[], int] = _mono_us) -> None:
        self._clock = clock_us
        self._v_last = 0  # timeline stamp of the last read
        self._v_quiet = 0  # timeline stamp of the last time the port was seen empty
        self._r_last = clock_us()  # real time of the last read

    def quiet(self) -> int:
        self._v_quiet = self._v_last + max(0, self._clock() - self._r_last)
        return self._v_quiet

    def arrived(self) -> int:
        self._v_last = self._v_quiet
        self._r_last = self._clock()
        return self._v_last
