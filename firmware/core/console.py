# The serial console (issue 14): one line per thing that happened, at a level, into a sink
# the caller passes in (print on a board, a prefixing function for host virtual meters,
# a list's append in tests). Pure: no I/O of its own, time comes from the clock passed in.
#
#   Console(sink, "info", clock)   clock() -> seconds since boot, printed first
#   c.info("boot", "fw 0.1.0 ...")  ->  "    12 I boot: fw 0.1.0 ..."
#
# Levels: debug < info < warn < error; "off" says nothing. Lines say what happened once:
# `change(key, value, ...)` only speaks when the value differs from the last one said for that
# key (a link going down and up, an NTP failure repeated every 5 minutes), and `spool(depth,
# capacity)` only when the depth crosses into another band (empty, <25 %, 25 %, 50 %, 75 %,
# 90 %, full), so a meter that is offline for a day writes a handful of lines, not thousands.
from core.compat import const

DEBUG = const(10)
INFO = const(20)
WARN = const(30)
ERROR = const(40)
OFF = const(99)
LEVELS = {"debug": DEBUG, "info": INFO, "warn": WARN, "error": ERROR, "off": OFF}
_LETTER = {DEBUG: "D", INFO: "I", WARN: "W", ERROR: "E"}
_BANDS = (25, 50, 75, 90, 100)  # spool depth bands, percent of capacity


def level_of(name):
    """The numeric level of a name (case-insensitive); ValueError for an unknown one."""
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    lv = LEVELS.get(str(name).lower())
    if lv is None:
        raise ValueError("log_level must be one of debug, info, warn, error, off, not " + repr(name))
    return lv


def spool_band(depth, capacity):
    """0 for an empty spool, 1 below the first band, then 2.. per band; 6 = full."""
    if depth <= 0:
        return 0
    if capacity <= 0 or depth >= capacity:
        return len(_BANDS) + 1
    pct = depth * 100 // capacity
    b = 1
    for edge in _BANDS:
        if pct >= edge:
            b += 1
    return b


def band_name(band):
    if band == 0:
        return "empty"
    if band == 1:
        return "below 25%"
    if band > len(_BANDS):
        return "full"
    return str(_BANDS[band - 2]) + "%+"


class Console:
    def __init__(self, sink=None, level="info", clock=None):
        self.sink = sink
        self.level = level_of(level)
        self.clock = clock
        self.lines = 0  # lines written (tests, and the meter's stats)
        self._said = {}
        self._band = None

    def enabled(self, level):
        return self.sink is not None and level >= self.level

    def say(self, level, topic, text):
        if self.sink is None or level < self.level:
            return False
        t = self.clock() if self.clock is not None else 0
        pad = str(t)
        if len(pad) < 6:
            pad = " " * (6 - len(pad)) + pad
        self.sink(pad + " " + _LETTER.get(level, "?") + " " + topic + ": " + text)
        self.lines += 1
        return True

    def debug(self, topic, text):
        return self.say(DEBUG, topic, text)

    def info(self, topic, text):
        return self.say(INFO, topic, text)

    def warn(self, topic, text):
        return self.say(WARN, topic, text)

    def error(self, topic, text):
        return self.say(ERROR, topic, text)

    def change(self, key, value, level, topic, text):
        """Say `text` only if `value` differs from the last value said under `key`."""
        if self._said.get(key, None) == value and key in self._said:
            return False
        self._said[key] = value
        return self.say(level, topic, text)

    def forget(self, key):
        self._said.pop(key, None)

    def spool(self, depth, capacity):
        """A line when the unacknowledged depth moves into another band (warn from 75 %)."""
        band = spool_band(depth, capacity)
        if band == self._band:
            return False
        first = self._band is None
        self._band = band
        if first and band == 0:
            return False  # nothing to say about an empty spool at boot
        level = WARN if band >= 4 else INFO
        return self.say(level, "spool", str(depth) + " of " + str(capacity)
                        + " readings unacknowledged (" + band_name(band) + ")")
