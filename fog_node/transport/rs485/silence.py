"""What the log says of RS485 addresses that stop answering: once when an address falls
silent (its first timeout), then a count every `summary_s` while it stays silent, and once
when it answers again. Counters (/metrics `rs485_timeouts`) count every timeout; this keeps
a line that polls 32 addresses twice a second from writing a log line per poll."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("fog_node.transport.rs485")


class Silences:
    def __init__(self, summary_s: float = 600.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.summary_s = summary_s
        self.monotonic = monotonic
        self._silent: dict[int, list[float]] = {}  # address -> [since, said_at, timeouts]

    def timeout(self, address: int, detail: str = "") -> None:
        now = self.monotonic()
        s = self._silent.get(address)
        if s is None:
            self._silent[address] = [now, now, 1]
            log.warning("RS485 address %d does not answer%s; polling it on", address,
                        f" ({detail})" if detail else "")
            return
        s[2] += 1
        if now - s[1] >= self.summary_s:
            s[1] = now
            log.warning("RS485 address %d still silent: %d timeouts in %.0f s", address,
                        int(s[2]), now - s[0])

    def answered(self, address: int) -> None:
        s = self._silent.pop(address, None)
        if s is not None:
            log.info("RS485 address %d answers again after %d timeout(s) in %.0f s", address,
                     int(s[2]), self.monotonic() - s[0])
