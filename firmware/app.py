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
#
# What the meter shows (issue 14): the serial console (core/console.py) at config
# "log_level" (default "info"; the sink is App(log=...), print on a board, or config
# "log_sink"), and the status LED (core/status.py, patterns in hardware/boards/README.md).
# Firmware updates (core/ota.py, core/fwstore.py, docs/PROTOCOL.md section 22): chunks come
# from the transport (poll kind "fw", or RS485 0x45 through app.fw_chunk), the fog's "fw"
# command checks and installs them; an image on trial is committed by the first valid fog
# ack and rolled back if none comes within config "ota_trial_s" (default 3 intervals).
import update
from update import VERSION as VERSION  # app.VERSION: the flashed firmware's version
from update import data_name, running

from core import cose, fwstore, keys
from core import messages as M
from core.compat import const, unhexlify
from core.console import Console
from core.limit import LimitGuard
from core.meter import Meter
from core.ota import OtaError, Updater
from core.sources import S0Pulse, Synthetic
from core.status import Status

_RESEND_S = const(60)  # unacknowledged readings are sent again after this long
_NTP_RETRY_S = const(300)
_BATCH = const(32)
_POLL_LOST_S = const(120)  # an RS485 meter not polled this long says the bus is lost
_SHOW_MS = const(50)  # run_forever's sleep slices, for the LED patterns


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
    def __init__(self, board, config, transport=None, source=None, on_reading=None, log=None):
        self.board = board
        self.config = config
        self.transport = transport
        self.on_reading = on_reading
        self._t0 = board.ticks_ms()
        self.log = Console(log or config.get("log_sink"), config.get("log_level", "info"),
                           self.uptime)
        fog_pub = config.get("fog_pub")
        fog_pub = unhexlify(fog_pub) if fog_pub else None
        fog_id = unhexlify(config["fog"]) if config.get("fog") else (keys.party_id(fog_pub) if fog_pub else bytes(8))
        self.fw = fwstore.load(board.fs())  # the firmware journal: running version, trial
        self.version = running(self.fw)
        self.meter = Meter(board.fs(), source or make_source(config, board), board.random_bytes,
                           fog_id, fog_pub, config.get("dur", 900), self.version, board.name,
                           config.get("spool_capacity", getattr(board, "spool_capacity", 3072)))
        rel = config.get("release_pub")
        self.ota = Updater(board.fs(), keys.VerifyingKey(unhexlify(rel)) if rel else None,
                           board.name, config.get("ota_max_bytes", 1 << 20), self.version,
                           data_name(config), config.get("ota_reserve", 64 * 1024))
        self.status = Status()
        self._trial_until = None  # uptime (s) by which an image on trial must reach the fog
        self._ack_at = 0  # uptime of the last valid fog ack (or of the start)
        self._link = None  # the transport's state last said (connected, polled)
        self._polls = 0
        self._polled_at = 0
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
        self._boot_image()
        self.meter.boot(b.now(), b.clock_synced(), b.reset_cause(), self.uptime())
        m = self.meter
        self.log.info("boot", "fw " + self.version + " on " + b.name + ", meter "
                      + keys.id_hex(m.id) + ", boot " + str(m.st["boot"]) + ", reset "
                      + b.reset_cause() + ", last seq " + str(m.st["seq"]) + ", "
                      + str(len(m.spool)) + " unacknowledged")
        # restore the last commanded actuator state (the hal boots with the supply on); the
        # limit guard's trips are not persisted: it starts fresh
        self.relay_cmd = self.meter.st["relay"]
        self._set_limit(self.meter.st["limit"])
        self._drive(True)
        self._ack_at = self.uptime()
        ssid = self.config.get("wifi_ssid")
        if ssid and (self.transport is not None or self.config.get("ntp_host")):
            # (provisioning boots the meter without a transport: no network then)
            ok = b.wifi_connect(ssid, self.config.get("wifi_password", ""))
            self.log.change("wifi", ok, 20 if ok else 30, "wifi",
                            ("connected to " if ok else "could not join ") + repr(ssid))
        if self.transport is not None:
            self.transport.connect(keys.id_hex(self.meter.id), self.meter.birth())
            self._watch_link(self.uptime())
        self.log.spool(len(m.spool), m.spool.capacity)
        self.show_status()
        return self.meter

    def _boot_image(self):
        update.boot_image(self)

    def step(self):
        """One pass of the main loop; call every second or so."""
        b = self.board
        up = self.uptime()
        self._keep_clock(up)
        full = self.meter.stats["spool_full"]
        msg = self.meter.tick(b.now(), up)
        self._enforce(up)
        if self.meter.stats["spool_full"] != full:
            self.log.error("spool", "full: an interval closed but its reading could not be "
                           "stored (" + str(self.meter.stats["spool_full"]) + " lost so far)")
        if msg is not None:
            self._closed(msg)
            if self.on_reading is not None:
                self.on_reading(msg)
        if self.transport is not None:
            self._pump(up)
            self._watch_link(up)
        self._trial(up)
        self.show_status()
        b.watchdog_feed()

    def _closed(self, msg):
        lg = self.log
        if lg.enabled(20):
            f = cose.parse(msg).fields
            fl = M.flag_names(f[7])
            lg.info("reading", "seq " + str(f[2]) + " closed: t " + str(f[3]) + ", imp "
                    + str(f[5]) + " Wh, exp " + str(f[6]) + " Wh" + (", " + ",".join(fl) if fl else ""))
        sp = self.meter.spool
        lg.spool(len(sp), sp.capacity)

    def _watch_link(self, up):
        """Console lines when the link comes and goes: connected() for a pushing transport,
        the fog's polls for a pulled one (RS485)."""
        tr = self.transport
        where = tr.where() if hasattr(tr, "where") else ""
        if hasattr(tr, "bind"):  # polled: the fog's requests say the bus is there
            n = tr.stats.get("requests", 0)
            if n != self._polls:
                self._polls, self._polled_at = n, up
            state = self._polls > 0 and up - self._polled_at < _POLL_LOST_S
            if state != self._link:
                self._link = state
                if state:
                    self.log.info("bus", "polled by the fog (" + where + ")")
                else:
                    self.log.warn("bus", "no poll from the fog for " + str(_POLL_LOST_S)
                                  + " s (" + where + ")")
            return
        state = tr.connected()
        if state != self._link:
            was = self._link
            self._link = state
            if state:
                self.log.info("link", "connected (" + where + ")")
            elif was:
                self.log.warn("link", "lost (" + where + "), retrying")
            else:
                self.log.warn("link", "could not connect (" + where + "), retrying")

    def _keep_clock(self, up):
        b = self.board
        host = self.config.get("ntp_host")
        if not host or b.clock_synced() or (self._ntp_at is not None and up - self._ntp_at < _NTP_RETRY_S):
            return
        self._ntp_at = up
        old = b.now()
        if b.sync_ntp(host):
            self.meter.clock_set(old, b.now(), up)
            self.log.change("ntp", True, 20, "ntp", "clock set from " + host + " (moved "
                            + str(b.now() - old) + " s)")
        else:
            self.log.change("ntp", False, 30, "ntp", host + " did not answer; retrying every "
                            + str(_NTP_RETRY_S) + " s, readings flagged CLOCK_UNSYNCED")

    def _pump(self, up):
        tr = self.transport
        for kind, msg in tr.poll():
            if kind == "ack":
                self.ack(msg)
            elif kind == "cmd":
                self.command(msg)
            elif kind == "fw":
                self.fw_chunk(msg)
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

    def ack(self, msg):
        """A fog ack (from any transport): drop what it confirms, say so; a valid one
        commits an image on trial."""
        m = self.meter
        good, bad = m.stats["acks"], m.stats["ack_rejected"]
        dropped = m.handle_ack(msg)
        if m.stats["ack_rejected"] != bad:
            self.log.warn("ack", "refused: " + m.last_reject)
            return dropped
        if m.stats["acks"] == good:
            return dropped
        self._ack_at = self.uptime()
        if dropped:
            self.log.info("ack", "through seq " + str(m.spool.acked) + ", " + str(dropped)
                          + " dropped, " + str(len(m.spool)) + " unacknowledged")
        else:
            self.log.debug("ack", "repeat, through seq " + str(m.spool.acked))
        self.log.spool(len(m.spool), m.spool.capacity)
        if self.fw["state"] == "trial":
            self.fw = fwstore.commit(self.board.fs())
            self._trial_until = None
            self.version = running(self.fw)
            self.log.info("ota", self.version + " reached the fog: committed")
        return dropped

    def fw_chunk(self, frame):
        """One chunk of a firmware image (update.fw_chunk); the bytes received so far."""
        return update.fw_chunk(self, frame)

    def command(self, msg):
        b = self.board
        now = b.now()
        result, f = self.meter.accept_command(msg, now, b.clock_synced())
        if f is not None:
            ok, detail, refused = True, "", False
            try:
                detail = self._apply(f[3], f[4])
            except OtaError as e:  # an image refused (or not written): the old one runs
                ok, detail, refused = False, str(e), e.reason != "failed"
                self.ota.drop()
            except Exception as e:  # noqa: BLE001  a failed actuator is reported, not fatal
                ok, detail = False, "failed: " + str(e)
            result = self.meter.finish_command(f, b.now(), ok, detail, self.uptime(), refused)
            lv = 20 if ok else 30
            self.log.say(lv, "command", "cid " + str(f[2]) + " " + f[3] + ": "
                         + ("done" if ok else "rejected" if refused else "failed")
                         + (", " + detail if detail else ""))
        else:
            self.log.warn("command", "refused: " + self.meter.last_reject)
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
        if op == "fw":
            return self._install(args[1])
        return "pong"

    def _install(self, digest):
        return update.install(self, digest)

    def _trial(self, up):
        update.trial(self, up)

    def show_status(self):
        """Drive the status LED from the meter's state (call often: the patterns blink)."""
        m = self.meter
        up = self.uptime()
        tr = self.transport
        if tr is None:
            net = True
        elif hasattr(tr, "bind"):
            net = bool(self._link)
        else:
            net = tr.connected()
            ssid = self.config.get("wifi_ssid")
            if ssid and hasattr(self.board, "wifi_connected"):
                net = net and self.board.wifi_connected()
        depth = len(m.spool)
        warn_s = self.config.get("ack_warn_s", 2 * m.dur + _RESEND_S)
        fog = tr is None or depth == 0 or up - self._ack_at < warn_s
        self.status.set(net, fog, depth * 2 >= m.spool.capacity, self.fw["state"] == "trial")
        on = self.status.show(self.board.ticks_ms())
        led = getattr(self.board, "led", None)  # every hal has one; a test double may not
        if on is not None and led is not None:
            led(on)

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
        # the watchdog runs already: main.py (the loader) armed it before importing the app
        serve = getattr(self.transport, "serve_for", None)
        while True:
            self.step()
            if serve is not None:
                serve(period_ms)  # it calls show_status() between requests
            else:
                self.idle(period_ms)

    def idle(self, ms):
        """Sleep ms in short slices, keeping the LED pattern going."""
        b = self.board
        while ms > 0:
            k = _SHOW_MS if ms > _SHOW_MS else ms
            b.sleep_ms(k)
            ms -= k
            self.show_status()
