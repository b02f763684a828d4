# The host Board: same interface as the MicroPython boards, on CPython, for virtual meters and
# tests. Nothing here touches hardware; time, pulses, relay and reset cause are injectable.
#
# Config keys (besides the board ones that make sense here):
#   data_dir       directory the fs() lives in (required to call fs())
#   fw_dir         directory of the meter's firmware files, which OTA updates replace (default
#                  data_dir/fw: a host meter runs the repository's firmware, this directory
#                  only shows what an update installed or rolled back)
#   clock          callable -> Unix seconds (simulated or compressed time); default time.time
#   ticks_ms       callable -> milliseconds (monotonic); default time.monotonic
#   sleep_ms       callable(ms); default time.sleep
#   synced         bool, clock_synced() at start (default True)
#   ntp_ok         bool, what sync_ntp() reports (default True)
#   reset_cause    string returned by reset_cause() (default "power")
#   machine_id     bytes or str; default derived from data_dir
#   rs485_port / meter_port   pyserial port or URL ("/dev/ttyUSB0", "loop://", "socket://...")
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

from core.fs import VfsFS


class HostReboot(SystemExit):
    """Raised by reboot(): machine.reset() never returns; the harness restarts the meter."""


class SerialRs485:
    """A pyserial port with the MicroPython UART calls the app uses (half duplex is the
    adapter's business on a host: USB-RS485 dongles switch DE themselves)."""

    def __init__(self, port: Any):
        self.port = port

    def write(self, data: bytes) -> int:
        n: int = self.port.write(data)
        self.port.flush()
        return n

    def read(self, n: int) -> bytes | None:
        b: bytes = self.port.read(n)
        return b or None  # MicroPython UART.read returns None when nothing arrived

    def any(self) -> int:
        n: int = self.port.in_waiting
        return n

    def close(self) -> None:
        self.port.close()


class Board:
    name = "host"

    def __init__(self, config: dict[str, Any]):
        self._cfg = config
        self._fs: VfsFS | None = None
        self._fw_fs: VfsFS | None = None
        self._clock: Callable[[], float] = config.get("clock") or time.time
        self._ticks: Callable[[], int] | None = config.get("ticks_ms")
        self._sleep: Callable[[int], None] | None = config.get("sleep_ms")
        self._offset = 0
        self._synced = bool(config.get("synced", True))
        self._pulses = 0
        self._relay_on = bool(config.get("relay_initial", True))
        self._uarts: dict[str, SerialRs485] = {}
        self.led_on = False
        self.wdt_timeout_ms: int | None = None
        self.wdt_feeds = 0

    # -- storage ------------------------------------------------------------------------------
    def fs(self) -> VfsFS:
        if self._fs is None:
            root = self._cfg.get("data_dir")
            if not root:
                raise ValueError("host Board needs config['data_dir']")
            self._fs = VfsFS(str(root))
        return self._fs

    def fw_fs(self) -> VfsFS:
        if self._fw_fs is None:
            root = self._cfg.get("fw_dir")
            if not root:
                if not self._cfg.get("data_dir"):
                    raise ValueError("host Board needs config['data_dir'] or config['fw_dir']")
                root = os.path.join(str(self._cfg["data_dir"]), "fw")
            self._fw_fs = VfsFS(str(root))
        return self._fw_fs

    # -- time ---------------------------------------------------------------------------------
    def now(self) -> int:
        return int(self._clock()) + self._offset

    def clock_synced(self) -> bool:
        return self._synced

    def set_time(self, unix: int) -> None:
        self._offset = int(unix) - int(self._clock())
        self._synced = True

    def sync_ntp(self, host: str = "pool.ntp.org") -> bool:
        if not self._cfg.get("ntp_ok", True):
            return False
        self._synced = True  # the host clock is the reference already
        return True

    def ticks_ms(self) -> int:
        if self._ticks is not None:
            return int(self._ticks())
        return int(time.monotonic() * 1000)

    def ticks_diff(self, a: int, b: int) -> int:
        return a - b

    def sleep_ms(self, ms: int) -> None:
        if self._sleep is not None:
            self._sleep(ms)
        else:
            time.sleep(ms / 1000)

    # -- system -------------------------------------------------------------------------------
    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def reset_cause(self) -> str:
        return str(self._cfg.get("reset_cause", "power"))

    def reboot(self) -> None:
        raise HostReboot("reboot requested")

    def machine_id(self) -> bytes:
        mid = self._cfg.get("machine_id")
        if isinstance(mid, bytes):
            return mid
        if isinstance(mid, str):
            return mid.encode()
        seed = str(self._cfg.get("data_dir", "host")).encode()
        return hashlib.sha256(seed).digest()[:8]

    def watchdog_start(self, timeout_ms: int) -> None:
        self.wdt_timeout_ms = timeout_ms

    def watchdog_feed(self) -> None:
        if self.wdt_timeout_ms is not None:
            self.wdt_feeds += 1

    # -- I/O ----------------------------------------------------------------------------------
    def pulse_count(self) -> int:
        return self._pulses

    def inject_pulses(self, n: int) -> None:
        self._pulses += n

    def relay(self, on: bool | None = None) -> bool:
        if on is not None:
            self._relay_on = bool(on)
        return self._relay_on

    def led(self, on: bool) -> None:
        self.led_on = bool(on)

    def uart_rs485(self, which: str = "bus") -> SerialRs485:
        if which in self._uarts:
            return self._uarts[which]
        pre = "rs485" if which == "bus" else which
        url = self._cfg.get(pre + "_port")
        if not url:
            raise ValueError(
                "host RS485 '%s' needs config['%s_port'] (a serial device or pyserial URL)"
                % (which, pre)
            )
        import serial  # pyserial, only needed by meters that talk RS485

        port = serial.serial_for_url(
            url,
            baudrate=int(self._cfg.get(pre + "_baud", 19200 if which == "bus" else 9600)),
            bytesize=8,
            parity="N",
            stopbits=1,
            timeout=0,
        )
        self._uarts[which] = SerialRs485(port)
        return self._uarts[which]

    # -- Wi-Fi --------------------------------------------------------------------------------
    def wifi_connect(self, ssid: str, password: str, timeout_ms: int = 15000) -> bool:
        return True

    def wifi_connected(self) -> bool:
        return True
