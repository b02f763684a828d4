# Meter sources: where the energy registers come from. A source is sampled every few
# seconds (for q extremes and power) and read at interval close.
#   read(now) -> Sample       raises SourceError when the meter can't be read
#   name                      SPEC birth field src ("sim", "pulse", "modbus")
#   state() / restore(dict)   what must survive a reboot (registers are cumulative)
# Registers are integers in Wh; sub-Wh remainders are kept in mWh so nothing is lost to
# rounding (ESP32/RP2 MicroPython floats are single precision: never hold a register in one).
import math


class SourceError(Exception):
    pass


class Sample:
    def __init__(self, imp, exp, v=None, p_imp=0, p_exp=0, temp=None, tamper=False):
        self.imp = imp  # cumulative import, Wh
        self.exp = exp  # cumulative export, Wh
        self.v = v  # voltage, 0.1 V, or None
        self.p_imp = p_imp  # instantaneous import power, W
        self.p_exp = p_exp  # instantaneous export power, W
        self.temp = temp  # 0.1 degC, or None
        self.tamper = tamper


def _bump(x):
    # a smooth daily bump peaking at 0 with width ~w hours, without exp() precision worries
    return 1.0 / (1.0 + x * x)


class Synthetic:
    """A household with a load profile and rooftop PV, deterministic in (seed, time).

    Power is a pure function of time, so two runs with the same clock give the same
    registers; energy is integrated between calls in mWh.
    """

    name = "sim"

    def __init__(self, seed=1, base_w=250, peak_w=1800, pv_wp=3000, imp_wh=0, exp_wh=0):
        self.seed = seed
        self.base_w = base_w + (seed * 37) % 200
        self.peak_w = peak_w + (seed * 53) % 700
        self.pv_wp = pv_wp if seed % 3 else 0  # one home in three has no PV
        self.imp_mwh = imp_wh * 1000
        self.exp_mwh = exp_wh * 1000
        self.last_t = None
        self.relay_on = True  # an open relay (SPEC command "relay") cuts the household off
        self.limit_w = 0

    def power(self, t):
        """Net power at Unix time t in W: positive = import, negative = export."""
        h = (t % 86400) / 3600.0
        wiggle = math.sin(t / 97.0 + self.seed) * 0.08
        load = self.base_w + self.peak_w * (0.45 * _bump((h - 7.5) / 1.2) + _bump((h - 19.0) / 1.8))
        load = load * (1.0 + wiggle)
        pv = 0.0
        if 6.0 < h < 18.0:
            pv = self.pv_wp * 0.8 * math.sin(math.pi * (h - 6.0) / 12.0)
        if not self.relay_on:
            load = 0.0
        if self.limit_w and load > self.limit_w:
            load = float(self.limit_w)
        return load - pv

    def read(self, now):
        p = self.power(now)
        if self.last_t is not None and now > self.last_t:
            e = int(abs(p) * (now - self.last_t) * 1000 / 3600)
            if p >= 0:
                self.imp_mwh += e
            else:
                self.exp_mwh += e
        self.last_t = now
        v = 2300 + int(40 * math.sin(now / 300.0 + self.seed))
        return Sample(self.imp_mwh // 1000, self.exp_mwh // 1000, v,
                      int(p) if p > 0 else 0, int(-p) if p < 0 else 0, 215)

    def state(self):
        return {"imp": self.imp_mwh, "exp": self.exp_mwh}

    def restore(self, st):
        self.imp_mwh = st.get("imp", self.imp_mwh)
        self.exp_mwh = st.get("exp", self.exp_mwh)


class S0Pulse:
    """An S0 (DIN 43864) pulse output of an existing meter: import only.

    count() is the hardware pulse counter since boot (hal). The cumulative pulse total is
    persisted at every interval close; pulses between the last close and a power cut are
    lost with the supply, which the POWER_FAIL flag on the next reading discloses.
    """

    name = "pulse"

    def __init__(self, count, imp_per_kwh=1000, start_wh=0):
        if imp_per_kwh <= 0:
            raise ValueError("impulses per kWh must be > 0")
        self.count = count
        self.ipk = imp_per_kwh
        self.start_wh = start_wh
        self.saved = 0  # pulses counted before this boot
        self.last_pulses = None
        self.last_t = None

    def total(self):
        return self.saved + self.count()

    def read(self, now):
        total = self.total()
        p = 0
        if self.last_t is not None and now > self.last_t:
            # W = pulses * (3.6e6 J/kWh / ipk) / seconds
            p = (total - self.last_pulses) * 3600000 // (self.ipk * (now - self.last_t))
        self.last_pulses = total
        self.last_t = now
        return Sample(self.start_wh + total * 1000 // self.ipk, 0, None, p, 0, None)

    def state(self):
        return {"pulses": self.total(), "start": self.start_wh}

    def restore(self, st):
        self.saved = st.get("pulses", 0)
        self.start_wh = st.get("start", self.start_wh)
