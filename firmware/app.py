# The device's main loop: wires the board (hal), the meter (core) and a transport.
#
# Transport interface (MQTT and RS485 transports implement it; None = offline meter):
#   connect(meter_id_hex, birth_msg) -> bool     announce the meter (birth, online status)
#   connected() -> bool                          False: the app pushes nothing (RS485 pulls)
#   send_readings(list_of_msgs) -> bool          one batch in seq order (<= 32 messages)
#   send_result(msg) -> None                     a command result
#   poll() -> list of (kind, msg)                kind "ack" or "cmd"; never blocks long
# optional:
#   bind(app)                                    called once by App(): a transport that
#                                                answers requests itself (RS485 slave) uses
#                                                app.meter and app.command()
#   serve_for(ms)                                run_forever() calls it instead of sleeping
# A reading leaves the spool only on a valid fog ack, never on a transport's own ack.
#
# Actuators: the relay is closed when the fog's last "relay" command (persisted by the meter,
# restored at boot) says on AND the limit guard (core/limit.py, configured by "limit") has not
# tripped it; each step feeds the guard the import power of the sample the meter just took.
# SPEC has no reading flag for a limit trip: the reading shows it as less energy, and the
# meter's stats count it ("limit_trips", "limit_retries").
from core import keys
from core.compat import const, unhexlify
from core.limit import LimitGuard
from core.meter import Meter
from core.sources import S0Pulse, Synthetic

VERSION = "0.1.0"
_RESEND_S = const(60)  # unacknowledged readings are sent again after this long
_NTP_RETRY_S = const(300)
_BATCH = const(32)


def make_source(config, board):
    kind = config.get("source", "sim")
    if kind == "sim":
        return Synthetic(seed=config.get("seed", 1))
    if kind == "pulse":
        return S0Pulse(board.pulse_count, config.get("s0_imp_per_kwh", 1000), config.get("s0_start_wh", 0))
    if kind == "modbus":
        from core.sdm import SdmSource

        return SdmSource(board.uart_rs485("meter"), config.get("modbus_address", 1),
                         config.get("modbus_timeout_ms", 200), baud=config.get("meter_baud", 9600),
                         backoff_ms=config.get("modbus_backoff_ms", 10000))
    raise ValueError("unknown meter source " + repr(kind))


