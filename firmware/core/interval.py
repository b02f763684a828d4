# The interval engine: decides when an interval closes and which flags its reading gets.
# Pure logic: the clock is passed in on every call (never read here), the registers come
# from a source sample, and what must survive a reboot lives in a plain dict (`st`) that
# the meter persists.
#
# Rules (docs/PROTOCOL.md, "Interval engine"):
# - synced clock: intervals end on multiples of dur; t is the END of the interval.
# - unsynced clock: intervals close every dur seconds of uptime, t = the meter's own clock,
#   flag CLOCK_UNSYNCED.
# - PARTIAL: the meter did not observe the whole interval (boot, clock step, or an
#   interval length change inside it).
# - SKIPPED: whole intervals passed since the previous reading with no reading of their
#   own (outage, full spool, a stalled loop); the registers cover them.
# - POWER_FAIL: the supply was lost since the previous reading (reset cause at boot).
# - CLOCK_STEPPED: the clock was set by more than STEP_TOLERANCE seconds inside it, or was
#   found behind the interval being observed; either way the schedule restarts from the
#   new time at once, in both directions (never "wait until the old time comes back").
# - REGISTER_RESET: a register went backwards; SOURCE_ERROR: the source failed at close
#   and the registers are the last good values.
from core import messages as M
from core.compat import const

STEP_TOLERANCE = const(2)  # NTP slews of a second or two are not "steps"
_STICKY = const(0x52)  # POWER_FAIL | TAMPER | CLOCK_STEPPED


def next_boundary(after, dur):
    """Smallest multiple of dur strictly greater than after."""
    return (after // dur + 1) * dur


class IntervalEngine:
    def __init__(self, st, dur):
        # st keys: last_t (t of the previous reading, 0 if none), imp, exp (last good
        # registers, None before the first read)
        self.st = st
        self.dur = dur
        self.flags = 0  # flags collected for the interval being observed
        self.observed_from = None  # clock time since when this interval was observed
        self.next_t = None
        self.up_mark = None  # unsynced mode: uptime (s) at which the interval closes
        self._q = None
        self.synced = False

    # --- events -------------------------------------------------------------------
    def boot(self, now, synced, power_lost, uptime=0):
        self.synced = synced
        self.observed_from = now
        self.flags = 0
        if power_lost:
            self.flags |= M.POWER_FAIL
        self._schedule(now, uptime)

    def clock_set(self, old, new, uptime=0):
        """The wall clock jumped from old to new (NTP, RTC, or a 'time' command)."""
        became_synced = not self.synced
        self.synced = True
        if became_synced or abs(new - old) > STEP_TOLERANCE:
            self.flags |= M.CLOCK_STEPPED | M.PARTIAL
            self.observed_from = new
            # from the new time, even if it is before the last reading's t: a clock that was
            # a day ahead and is set right must not keep the meter silent for that day
            self._schedule(new, uptime, stepped=True)

    def set_dur(self, dur, now, uptime=0):
        if dur != self.dur:
            self.dur = dur
            self._schedule(now, uptime)

    def sample(self, s):
        """Fold an instantaneous sample into the interval's q extremes."""
        q = self._q
        if q is None:
            q = self._q = {}
        if s.v is not None:
            if 1 not in q or s.v < q[1]:
                q[1] = s.v
            if 2 not in q or s.v > q[2]:
                q[2] = s.v
        if s.p_imp > q.get(3, -1):
            q[3] = s.p_imp
        if s.p_exp > q.get(4, -1):
            q[4] = s.p_exp
        if s.temp is not None:
            q[5] = s.temp
        if s.tamper:
            self.flags |= M.TAMPER

    # --- closing --------------------------------------------------------------------
    def _schedule(self, now, uptime, stepped=False):
        if self.synced:
            base = now if stepped else max(now, self.st.get("last_t") or 0)
            self.next_t = next_boundary(base, self.dur)
            self.up_mark = None
        else:
            self.next_t = None
            self.up_mark = uptime + self.dur

    def due(self, now, uptime=0):
        if self.synced:
            if now < self.next_t - self.dur - STEP_TOLERANCE:
                # the clock went back before the interval being observed, and nobody said
                # so (an RTC, a host clock): a step, taken on this very pass
                self.clock_set(self.next_t - self.dur, now, uptime)
            return now >= self.next_t
        return uptime >= self.up_mark

    def close(self, now, sample, uptime=0, extra_flags=0):
        """Close the interval; returns (t, imp, exp, flags, q). sample None = source failed."""
        st = self.st
        flags = self.flags | extra_flags
        dur = self.dur
        last_t = st.get("last_t") or 0
        if self.synced:
            t = now - now % dur  # latest boundary; later than next_t if the loop stalled
        else:
            t = now
            flags |= M.CLOCK_UNSYNCED
        if self.observed_from is not None and self.observed_from > t - dur:
            flags |= M.PARTIAL
        if last_t and t - dur > last_t and self.synced:
            flags |= M.SKIPPED
        if sample is None:
            flags |= M.SOURCE_ERROR
            imp, exp = st.get("imp") or 0, st.get("exp") or 0
        else:
            imp, exp = sample.imp, sample.exp
            if st.get("imp") is not None and (imp < st["imp"] or exp < st["exp"]):
                flags |= M.REGISTER_RESET
        q = self._q
        self._q = None
        self.flags = 0
        self.observed_from = t
        return t, imp, exp, flags, q

    def committed(self, t, imp, exp, now, uptime=0):
        """The reading for t is stored: advance the persistent state and the schedule."""
        self.st["last_t"] = t
        self.st["imp"] = imp
        self.st["exp"] = exp
        self._schedule(max(now, t), uptime)

    def skipped(self, t, flags, q, now, uptime=0):
        """No reading could be stored for t (spool full): the next one carries SKIPPED.

        Events seen in the lost interval stay on record: sticky flags and q extremes are
        carried into the next reading, whose registers cover the whole time anyway.
        """
        self.flags |= (flags & _STICKY) | M.SKIPPED
        if q:
            for k, v in q.items():
                self._q = self._q or {}
                old = self._q.get(k)
                if old is None or (k == 1 and v < old) or (k in (2, 3, 4) and v > old):
                    self._q[k] = v
        self._schedule(max(now, t), uptime)
