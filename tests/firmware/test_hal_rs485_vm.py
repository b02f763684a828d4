"""The RS485 half-duplex driver of the boards (hal/common.py `Rs485`), run in the real
MicroPython VM. No UART or pin exists there, so `machine` (and the `network`/`ntptime` it
sits beside) are small recording fakes: the one place this project fakes hardware, because
no real part can run here. What is checked is the order of events on the driver-enable pin
against the UART: DE high before the first byte, low only after the last stop bit has left
(flush / wait_tx_done / a computed wait), low again after an error, and one DE cycle per
answer when the meter's Modbus slave replies."""

from __future__ import annotations

import pytest

from hardware.mpvm import run_micropython

pytestmark = [pytest.mark.vm]

FAKE_MACHINE = r'''
EVENTS = []
PWRON_RESET = 1
WDT_RESET = 3


class Pin:
    OUT = 1
    IN = 0
    PULL_UP = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8

    def __init__(self, pin_id, mode=None, pull=None, value=None):
        self.id = pin_id
        self.v = 0 if value is None else value

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v
        EVENTS.append(("pin", self.id, v))


class UART:
    MODE = "flush"  # or "wait_tx_done", "none", "fail"

    def __init__(self, uart_id, **kw):
        self.id = uart_id
        self.kw = kw
        self.rx = b""
        self.de = None  # the test tells the fake which pin is DE, to log its level
        mode = UART.MODE
        if mode == "wait_tx_done":
            self.wait_tx_done = self._wait
        if mode in ("flush", "fail"):
            self.flush = self._flush

    def _level(self):
        return None if self.de is None else self.de.v

    def write(self, data):
        if UART.MODE == "fail":
            EVENTS.append(("write-fails", self._level()))
            raise OSError(5)
        EVENTS.append(("write", bytes(data), self._level()))
        return len(data)

    def _flush(self):
        EVENTS.append(("flush", self._level()))

    def _wait(self, timeout_ms):
        EVENTS.append(("wait_tx_done", timeout_ms, self._level()))
        return True

    def read(self, n):
        out, self.rx = self.rx[:n], self.rx[n:]
        return out or None

    def any(self):
        return len(self.rx)


class RTC:
    def datetime(self, t=None):
        return (2027, 1, 1, 4, 0, 0, 0, 0)


def reset_cause():
    return PWRON_RESET


def unique_id():
    return b"\x01\x02\x03\x04"
'''

FAKES = {
    "/fakes/machine.py": FAKE_MACHINE.encode(),
    "/fakes/network.py": b"STA_IF = 0\n",
    "/fakes/ntptime.py": b"host = ''\n",
}

PRELUDE = r'''
import sys
sys.path.append("/fakes")
import machine
from hal.common import MicroBoard, Rs485

def board(mode):
    machine.UART.MODE = mode
    b = MicroBoard({"data_dir": "/flash", "rs485_tx": 17, "rs485_rx": 16, "rs485_de": 4,
                    "rs485_baud": 9600})
    port = b.uart_rs485("bus")
    port._uart.de = port._de
    machine.EVENTS.clear()
    return b, port
'''


def vm(code: str) -> list[str]:
    return run_micropython(PRELUDE + code, files=FAKES).strip().splitlines()


def test_de_is_high_for_exactly_the_frame_with_flush():
    out = vm(r'''
b, port = board("flush")
print(port._uart.kw["baudrate"], port._uart.kw["bits"], port._uart.kw["parity"], port._uart.kw["stop"])
port.write(b"\x01\x04\x00")
for e in machine.EVENTS:
    print(e)
''')
    assert out[0] == "9600 8 None 1"  # 8N1 at the configured baud
    assert out[1:] == ["('pin', 4, 1)", "('write', b'\\x01\\x04\\x00', 1)", "('flush', 1)",
                       "('pin', 4, 0)"]


def test_de_stays_high_until_wait_tx_done_on_older_esp32_firmware():
    out = vm(r'''
b, port = board("wait_tx_done")
port.write(bytes(20))
for e in machine.EVENTS:
    print(e)
''')
    # 20 bytes at 9600 baud 8N1 take 20.8 ms on the wire: the timeout covers them
    assert out[0] == "('pin', 4, 1)"
    assert out[1].startswith("('write', ") and out[1].endswith(", 1)")
    kind, timeout_ms, level = out[2].strip("()").split(", ")
    assert kind == "'wait_tx_done'" and int(timeout_ms) >= 21 and level == "1"
    assert out[3] == "('pin', 4, 0)"


def test_without_a_drain_call_de_waits_the_computed_line_time():
    out = vm(r'''
import time
b, port = board("none")
t0 = time.ticks_us()
port.write(bytes(96))
dt = time.ticks_diff(time.ticks_us(), t0)
for e in machine.EVENTS:
    print(e)
print("waited_us", dt)
''')
    assert out[0] == "('pin', 4, 1)" and out[2] == "('pin', 4, 0)"
    # 96 bytes + one character of margin at 9600 baud: at least 97 * 1042 us with DE high
    assert int(out[3].split()[1]) >= 97 * 1000


def test_a_failing_uart_write_still_releases_the_line():
    out = vm(r'''
b, port = board("fail")
try:
    port.write(b"\x01")
except OSError:
    print("raised")
for e in machine.EVENTS:
    print(e)
''')
    assert out == ["raised", "('pin', 4, 1)", "('write-fails', 1)", "('pin', 4, 0)"]


def test_the_de_pin_starts_low_so_a_booting_meter_never_holds_the_bus():
    out = vm(r'''
machine.UART.MODE = "flush"
b = MicroBoard({"data_dir": "/flash", "rs485_tx": 17, "rs485_rx": 16, "rs485_de": 4})
port = b.uart_rs485("bus")
print(port._de.v, port._uart.kw["baudrate"])
''')
    assert out == ["0 19200"]  # and SPEC's default baud


def test_the_slave_answers_each_request_in_one_de_cycle():
    """The meter's Modbus slave on the board's Rs485: a request for an unknown function code
    gets its exception answer as one write inside one DE-high window."""
    out = vm(r'''
from core import modbus
from transport_rs485 import Rs485Slave
b, port = board("flush")
slave = Rs485Slave(port, 7, 9600)
port._uart.rx = modbus.adu(7, 0x2B, b"\x0e\x01\x00")  # read device id: not ours
for _ in range(50):
    slave.poll()
import time
time.sleep_ms(10)  # the silence ends the frame of an unknown function code
slave.poll()
for e in machine.EVENTS:
    print(e)
print(modbus.adu(7, 0x2B | 0x80, b"\x01").hex())
''')
    assert out[0] == "('pin', 4, 1)" and out[2] == "('flush', 1)" and out[3] == "('pin', 4, 0)"
    written = out[1]
    assert written.startswith("('write', b'") and written.endswith("', 1)")
    assert len(out) == 5  # exactly one DE cycle
    expected = bytes.fromhex(out[4])
    assert written == f"('write', {expected!r}, 1)"
