# The meter: one signing key, a persisted state, an interval engine, a spool, and the
# handling of the fog's acks and commands. Pure logic: time, randomness and the
# filesystem are passed in; the app (firmware/app.py) applies hardware actions.
#
# Crash safety at interval close (docs/PROTOCOL.md, "Meter state"):
#   1. save the source state (pulse totals) with the old seq     -> energy never double-counted
#   2. append the signed reading to the spool (durable)          -> the reading exists
#   3. save seq/prev/last_t/registers                            -> counters advance
# A power cut between 2 and 3 is repaired at boot from the spool's last reading, so a
# seq is never reused and prev always links to the real previous message.
from core import atomic, cbor, cose, keys
from core import messages as M
from core.compat import hexlify
from core.interval import IntervalEngine
from core.spool import Spool, SpoolFull

_STATE = "state"
_KEY = "key"
_POWER_CAUSES = ("power", "brownout")


class Meter:
    def __init__(self, fs, source, random_bytes, fog_id, fog_pub=None, dur=900,
                 fw="0.1.0", hw="host", spool_capacity=3072, per_segment=16):
        self.fs = fs
        self.source = source
        self.random_bytes = random_bytes
        self.fog_id = fog_id
        self.fog_key = keys.VerifyingKey(fog_pub) if fog_pub else None
        if self.fog_key is not None and self.fog_key.id != fog_id:
            raise ValueError("configured fog public key does not match the fog id")
        self.fw = fw
        self.hw = hw
        self.spool = Spool(fs, "spool", per_segment, spool_capacity)
        self.st = {"seq": 0, "prev": M.ZERO32, "boot": 0, "last_t": 0,
                   "dur": dur, "cid": 0, "cmd": b"", "clean": False, "src": {},
                   "relay": True, "limit": 0}
        self.engine = None
        self.key = None
        self.stats = {"readings": 0, "spool_full": 0, "acks": 0, "ack_rejected": 0,
                      "commands": 0, "commands_rejected": 0, "boots": 0}
        self.last_reject = ""
        self.last_sample = None
        self.last_good = None  # the last sample the source gave (RS485 live registers)

    # --- boot ------------------------------------------------------------------------
    def _load_key(self):
        raw = atomic.load(self.fs, _KEY)
        if raw is None:
            # first boot: the key is born here and never leaves the device
            d = keys.generate_private(self.random_bytes)
            raw = d.to_bytes(32, "big")
            atomic.save(self.fs, _KEY, raw)
            key = keys.SigningKey(raw)
            self.fs.write("pub.hex", hexlify(key.pub).encode())
            return key
        return keys.SigningKey(raw)

    def _save(self):
        atomic.save(self.fs, _STATE, cbor.encode(self.st))

    def boot(self, now, synced, reset_cause="power", uptime=0):
        """Load or create key and state, recover the spool; returns the birth fields' seq."""
        self.key = self._load_key()
        raw = atomic.load(self.fs, _STATE)
        had_state = raw is not None
        if had_state:
            self.st.update(cbor.decode(raw))
        self.spool.recover()
        last = self.spool.last()
        if last is not None and last[0] > self.st["seq"]:
            # power cut between spool append and state save: the spool is the truth
            f = cose.parse(last[1]).fields
            self.st["seq"] = f[2]
            self.st["prev"] = cose.digest(last[1])
            self.st["last_t"] = f[3]
            self.st["imp"] = f[5]
            self.st["exp"] = f[6]
        self.source.restore(self.st["src"])
        power_lost = had_state and not self.st["clean"] and reset_cause in _POWER_CAUSES
        self.st["boot"] += 1
        self.st["clean"] = False
        self._save()
        self.stats["boots"] += 1
        self.engine = IntervalEngine(self.st, self.st["dur"])
        self.engine.boot(now, synced, power_lost, uptime)
        return self.st["boot"]

    def remember(self, key, value):
        """Persist an actuator setting (relay, limit) so that it survives a reboot."""
        self.st[key] = value
        self._save()

    def prepare_reboot(self):
        """A deliberate reboot (command) is not a power failure."""
        self.st["clean"] = True
        self._save()

    @property
    def id(self):
        return self.key.id

    @property
    def dur(self):
        return self.engine.dur

    # --- measuring ---------------------------------------------------------------------
    def tick(self, now, uptime=0):
        """Sample the source; at an interval end, build, sign and spool the reading.

        Returns the new reading message, or None.
        """
        try:
            s = self.source.read(now)
        except Exception:  # noqa: BLE001  any source failure means SOURCE_ERROR at close
            s = None
        self.last_sample = s  # this pass's sample (None: source failed): limit guard, registers
        if s is not None:
            self.last_good = s
        if s is not None:
            self.engine.sample(s)
        if not self.engine.due(now, uptime):
            return None
        t, imp, exp, flags, q = self.engine.close(now, s, uptime)
        st = self.st
        st["src"] = self.source.state()
        self._save()  # step 1
        seq = st["seq"] + 1
        fields = M.reading(self.key.id, seq, t, self.engine.dur, imp, exp, flags, st["prev"], q)
        msg = cose.sign1(self.key, fields)
        try:
            self.spool.append(seq, msg)  # step 2
        except SpoolFull:
            self.stats["spool_full"] += 1
            self.engine.skipped(t, flags, q, now, uptime)
            return None
        st["seq"] = seq
        st["prev"] = cose.digest(msg)
        self.engine.committed(t, imp, exp, now, uptime)
        self._save()  # step 3
        self.stats["readings"] += 1
        return msg

    def clock_set(self, old, new, uptime=0):
        self.engine.clock_set(old, new, uptime)

    def birth(self):
        f = M.birth(self.key.id, self.key.pub, self.fw, self.st["boot"], self.st["seq"], self.hw,
                    self.source.name, self.engine.dur, self.fog_id)
        return cose.sign1(self.key, f)

    def pending(self, after_seq=0, limit=32):
        return self.spool.pending(after_seq, limit)

    # --- from the fog ---------------------------------------------------------------------
    def _reject(self, counter, reason):
        self.stats[counter] += 1
        key = counter + ":" + reason.split(":")[0]
        self.stats[key] = self.stats.get(key, 0) + 1
        self.last_reject = reason
        return reason

    def _check_from_fog(self, msg, want_type):
        """Parsed payload of a fog message for this meter, or a rejection reason (str)."""
        # cheap checks first: a meter should not spend an ECDSA verification (seconds on
        # an ESP32) on a message that is not for it
        try:
            m = cose.parse(msg)
            M.check_fields(m.fields)
        except (cose.CoseError, M.FieldError) as e:
            return getattr(e, "reason", "bad_fields") + ": " + str(e)
        f = m.fields
        if f[0] != want_type:
            return "wrong_type: expected type " + str(want_type) + ", got " + str(f[0])
        if f[17] != self.fog_id:
            return "wrong_fog: signed by a fog this meter is not configured for"
        if f[1] != self.key.id:
            return "wrong_dev: addressed to another meter"
        if self.fog_key is not None:
            try:
                cose.check_signature(m, self.fog_key)
            except cose.CoseError as e:
                return e.reason + ": " + str(e)
        return f

    def handle_ack(self, msg):
        """Drop spooled readings confirmed by a valid fog ack; returns how many were dropped.
        Only an ack whose signature verifies with the pinned fog key drops anything: a meter
        provisioned without one keeps every reading (and says so) rather than trusting a
        forged ack."""
        if self.fog_key is None:
            self._reject("ack_rejected", "no_fog_key: meter holds no fog public key")
            return 0
        f = self._check_from_fog(msg, M.ACK)
        if isinstance(f, str):
            self._reject("ack_rejected", f)
            return 0
        seq = f[2]
        if seq <= self.spool.acked:
            self.stats["acks"] += 1  # a repeated ack is harmless
            return 0
        stored = self.spool.get(seq)
        if stored is None:
            self._reject("ack_rejected", "unknown_seq: no stored reading with seq " + str(seq))
            return 0
        if cose.digest(stored) != f[3]:
            self._reject("ack_rejected", "digest_mismatch: ack digest differs from stored reading " + str(seq))
            return 0
        self.stats["acks"] += 1
        return self.spool.drop_through(seq)

    def accept_command(self, msg, now, synced=True):
        """Check a fog command. Returns (result_message, None) for a rejection, or
        (None, fields) when the app must act and then call finish_command().

        The cid is persisted before anything is done, so a replay can never act twice.
        """
        if self.fog_key is None:
            return self._command_result(_cid_of(msg), M.RESULT_REJECTED,
                                        self._reject("commands_rejected", "no_fog_key: meter holds no fog public key"), now), None
        f = self._check_from_fog(msg, M.COMMAND)
        if isinstance(f, str):
            return self._command_result(_cid_of(msg), M.RESULT_REJECTED, self._reject("commands_rejected", f), now), None
        cid = f[2]
        if cid <= self.st["cid"]:
            again = " (a replay of the accepted command)" if cose.digest(msg) == self.st["cmd"] else ""
            why = "stale_cid: cid " + str(cid) + " not greater than last accepted " + str(self.st["cid"]) + again
            return self._command_result(cid, M.RESULT_REJECTED, self._reject("commands_rejected", why), now), None
        # a meter without a trusted clock can't judge expiry; only "time" may fix that
        if (synced or f[3] != "time") and now > f[5]:
            why = "expired: not_after " + str(f[5]) + " is before now " + str(now)
            return self._command_result(cid, M.RESULT_REJECTED, self._reject("commands_rejected", why), now), None
        self.st["cid"] = cid
        self.st["cmd"] = cose.digest(msg)
        if f[3] == "interval":
            self.st["dur"] = f[4][1]
        self._save()
        self.stats["commands"] += 1
        return None, f

    def finish_command(self, f, now, ok=True, detail="", uptime=0, refused=False):
        """The result of an accepted command: done, failed, or (`refused`) rejected after
        a check only the app could make (a firmware image, docs/PROTOCOL.md section 22)."""
        if ok and f[3] == "interval":
            self.engine.set_dur(f[4][1], now, uptime)
        status = M.RESULT_DONE if ok else (M.RESULT_REJECTED if refused else M.RESULT_FAILED)
        return self._command_result(f[2], status, detail or ("done" if ok else "failed"), now)

    def _command_result(self, cid, status, detail, now):
        return cose.sign1(self.key, M.result(self.key.id, cid, status, detail, now))


def _cid_of(msg):
    # best effort, for echoing in a rejection: the cid of anything shaped like a command,
    # even when its envelope breaks a rule; 0 if no cid can be read at all
    try:
        env = cbor.decode(msg, (18,))
        cid = cbor.decode(env.value[2]).get(2, 0)
        return cid if isinstance(cid, int) and not isinstance(cid, bool) and cid >= 0 else 0
    except Exception:  # noqa: BLE001
        return 0
