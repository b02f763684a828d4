# Hardware abstraction layer: one `Board` class per target, all with the same interface.
#   hal.esp32  ESP32-DevKitC (MicroPython)      hal.rp2   Raspberry Pi Pico W (MicroPython)
#   hal.host   CPython: virtual meters and tests
# The board modules are imported lazily: each one imports modules that exist only on its target.
import sys


def detect() -> str:
    """'esp32' or 'rp2' on those MicroPython ports (sys.platform), else 'host'."""
    p = sys.platform
    if p == "esp32" or p == "rp2":
        return p
    return "host"


def make_board(config: dict, kind: str | None = None):
    """The Board for this interpreter (or for `kind`), built from `config`."""
    kind = kind or detect()
    if kind == "esp32":
        from hal import esp32

        return esp32.Board(config)
    if kind == "rp2":
        from hal import rp2

        return rp2.Board(config)
    if kind == "host":
        from hal import host

        return host.Board(config)
    raise ValueError("unknown board: " + str(kind))
