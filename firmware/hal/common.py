# What the MicroPython boards (hal.esp32, hal.rp2) share: clock, RTC/NTP, watchdog, relay, LED,
# Wi-Fi, RS485 half duplex and a Pin-IRQ S0 pulse counter. Each port subclasses MicroBoard and
# adds its pulse counter and port limits. Type-checked against the port stubs: tools/stubcheck.py.
#
# Config keys (all optional; hardware objects exist only for the pins given):
#   data_dir "/data"         fw_dir "/" (where the firmware files live: OTA updates them)
#   rtc_battery False (the RTC keeps valid time across power loss)
#   relay_pin, relay_active_high True, relay_initial True (state driven at boot; True =
#   supply connected, so a reboot never cuts a customer off; the app then restores the
#   last commanded state from the meter's flash)
#   led_pin (rp2: "LED")
#   s0_pin, s0_pull_up True, s0_edge "falling"|"rising", s0_min_ms 20 (IRQ debounce)
#   rs485_uart/_tx/_rx/_de/_baud 19200, meter_uart/_tx/_rx/_de/_baud 9600, and for both
#   prefixes _rxbuf 512, _timeout_ms 0, _timeout_char_ms 0 (UART read timeouts)
import os
import time
from time import ticks_add, ticks_diff, ticks_ms

import machine
import network
import ntptime

from core.compat import const
from core.fs import VfsFS

_Y2K = const(946684800)  # Unix time of 2000-01-01, the epoch of older bare-metal ports
_MIN_VALID = 1704067200  # 2024-01-01: an RTC before this was never set (not a small int)
_WIFI_POLL_MS = const(100)

# machine.reset_cause() constants by name; a port lacks some (rp2 has only PWRON and WDT,
# neither has BROWNOUT: ESP32 reports a brownout as PWRON, machine.reset() as HARD)
_CAUSES = (
    ("PWRON_RESET", "power"),
    ("BROWNOUT_RESET", "brownout"),
    ("WDT_RESET", "wdt"),
    ("HARD_RESET", "hard"),
    ("SOFT_RESET", "soft"),
    ("DEEPSLEEP_RESET", "deepsleep"),
)


