# ESP32-DevKitC. Differences from hal.common:
#  - S0 pulses go to the PCNT hardware counter (machine.Counter, MicroPython >= 1.26) so that no
#    pulse is lost while the VM is busy; its glitch filter tops out at ~12.8 us, so s0_min_ms
#    debouncing applies only to the Pin IRQ fallback (older firmware, or config s0_mode "irq").
#  - ESP32 Pin IRQs are always soft (scheduled), so the fallback runs without `hard` and sees
#    dispatch times, not edge times: keep s0_min_ms well below the shortest pulse period.
#  - PCNT unit from config "s0_counter" (default 0).
#  - Default UARTs: bus on UART2, meter on UART1 (UART0 is the REPL). Pins always come from
#    config: avoid GPIO6-11 (flash) and, on WROVER modules, GPIO16/17 (PSRAM).
import machine

from core.compat import const
from hal.common import MicroBoard, PulseIrq

_FILTER_NS = const(12_800)  # the longest PCNT glitch filter (1023 APB cycles at 80 MHz)


class Board(MicroBoard):
    name = "esp32"
    _BUS_UART = 2
    _METER_UART = 1

    def __init__(self, config: dict):
        self._ctr: machine.Counter | None = None
        super().__init__(config)

    def _start_counter(self, pin: machine.Pin, min_ms: int, falling: bool) -> None:
        if hasattr(machine, "Counter") and self._cfg.get("s0_mode", "auto") != "irq":
            edge = machine.Counter.FALLING if falling else machine.Counter.RISING
            self._ctr = machine.Counter(
                int(self._cfg.get("s0_counter", 0)), pin, edge=edge, filter_ns=_FILTER_NS
            )
        else:
            self._pulses = PulseIrq(pin, min_ms, falling, hard=False)

    def pulse_count(self) -> int:
        if self._ctr is not None:
            return int(self._ctr.value())
        return super().pulse_count()
