# The status LED's blink patterns (issue 14; documented in hardware/boards/README.md). Pure:
# the app tells it the meter's state and the time (ticks_ms), it answers on or off; the app
# drives board.led() with that, only when it changes.
#
# One pattern at a time, the most urgent first. Each is a 2-second cycle of on/off times
# (ms), so the patterns are told apart by counting flashes:
#   NO_NETWORK   fast blink, 5 per second             Wi-Fi, broker or RS485 master away
#   NO_ACK       two short flashes a cycle            connected, but no valid fog ack for
#                                                     a while with readings waiting
#   SPOOL        three short flashes a cycle          half the spool or more unacknowledged
#   UPDATING     on 1 s, off 1 s                      a firmware image on trial (waiting
#                                                     for the fog's first ack)
#   OK           one short flash a cycle (heartbeat)  all well
# A meter without a transport (offline, readings only in its spool) shows SPOOL or OK.
from core.compat import const

_CYCLE = const(2000)
OK = "ok"
NO_NETWORK = "no_network"
NO_ACK = "no_ack"
SPOOL = "spool"
UPDATING = "updating"
# on, off, on, off, ... ms; each sums to the cycle
PATTERNS = {
    NO_NETWORK: (100, 100, 100, 100, 100, 100, 100, 100, 100, 100,
                 100, 100, 100, 100, 100, 100, 100, 100, 100, 100),
    NO_ACK: (150, 150, 150, 1550),
    SPOOL: (150, 150, 150, 150, 150, 1250),
    UPDATING: (1000, 1000),
    OK: (60, 1940),
}


def choose(network_ok, fog_ok, spool_high, trial=False):
    """The pattern for a state, the most urgent first."""
    if not network_ok:
        return NO_NETWORK
    if not fog_ok:
        return NO_ACK
    if spool_high:
        return SPOOL
    if trial:
        return UPDATING
    return OK


def lit(pattern, ms):
    """Whether the LED is on at ms (ticks_ms, any origin) in `pattern`."""
    steps = PATTERNS[pattern]
    t = ms % _CYCLE
    on = True
    for d in steps:
        if t < d:
            return on
        t -= d
        on = not on
    return False


class Status:
    """The pattern in force and the LED level last driven (so board.led() is called only on
    a change)."""

    def __init__(self):
        self.pattern = OK
        self.led = None
        self.changes = 0  # pattern changes (tests)

    def set(self, network_ok, fog_ok, spool_high, trial=False):
        p = choose(network_ok, fog_ok, spool_high, trial)
        if p != self.pattern:
            self.pattern = p
            self.changes += 1
        return p

    def show(self, ms):
        """The LED level at ms if it changed since the last call, else None."""
        on = lit(self.pattern, ms)
        if on == self.led:
            return None
        self.led = on
        return on
