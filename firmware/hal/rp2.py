# Raspberry Pi Pico W (RP2040; the Pico 2 W reports the same sys.platform). Differences from
# hal.common:
#  - S0 pulses are counted in a hard Pin IRQ (exact edge times, so s0_min_ms debouncing works).
#  - The watchdog cannot exceed 8388 ms: longer timeouts are clamped, feed more often than that.
#  - machine.reset_cause() only knows PWRON and WDT, and machine.reset() itself goes through the
#    watchdog, so a reboot() reads back as "wdt".
#  - Status LED defaults to the "LED" pin (on the Pico W it hangs off the CYW43 Wi-Fi chip).
import micropython

from hal.common import MicroBoard

micropython.alloc_emergency_exception_buf(100)  # report errors raised inside the hard IRQ


class Board(MicroBoard):
    name = "rp2"
    # a Pico W has 848 KiB of filesystem: 2048 readings (21 days) leave room for the rest
    spool_capacity = 2048
    _WDT_MAX_MS = 8388
    _BUS_UART = 0
    _METER_UART = 1
    _LED_PIN = "LED"
