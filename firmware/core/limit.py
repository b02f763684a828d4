# The power limit (SPEC command "limit"), enforced on the meter by opening its relay.
#
# Pure logic, no allocation per sample: the app feeds it the import power of each sample
# (Sample.p_imp, W) with the uptime in seconds (monotonic: a "time" command that steps the
# wall clock cannot shorten or stretch a hold-off) and drives the relay from
#     relay closed = commanded on (fog "relay" op, persisted) AND guard.allows()
# so the guard can open the relay but never closes one the fog opened. The guard's trip is
# not persisted: after a reboot the commanded state is restored and the guard starts fresh.
#
#   over the limit:  p_imp > limit_w (limit_w 0 = no limit) in TRIP_SAMPLES consecutive
#                    samples spanning at least TRIP_S seconds (rides through inrush and a
#                    single noisy sample; a sample the source could not give is no evidence
#                    either way and leaves the run as it was)
#   trip:            relay opened for a hold-off: HOLD_S, doubled (BACKOFF) after each
#                    repeated trip, capped at HOLD_MAX_S
#   retry:           when the hold-off ends the relay closes again; a retry that stays
#                    STABLE_S without tripping resets the hold-off to HOLD_S
#   commanded off:   samples are ignored (the run is reset, no trip counts), a hold-off in
#                    progress keeps running
#   new limit:       set_limit() with a different value starts the guard fresh (a trip is
#                    released at once, the hold-off goes back to HOLD_S); the same value again
#                    changes nothing
from core.compat import const

TRIP_SAMPLES = const(3)  # consecutive samples above the limit before a trip
TRIP_S = const(10)  # ... spanning at least this many seconds (inrush ride-through)
HOLD_S = const(60)  # first hold-off: the relay stays open this long, then retries
BACKOFF = const(2)  # each repeated trip multiplies the hold-off by this
HOLD_MAX_S = const(3600)  # the hold-off never grows beyond this
STABLE_S = const(900)  # a retry this long without a trip resets the hold-off to HOLD_S


class LimitGuard:
    def __init__(self, limit_w=0):
        self.limit_w = limit_w
        self.trips = 0  # counters since boot
        self.retries = 0
        self.tripped = False
        self.hold_s = 0  # the hold-off of the current (or last) trip; 0 = none since reset
        self.reopen_at = 0  # uptime at which a trip ends
        self._run = 0  # consecutive samples above the limit
        self._run_from = 0  # uptime of the first of them
        self._closed_at = 0  # uptime of the last retry (or reset)

    def set_limit(self, watts, uptime=0):
        """Configure the limit in W (0 = none). A changed limit starts the guard fresh."""
        if watts == self.limit_w:
            return
        self.limit_w = watts
        self.tripped = False
        self.hold_s = 0
        self._run = 0
        self._closed_at = uptime

    def allows(self):
        """False while a trip holds the relay open."""
        return not self.tripped

    def remaining(self, uptime):
        """Seconds until a trip's retry; 0 when not tripped."""
        return self.reopen_at - uptime if self.tripped and self.reopen_at > uptime else 0

    def update(self, p_w, uptime, commanded=True):
        """One sample: p_w is the measured import power in W (None: no sample this pass).

        Returns allows(): whether the guard lets the relay be closed.
        """
        if self.tripped:
            if uptime < self.reopen_at:
                return False
            self.tripped = False  # the hold-off is over: retry
            self.retries += 1
            self._run = 0
            self._closed_at = uptime
            return True  # this pass's sample was taken with the relay open
        if not self.limit_w or not commanded:
            self._run = 0
            return True
        if p_w is None:
            return True
        if p_w <= self.limit_w:
            self._run = 0
            if self.hold_s and uptime - self._closed_at >= STABLE_S:
                self.hold_s = 0  # held long enough: the next trip starts from HOLD_S again
            return True
        if self._run == 0:
            self._run_from = uptime
        self._run += 1
        if self._run < TRIP_SAMPLES or uptime - self._run_from < TRIP_S:
            return True
        # trip
        if self.hold_s and uptime - self._closed_at >= STABLE_S:
            self.hold_s = 0
        if self.hold_s:
            self.hold_s = min(self.hold_s * BACKOFF, HOLD_MAX_S)
        else:
            self.hold_s = HOLD_S
        self.trips += 1
        self.tripped = True
        self.reopen_at = uptime + self.hold_s
        self._run = 0
        return False