class Rs485:
    """Half-duplex RS485 on a UART plus a driver-enable (DE) pin, high only while sending."""

    def __init__(self, uart: machine.UART, de: machine.Pin, baud: int):
        self._uart = uart
        self._de = de
        self._us_per_byte = 10_000_000 // baud + 1  # 8N1: 10 bits per byte
        # flush() waits until the stop bit of the last byte has left the shift register
        # (rp2, esp32 >= 1.20); older ESP32 firmware only has wait_tx_done(timeout_ms)
        self._flush = getattr(uart, "flush", None)
        self._wait_tx_done = getattr(uart, "wait_tx_done", None)
        de.value(0)

    def write(self, data: bytes) -> int:
        de = self._de
        de.value(1)
        try:
            n = self._uart.write(data) or 0
            self._drain(len(data))
        finally:
            de.value(0)
        return n

    def _drain(self, nbytes: int) -> None:
        if self._flush is not None:
            try:
                self._flush()
                return
            except OSError:  # timeout, or a stream flush the UART does not implement
                pass
        elif self._wait_tx_done is not None:
            if self._wait_tx_done(nbytes * self._us_per_byte // 1000 + 10):
                return
        # worst case: every byte still queued, plus one character of margin
        time.sleep_us((nbytes + 1) * self._us_per_byte)

    def read(self, n: int) -> bytes | None:
        return self._uart.read(n)

    def any(self) -> int:
        return self._uart.any()


class PulseIrq:
    """Counts falling (or rising) edges in a pin IRQ; edges closer than min_ms are bounce."""

    def __init__(self, pin: machine.Pin, min_ms: int, falling: bool, hard: bool):
        self.count = 0
        self._min = min_ms
        self._last = ticks_add(ticks_ms(), -min_ms - 1)
        trig = machine.Pin.IRQ_FALLING if falling else machine.Pin.IRQ_RISING
        if hard:  # runs in the interrupt itself: no allocation allowed below
            pin.irq(handler=self._edge, trigger=trig, hard=True)
        else:  # the ESP32 port only schedules Pin IRQs and takes no `hard` argument
            pin.irq(handler=self._edge, trigger=trig)

    def _edge(self, _pin: machine.Pin) -> None:
        t = ticks_ms()
        if ticks_diff(t, self._last) >= self._min:
            self._last = t
            self.count += 1


def _out_pin(pin_id: object, active_high: bool, on: bool) -> machine.Pin:
    return machine.Pin(pin_id, machine.Pin.OUT, value=1 if on == active_high else 0)


class MicroBoard:
    name = "micropython"
    _WDT_MAX_MS = 0  # 0: no port limit
    _BUS_UART = 1
    _METER_UART = 2
    _LED_PIN: object = None

    def __init__(self, config: dict):
        self._cfg = config
        self._fs: VfsFS | None = None
        self._fw_fs: VfsFS | None = None
        # older ESP32/rp2 firmware counts seconds from 2000-01-01, newer from 1970
        self._epoch = _Y2K if time.gmtime(0)[0] == 2000 else 0
        self._rtc = machine.RTC()
        self._synced = bool(config.get("rtc_battery")) and self.now() >= _MIN_VALID
        self._wdt: machine.WDT | None = None
        self._sleep_chunk = 0  # > 0 once the watchdog had to be clamped
        self._cause = self._decode_cause(machine.reset_cause())

        self._relay_hi = bool(config.get("relay_active_high", True))
        self._relay_on = bool(config.get("relay_initial", True))
        rp = config.get("relay_pin")
        self._relay = None if rp is None else _out_pin(rp, self._relay_hi, self._relay_on)

        lp = config.get("led_pin", self._LED_PIN)
        self._led = None if lp is None else _out_pin(lp, True, False)

        self._wlan: network.WLAN | None = None  # created on first use: the ESP32 Wi-Fi driver
        # takes tens of KB of RAM that an RS485-only meter keeps for itself
        self._uarts = {
            "bus": self._rs485(config, "rs485", self._BUS_UART, 19200),
            "meter": self._rs485(config, "meter", self._METER_UART, 9600),
        }

        self._pulses: PulseIrq | None = None
        s0 = config.get("s0_pin")
        if s0 is not None:
            # S0 is an open collector: pulled up, a pulse starts with a falling edge
            if config.get("s0_pull_up", True):
                pin = machine.Pin(s0, machine.Pin.IN, machine.Pin.PULL_UP)
            else:  # external pull-up (long cables, ESP32 GPIO34-39 have none)
                pin = machine.Pin(s0, machine.Pin.IN)
            falling = config.get("s0_edge", "falling") != "rising"
            self._start_counter(pin, int(config.get("s0_min_ms", 20)), falling)

    # -- hooks for the ports ------------------------------------------------------------------
    def _start_counter(self, pin: machine.Pin, min_ms: int, falling: bool) -> None:
        self._pulses = PulseIrq(pin, min_ms, falling, hard=True)

    def pulse_count(self) -> int:
        p = self._pulses
        return 0 if p is None else p.count

    # -- construction helpers -----------------------------------------------------------------
    @staticmethod
    def _decode_cause(code: int) -> str:
        for attr, label in _CAUSES:
            if getattr(machine, attr, None) == code:
                return label
        return "unknown"

    @staticmethod
    def _rs485(cfg: dict, pre: str, uart_id: int, baud: int) -> Rs485 | None:
        tx = cfg.get(pre + "_tx")
        if tx is None:
            return None
        baud = int(cfg.get(pre + "_baud", baud))
        uart = machine.UART(
            int(cfg.get(pre + "_uart", uart_id)),
            baudrate=baud,
            bits=8,
            parity=None,
            stop=1,
            tx=tx,
            rx=cfg[pre + "_rx"],
            rxbuf=int(cfg.get(pre + "_rxbuf", 512)),
            timeout=int(cfg.get(pre + "_timeout_ms", 0)),
            timeout_char=int(cfg.get(pre + "_timeout_char_ms", 0)),
        )
        return Rs485(uart, _out_pin(cfg[pre + "_de"], True, False), baud)

    # -- storage ------------------------------------------------------------------------------
    def fs(self) -> VfsFS:
        if self._fs is None:
            self._fs = VfsFS(self._cfg.get("data_dir", "/data"))
        return self._fs

    def fw_fs(self) -> VfsFS:
        """The filesystem the firmware files live in (the flash root): OTA installs here."""
        if self._fw_fs is None:
            self._fw_fs = VfsFS(self._cfg.get("fw_dir", "/"))
        return self._fw_fs

    # -- time ---------------------------------------------------------------------------------
    def now(self) -> int:
        return int(time.time()) + self._epoch  # int: some ports return a float

    def clock_synced(self) -> bool:
        return self._synced

    def set_time(self, unix: int) -> None:
        t = time.gmtime(unix - self._epoch)
        # RTC tuple: year, month, day, weekday (0 = Monday), hours, minutes, seconds, subseconds
        self._rtc.datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))
        self._synced = True

    def sync_ntp(self, host: str = "pool.ntp.org") -> bool:
        try:
            ntptime.host = host
            unix = ntptime.time() + self._epoch  # ntptime returns seconds in the port's epoch
        except Exception:  # DNS, socket timeout, short reply: whatever the network did
            return False
        if unix < _MIN_VALID:
            return False
        self.set_time(unix)
        return True

    def ticks_ms(self) -> int:
        return ticks_ms()  # type: ignore[return-value]  # the stubs make ticks an opaque type

    def ticks_diff(self, a: int, b: int) -> int:
        return ticks_diff(a, b)

    def sleep_ms(self, ms: int) -> None:
        chunk = self._sleep_chunk
        while chunk and ms > chunk:
            time.sleep_ms(chunk)
            self.watchdog_feed()
            ms -= chunk
        time.sleep_ms(ms)

    # -- system -------------------------------------------------------------------------------
    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def reset_cause(self) -> str:
        return self._cause

    def reboot(self) -> None:
        machine.reset()

    def machine_id(self) -> bytes:
        return machine.unique_id()

    def watchdog_start(self, timeout_ms: int) -> None:
        if self._wdt is not None:  # a started WDT cannot be stopped or reconfigured
            self._wdt.feed()
            return
        if self._WDT_MAX_MS and timeout_ms > self._WDT_MAX_MS:
            # the app asked for more than the hardware can do: clamp, and let sleep_ms() feed
            # the dog during sleeps the app assumed were safe
            timeout_ms = self._WDT_MAX_MS
            self._sleep_chunk = timeout_ms // 2
        self._wdt = machine.WDT(timeout=timeout_ms)

    def watchdog_feed(self) -> None:
        if self._wdt is not None:
            self._wdt.feed()

    # -- I/O ----------------------------------------------------------------------------------
    def relay(self, on: bool | None = None) -> bool:
        if on is not None:
            self._relay_on = bool(on)
            if self._relay is not None:
                self._relay.value(1 if self._relay_on == self._relay_hi else 0)
        return self._relay_on

    def led(self, on: bool) -> None:
        if self._led is not None:
            self._led.value(1 if on else 0)

    def uart_rs485(self, which: str = "bus") -> Rs485:
        port = self._uarts.get(which)
        if port is None:
            pre = "rs485" if which == "bus" else which
            raise ValueError("RS485 '%s' not configured (%s_tx/_rx/_de)" % (which, pre))
        return port

    # -- Wi-Fi --------------------------------------------------------------------------------
    def wifi_connect(self, ssid: str, password: str, timeout_ms: int = 15000) -> bool:
        w = self._wlan
        if w is None:
            w = self._wlan = network.WLAN(network.STA_IF)
        try:
            w.active(True)
            if w.isconnected():
                return True
            w.connect(ssid, password)
            t0 = ticks_ms()
            while not w.isconnected():
                if ticks_diff(ticks_ms(), t0) > timeout_ms:
                    w.disconnect()  # stop the background retries; the caller decides when
                    return False
                self.watchdog_feed()  # the rp2 WDT fires after 8.3 s at most
                time.sleep_ms(_WIFI_POLL_MS)
        except OSError:  # "Wifi Internal Error" and the like
            return False
        return True

    def wifi_connected(self) -> bool:
        return self._wlan is not None and self._wlan.isconnected()
