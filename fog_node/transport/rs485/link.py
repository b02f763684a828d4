"""The RS485 line as the bus master sees it: bytes out, bytes in, a wait for bytes. Nothing
here knows Modbus; `BusMaster` (master.py) does the polling protocol over any `Link`.

`SerialLink` is the real line through pyserial (a device, a pty or a pyserial URL);
`MemoryLink` is its in-memory twin, one end of a pair whose other end a test (or an
emulated slave) reads and writes, so the polling protocol runs without a serial device.
"""

from __future__ import annotations

import select
import threading
import time
from typing import Any, Protocol


class Link(Protocol):
    def write(self, data: bytes) -> None:
        """Send `data` whole (flushed to the line on return)."""
        ...

    def read(self) -> bytes:
        """What has arrived since the last read; b"" when nothing has. Never blocks."""
        ...

    def wait(self, timeout_s: float) -> None:
        """Return when bytes may have arrived, or after `timeout_s` at the latest."""
        ...

    def close(self) -> None: ...


class SerialLink:
    """A pyserial port opened at `baud`, 8N1, non-blocking reads."""

    def __init__(self, url: str, baud: int) -> None:
        import serial  # pyserial: only the fog's bus needs it

        self._port: Any = serial.serial_for_url(url, baudrate=baud, bytesize=8, parity="N",
                                                stopbits=1, timeout=0)

    def write(self, data: bytes) -> None:
        self._port.write(data)
        self._port.flush()

    def read(self) -> bytes:
        n = self._port.in_waiting
        data: bytes = self._port.read(n if n > 0 else 1)
        return data

    def wait(self, timeout_s: float) -> None:
        fileno = getattr(self._port, "fileno", None)
        try:
            if fileno is None:
                raise OSError
            select.select([fileno()], [], [], timeout_s)
        except (OSError, ValueError):  # no descriptor to wait on (e.g. loop://)
            time.sleep(min(timeout_s, 0.0005))

    def close(self) -> None:
        self._port.close()


class MemoryLink:
    """One end of an in-memory line; `MemoryLink.pair()` gives both ends. What one end
    writes the other reads, in order; `wait` wakes on the peer's write."""

    def __init__(self, cond: threading.Condition, inbox: bytearray, outbox: bytearray) -> None:
        self._cond, self._in, self._out = cond, inbox, outbox
        self.closed = False

    @classmethod
    def pair(cls) -> tuple[MemoryLink, MemoryLink]:
        cond = threading.Condition()
        a_to_b, b_to_a = bytearray(), bytearray()
        return cls(cond, b_to_a, a_to_b), cls(cond, a_to_b, b_to_a)

    def write(self, data: bytes) -> None:
        with self._cond:
            if self.closed:
                raise OSError("the memory link is closed")
            self._out += data
            self._cond.notify_all()

    def read(self) -> bytes:
        with self._cond:
            data = bytes(self._in)
            self._in.clear()
            return data

    def wait(self, timeout_s: float) -> None:
        with self._cond:
            if not self._in and timeout_s > 0:
                self._cond.wait(timeout_s)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