class App:
    def __init__(self, board, config, transport=None, source=None, on_reading=None):
        self.board = board
        self.config = config
        self.transport = transport
        self.on_reading = on_reading
        fog_pub = config.get("fog_pub")
        fog_pub = unhexlify(fog_pub) if fog_pub else None
        fog_id = unhexlify(config["fog"]) if config.get("fog") else (keys.party_id(fog_pub) if fog_pub else bytes(8))
        self.meter = Meter(board.fs(), source or make_source(config, board), board.random_bytes,
                           fog_id, fog_pub, config.get("dur", 900), VERSION, board.name,
                           config.get("spool_capacity", getattr(board, "spool_capacity", 3072)))
        self._t0 = board.ticks_ms()
        self.sent_upto = 0
        self._acked_seen = 0
        self._waiting_since = 0
        self._ntp_at = None
        self.reboot_requested = False
        self.guard = LimitGuard()
        self.relay_cmd = True  # the commanded state; the relay is closed = relay_cmd and guard
        self._relay_out = None  # what the board was last told
        self.meter.stats["limit_trips"] = 0
        self.meter.stats["limit_retries"] = 0
        if hasattr(transport, "bind"):
            transport.bind(self)

    def uptime(self):
        return self.board.ticks_diff(self.board.ticks_ms(), self._t0) // 1000

    def start(self):
        b = self.board
        self.meter.boot(b.now(), b.clock_synced(), b.reset_cause(), self.uptime())
        # restore the last commanded actuator state (the hal boots with the supply on); the
        # limit guard's trips are not persisted: it starts fresh
        self.relay_cmd = self.meter.st["relay"]
        self._set_limit(self.meter.st["limit"])
        self._drive(True)
        if self.transport is not None:
            self.transport.connect(keys.id_hex(self.meter.id), self.meter.birth())
        return self.meter

    def step(self):
        """One pass of the main loop; call every second or so."""
        b = self.board
        up = self.uptime()
        self._keep_clock(up)
        msg = self.meter.tick(b.now(), up)
        self._enforce(up)
        if msg is not None and self.on_reading is not None:
            self.on_reading(msg)
        if self.transport is not None:
            self._pump(up)
        b.watchdog_feed()

    def _keep_clock(self, up):
        b = self.board
        host = self.config.get("ntp_host")
        if not host or b.clock_synced() or (self._ntp_at is not None and up - self._ntp_at < _NTP_RETRY_S):
            return
        self._ntp_at = up
        old = b.now()
        if b.sync_ntp(host):
            self.meter.clock_set(old, b.now(), up)

    def _pump(self, up):
        tr = self.transport
        for kind, msg in tr.poll():
            if kind == "ack":
                self.meter.handle_ack(msg)
            elif kind == "cmd":
                self.command(msg)
        if not tr.connected():
            self.sent_upto = 0
            return
        acked = self.meter.spool.acked
        if acked != self._acked_seen:
            self._acked_seen = acked
            self._waiting_since = up
        # the timer runs from the last ack progress, not the last send, so a steady flow
        # of new readings can't postpone the resend of an unacknowledged one forever
        if self.sent_upto > acked and up - self._waiting_since >= _RESEND_S:
            self.sent_upto = acked
        batch = self.meter.pending(max(self.sent_upto, acked), _BATCH)
        if batch and tr.send_readings([m for _, m in batch]):
            if batch[0][0] == acked + 1:
                self._waiting_since = up
            self.sent_upto = batch[-1][0]

    def command(self, msg):
        b = self.board
        now = b.now()
        result, f = self.meter.accept_command(msg, now, b.clock_synced())
        if f is not None:
            ok, detail = True, ""
            try:
                detail = self._apply(f[3], f[4])
            except Exception as e:  # noqa: BLE001  a failed actuator is reported, not fatal
                ok, detail = False, "failed: " + str(e)
            result = self.meter.finish_command(f, b.now(), ok, detail, self.uptime())
        if self.transport is not None:
            self.transport.send_result(result)
        if self.reboot_requested:
            self.meter.prepare_reboot()
            b.reboot()
        return result

    def _apply(self, op, args):
        b = self.board
        if op == "relay":
            self.relay_cmd = args[1]
            self._drive(True)
            self.meter.remember("relay", args[1])
            held = self.guard.remaining(self.uptime()) if args[1] else 0
            if held:  # on, but a limit trip keeps the relay open until its retry
                return "relay on (held open by the limit for " + str(held) + " s)"
            return "relay " + ("on" if args[1] else "off")
        if op == "limit":
            self._set_limit(args[1])
            self._drive()
            self.meter.remember("limit", args[1])
            return "limit " + str(args[1]) + " W"
        if op == "interval":
            return "interval " + str(args[1]) + " s from the next boundary"
        if op == "time":
            old = b.now()
            b.set_time(args[1])
            self.meter.clock_set(old, b.now(), self.uptime())
            return "clock set"
        if op == "reboot":
            self.reboot_requested = True
            return "rebooting"
        return "pong"

    def _enforce(self, up):
        """Feed the limit guard this pass's sample and drive the relay from its decision."""
        g = self.guard
        s = getattr(self.meter, "last_sample", None)
        g.update(None if s is None else s.p_imp, up, self.relay_cmd)
        st = self.meter.stats
        st["limit_trips"] = g.trips
        st["limit_retries"] = g.retries
        self._drive()

    @property
    def relay_closed(self):
        """The relay as driven: commanded on and not tripped by the limit guard."""
        return bool(self.relay_cmd) and self.guard.allows()

    def _drive(self, force=False):
        on = self.relay_closed
        if on == self._relay_out and not force:
            return
        self._relay_out = on
        self.board.relay(on)
        src = self.meter.source
        if hasattr(src, "relay_on"):  # a simulated household feels its own relay
            src.relay_on = on

    def _set_limit(self, watts):
        self.guard.set_limit(watts, self.uptime())
        src = self.meter.source
        if hasattr(src, "limit_w"):  # a simulated household keeps itself under the limit
            src.limit_w = watts

    def run_forever(self, period_ms=1000):
        self.board.watchdog_start(max(8000, 4 * period_ms))
        serve = getattr(self.transport, "serve_for", None)
        while True:
            self.step()
            if serve is not None:
                serve(period_ms)
            else:
                self.board.sleep_ms(period_ms)
