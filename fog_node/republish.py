"""Republishing for Home Assistant (issue 14, docs/DATA.md): decoded feeder aggregates, and the
readings of meters whose customers consented, as JSON on the fog's own topic root, with Home
Assistant MQTT discovery. Off unless `ha_republish`; feeders only unless `ha_meters` (or
`ha_all_meters`) says otherwise.

    {ha_root}/{fog}/feeder/{feeder}/state     the feeder's latest interval and its totals
    {ha_root}/{fog}/meter/{dev}/state         a consented meter's latest reading
    {ha_discovery_prefix}/sensor/{unique_id}/config   one per sensor (import, export)

Every message is retained and QoS 1, so Home Assistant finds the sensors and their last state
whenever it connects. The republisher follows the cooked index (cooked.db) the way cooking
follows the log: a thread of its own reads it through read-only connections on a timer
(`ha_period_s`), never takes the node's lock and never waits for the broker (it hands its
messages to the fog's MQTT process, fog_node.transport.mqtt). Its own state (republish.db:
the aggregates cursor, each feeder's totals, each meter's last seq sent) is committed only
after the MQTT process took the round's messages; when it took none (no process, or a dead
one) the round is rolled back and done again, so a restart or a lost process sends the last
round again at worst, never less.

Consent (household data reaches no one not entitled to it): a meter is entitled while it is
listed in `ha_meters`, or active in the registry under `ha_all_meters`, evaluated afresh each
round (a revocation counts at once; so would a new `config`). republish.db keeps `published`,
every meter whose data was ever handed over, recorded (and committed) before the first of
its messages leaves and never forgotten: republish.db is no longer wholly derived, do not
move it aside. A recorded meter that is not entitled has its retained topics cleared (empty
retained payloads on its state and discovery topics) in the next round, retried with the
round until the MQTT process took it. At start, and after each reconnect the republisher
sees, every recorded meter not entitled is cleared again (idempotent: a clearing that a dying
MQTT process took but never sent, or a broker restored from an old store, is made good).

A feeder's import and export totals (`total_increasing` sensors) are the sums over its
intervals of the latest revision of each interval's aggregate; a revision changes the sum
by its difference. Home Assistant takes any decrease of such a sensor for a meter reset (and
would count the whole total again), so each sensor's value is published monotone: never
below the last value published for it (kept in republish.db, `highs`). A revision that
lowers the sum holds the total where it was until the sum passes it again; the same holds
for a meter's registers (a genuine register reset holds its sensors likewise).

A cooked row that does not decode, or holds values the state cannot be made of, is skipped
(the aggregates cursor moves past it; a meter's reading counts as sent), counted
(`counters["bad_rows"]`) and logged with the reason (at most once a minute per kind), and
the rest of the round goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC
from typing import Any

from fog_node.config import FogConfig
from fog_node.export import reading_row, utc_text
from fog_node.node import FogError
from fog_node.reads import RegistryView, read_only
from meterledger import errors
from meterledger import wire as P
from meterledger.infra.logs import Once
from meterledger.infra.sqlite import atomic, connect, meta, set_meta

log = logging.getLogger("fog_node")
Item = tuple[str, bytes, int, bool]  # topic, payload, qos, retain
Publish = Callable[[list[Item]], bool]  # True: the MQTT process took them (MQTTLink.publish)
BATCH = 1000  # aggregates read per step
_STATE = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meters (dev BLOB PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS feeders (feeder TEXT PRIMARY KEY, imp INTEGER NOT NULL,
    exp INTEGER NOT NULL, ivl INTEGER NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feeder_ivls (feeder TEXT NOT NULL, ivl INTEGER NOT NULL,
    rev INTEGER NOT NULL, imp INTEGER NOT NULL, exp INTEGER NOT NULL,
    PRIMARY KEY (feeder, ivl));
CREATE TABLE IF NOT EXISTS published (dev BLOB PRIMARY KEY, cleared INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS highs (sensor TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO published SELECT dev, 0 FROM meters;
"""
# `published`: every meter whose data was handed over (cleared: its clearing was since);
# a `meters` row (last seq sent) exists only while its meter is published and not cleared,
# so the last line records the meters a republish.db from before `published` had sent.
# `highs`: the last value published for each total_increasing sensor (by unique id)

# the sensors of each entity: (suffix, name, the state's key)
FEEDER_SENSORS = (("import", "Import", "import_total_wh"), ("export", "Export", "export_total_wh"))
METER_SENSORS = (("import", "Import register", "import_wh"),
                 ("export", "Export register", "export_wh"))
# the republisher's counters, for export as meterledger_fog_republish_<kind>_total
COUNTER_HELP = {
    "messages": "messages handed to the MQTT process.",
    "not_taken": "rounds whose messages the MQTT process did not take (the round is retried, "
                 "clearings included).",
    "cleared": "clearings of a meter's retained topics handed over (no longer entitled; "
               "again at start and after a reconnect).",
    "bad_rows": "cooked rows (aggregates, readings) skipped: they did not decode or held "
                "unexpected values.",
    "held": "total_increasing values held at the last value published instead of going down.",
}


class BadRowError(errors.MeterLedgerError, ValueError):
    """A cooked row the republisher cannot make a state of; skipped and counted."""


class NotTakenError(errors.UnavailableError):
    """The MQTT process took none of a round's messages; the round is rolled back."""


# what decoding one row may raise: skipped (an sqlite3.Error is not among them: retried)
_BAD = (BadRowError, LookupError, TypeError, ValueError, ArithmeticError)


def slug(name: str) -> str:
    """A feeder name as one topic level and id part: itself when it is letters, digits,
    '-' and '_' (up to 40), else those characters and 8 hex of its SHA-256."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
        return name
    return (re.sub(r"[^A-Za-z0-9_-]", "_", name)[:31] + "_"
            + hashlib.sha256(name.encode()).hexdigest()[:8])


def _outside(a: str, b: str) -> bool:
    return a != b and not a.startswith(b + "/") and not b.startswith(a + "/")


def _reason(e: Exception) -> str:
    return str(e) if isinstance(e, errors.MeterLedgerError) else f"{type(e).__name__}: {e}"


class Republisher:
    def __init__(self, config: FogConfig, fog_hex: str, publish: Publish,
                 connected: threading.Event) -> None:
        for name, root in (("ha_root", config.ha_root),
                           ("ha_discovery_prefix", config.ha_discovery_prefix)):
            if not _outside(root, config.mqtt_root):
                raise FogError(f"{name} {root!r} must lie outside mqtt_root "
                               f"{config.mqtt_root!r}: meters' topics are not republished")
        self.config = config  # read each round: a new one counts from the next round
        self.fog = fog_hex
        self.publish = publish
        self.connected = connected
        self.dir = config.data_dir
        self.db = connect(self.dir / "republish.db")
        self.db.executescript(_STATE)
        self._readers: dict[str, sqlite3.Connection] = {}
        self._announced: set[str] = set()  # unique ids whose config was sent this connection
        self._swept = False  # every meter owed a clearing cleared since the last (re)connect
        self.counters: Counter[str] = Counter({k: 0 for k in COUNTER_HELP})
        self._counts: Counter[str] = Counter()  # this round's, added once it is handed over
        self._notes: list[tuple[tuple[str, ...], int, str]] = []  # its log lines, likewise
        self._once = Once()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def configured(cls, config: FogConfig, fog_hex: str, publish: Publish,
                   connected: threading.Event) -> Republisher | None:
        return cls(config, fog_hex, publish, connected) if config.ha_republish else None

    # -- topics and discovery ---------------------------------------------------------------
    def state_topic(self, kind: str, name: str) -> str:
        return f"{self.config.ha_root}/{self.fog}/{kind}/{name}/state"

    def unique_id(self, kind: str, name: str, suffix: str) -> str:
        return f"meterledger_{self.fog}_{kind}_{name}_{suffix}"

    def config_topic(self, unique: str) -> str:
        return f"{self.config.ha_discovery_prefix}/sensor/{unique}/config"

    def discovery(self, kind: str, name: str, label: str) -> list[tuple[str, dict[str, Any]]]:
        """The discovery configs of one feeder or meter: (config topic, config)."""
        sensors = FEEDER_SENSORS if kind == "feeder" else METER_SENSORS
        device = {"identifiers": [f"meterledger_{self.fog}_{kind}_{name}"],
                  "name": label, "manufacturer": "MeterLedger",
                  "model": "feeder aggregate" if kind == "feeder" else "smart meter"}
        state = self.state_topic(kind, name)
        out = []
        for suffix, what, key in sensors:
            unique = self.unique_id(kind, name, suffix)
            out.append((self.config_topic(unique), {
                "name": what, "unique_id": unique,
                "state_topic": state, "value_template": f"{{{{ value_json.{key} }}}}",
                "json_attributes_topic": state, "device_class": "energy",
                "state_class": "total_increasing", "unit_of_measurement": "Wh",
                "device": device, "origin": {"name": "MeterLedger fog node"}}))
        return out

    def _announce(self, kind: str, name: str, label: str) -> list[Item]:
        items = []
        for topic, doc in self.discovery(kind, name, label):
            if doc["unique_id"] not in self._announced:
                self._announced.add(doc["unique_id"])
                items.append((topic, _json(doc), 1, True))
        return items

    def clearing(self, dev: bytes) -> list[Item]:
        """Empty retained payloads on every topic of a meter: the broker drops what it
        retained there, and Home Assistant removes the meter's sensors."""
        name = dev.hex()
        for suffix, _, _ in METER_SENSORS:
            self._announced.discard(self.unique_id("meter", name, suffix))
        return [(topic, b"", 1, True) for topic, _ in self.discovery("meter", name, "")] + [
            (self.state_topic("meter", name), b"", 1, True)]

    # -- the stores, read only --------------------------------------------------------------
    def _reader(self, name: str) -> sqlite3.Connection | None:
        db = self._readers.get(name)
        if db is None:
            if not (self.dir / name).is_file():
                return None
            db = self._readers[name] = read_only(self.dir / name)
        return db

    def consented(self) -> list[bytes]:
        """The meters whose readings may leave the fog (ha_meters, or every active one)."""
        if self.config.ha_all_meters:
            reg = self._reader("registry.db")
            return [] if reg is None else [d.dev for d in RegistryView(reg).devices()
                                           if d.active]
        return [bytes.fromhex(d) for d in self.config.ha_meters]

    # -- one round ------------------------------------------------------------------------------
    def step(self) -> int:
        """Clear what is owed, publish what is new; returns how many messages the MQTT
        process took (0 when it took none: the round is rolled back, and done again)."""
        if not self.connected.is_set():
            self._announced.clear()  # a new connection announces again (a broker may forget)
            self._swept = False  # and clears again (a lost MQTT process may have lost some)
            return 0
        entitled = self.consented()  # afresh each round: a withdrawal counts now
        cooked, logdb = self._reader("cooked.db"), self._reader("log.db")
        if cooked is not None:
            self._record(cooked, entitled)
        self._counts, self._notes = Counter(), []
        items: list[Item] = []
        try:
            with atomic(self.db):
                items += self._clear(set(entitled), sweep=not self._swept)
                if cooked is not None and logdb is not None:
                    cooked.execute("BEGIN")  # one view of the index for the round
                    try:
                        items += self._feeders(cooked)
                        items += self._meters(cooked, logdb, entitled)
                    finally:
                        cooked.execute("COMMIT")
                if items and not self.publish(items):
                    raise NotTakenError(f"the MQTT process took none of {len(items)} messages")
        except NotTakenError as e:
            self._announced.clear()  # what this round announced was not sent
            self.counters["not_taken"] += 1
            if (n := self._once("not taken")) is not None:
                log.warning("republish: %s; the round (with any clearing owed) is done again "
                            "every %.1f s (%d more since the last line)", e,
                            self.config.ha_period_s, n)
            return 0
        except BaseException:  # rolled back (a storage fault): announce again next round
            self._announced.clear()
            raise
        self._swept = True
        self._counts["messages"] += len(items)
        self.counters.update(self._counts)
        for key, level, line in self._notes:
            if (n := self._once(*key)) is not None:
                log.log(level, "republish: %s%s", line,
                        f" ({n} more since the last line)" if n else "")
        return len(items)

    def _record(self, cooked: sqlite3.Connection, entitled: list[bytes]) -> None:
        """Entitled meters with readings, recorded as published (and committed) before any
        message of theirs is handed over: a crash after the handover cannot forget them."""
        known = {bytes(d) for (d,) in self.db.execute(
            "SELECT dev FROM published WHERE cleared = 0")}
        new = [dev for dev in entitled if dev not in known and cooked.execute(
            "SELECT 1 FROM readings WHERE dev = ? LIMIT 1", (dev,)).fetchone()]
        if new:
            with atomic(self.db):
                self.db.executemany("INSERT INTO published VALUES (?, 0) ON CONFLICT(dev) "
                                    "DO UPDATE SET cleared = 0", [(d,) for d in new])

    def _clear(self, entitled: set[bytes], sweep: bool) -> list[Item]:
        """Recorded meters no longer entitled: their retained topics cleared (`sweep`: also
        those cleared before)."""
        items: list[Item] = []
        swept = 0
        rows = self.db.execute("SELECT dev, cleared FROM published ORDER BY dev").fetchall()
        for dev, cleared in rows:
            dev = bytes(dev)
            if dev in entitled or (cleared and not sweep):
                continue
            items += self.clearing(dev)
            self.db.execute("UPDATE published SET cleared = 1 WHERE dev = ?", (dev,))
            self.db.execute("DELETE FROM meters WHERE dev = ?", (dev,))
            self._counts["cleared"] += 1
            if not cleared:
                self._notes.append((("cleared", dev.hex()), logging.INFO,
                                    f"meter {dev.hex()} is no longer entitled (consent "
                                    "withdrawn, or revoked); its retained topics were cleared"))
            else:
                swept += 1
        if swept:
            self._notes.append((("swept",), logging.INFO, f"the retained topics of {swept} "
                                "meters no longer entitled were cleared again (at start, or "
                                "after a reconnect)"))
        return items

    def _bad(self, what: str, where: str, e: Exception) -> None:
        self._counts["bad_rows"] += 1
        self._notes.append((("bad", what), logging.WARNING,
                            f"skipped the {what} at {where}: {_reason(e)}"))

    def _monotone(self, kind: str, name: str, state: dict[str, Any]) -> dict[str, Any]:
        """The state with each total_increasing value at least the last one published."""
        for suffix, _, key in FEEDER_SENSORS if kind == "feeder" else METER_SENSORS:
            sensor = self.unique_id(kind, name, suffix)
            row = self.db.execute("SELECT v FROM highs WHERE sensor = ?", (sensor,)).fetchone()
            if row is not None and state[key] < row[0]:
                self._counts["held"] += 1
                self._notes.append((("held", sensor), logging.INFO,
                                    f"{sensor} held at {row[0]} (would go down to "
                                    f"{state[key]}: a revision, or a register reset)"))
                state[key] = row[0]
            elif row is None or state[key] > row[0]:
                self.db.execute("INSERT OR REPLACE INTO highs VALUES (?, ?)",
                                (sensor, state[key]))
        return state

    def _feeders(self, cooked: sqlite3.Connection) -> list[Item]:
        cursor = int(meta(self.db, "cursor") or 0)
        rows = cooked.execute("SELECT leaf, msg FROM aggregates WHERE leaf >= ? ORDER BY leaf "
                              "LIMIT ?", (cursor, BATCH)).fetchall()
        touched: dict[str, str] = {}
        for leaf, msg in rows:
            cursor = leaf + 1
            try:
                m = P.parse(bytes(msg))
                if m.type != P.AGGREGATE:
                    raise BadRowError(f"a type {m.type} message, not an aggregate")
                state = self.feeder_state(m.fields, leaf)
            except _BAD as e:
                self._bad("aggregate", f"log index {leaf}", e)
                continue
            self._add_aggregate(m.fields, state)
            touched[slug(m.fields[1])] = m.fields[1]
        set_meta(self.db, "cursor", cursor)
        items: list[Item] = []
        for (feeder,) in self.db.execute("SELECT feeder FROM feeders ORDER BY feeder"):
            items += self._announce("feeder", slug(feeder), f"Feeder {feeder}")
        for name in sorted(touched):
            (state,) = self.db.execute("SELECT state FROM feeders WHERE feeder = ?",
                                       (touched[name],)).fetchone()
            state = self._monotone("feeder", name, json.loads(state))
            items.append((self.state_topic("feeder", name), _json(state), 1, True))
        return items

    def _add_aggregate(self, f: P.Fields, fresh: dict[str, Any]) -> None:
        feeder, ivl, rev, imp, exp = f[1], f[2], f[16], f[4], f[5]
        old = self.db.execute("SELECT rev, imp, exp FROM feeder_ivls WHERE feeder = ? AND "
                              "ivl = ?", (feeder, ivl)).fetchone()
        if old is not None and old[0] >= rev:
            return  # an older revision than the one counted
        d_imp, d_exp = (imp, exp) if old is None else (imp - old[1], exp - old[2])
        self.db.execute("INSERT OR REPLACE INTO feeder_ivls VALUES (?, ?, ?, ?, ?)",
                        (feeder, ivl, rev, imp, exp))
        row = self.db.execute("SELECT imp, exp, ivl, state FROM feeders WHERE feeder = ?",
                              (feeder,)).fetchone()
        tot_imp, tot_exp = (row[0] if row else 0) + d_imp, (row[1] if row else 0) + d_exp
        latest = row is None or ivl >= row[2]
        state = json.loads(row[3]) if row and not latest else fresh
        state["import_total_wh"], state["export_total_wh"] = tot_imp, tot_exp
        self.db.execute("INSERT OR REPLACE INTO feeders VALUES (?, ?, ?, ?, ?)",
                        (feeder, tot_imp, tot_exp, ivl if latest else row[2], _text(state)))

    def feeder_state(self, f: P.Fields, leaf: int) -> dict[str, Any]:
        """A type-11 aggregate as the feeder's state JSON (totals added by the caller)."""
        v = {k: (None if f.get(k) is None else round(f[k] * 0.1, 1)) for k in (11, 12)}
        return {"fog": self.fog, "feeder": f[1], "start_utc": utc_text(f[2] - f[3]),
                "end_utc": utc_text(f[2]), "end_unix": f[2], "dur_s": f[3],
                "import_wh": f[4], "export_wh": f[5], "import_total_wh": 0,
                "export_total_wh": 0, "meters": f[6], "measured": f[7], "estimated": f[8],
                "estimated_wh": f[9], "loss_wh": f.get(10), "v_min_v": v[11],
                "v_max_v": v[12], "alerts": list(f[13]), "rev": f[16],
                "merged": list(f.get(20, [])), "log_index": leaf}

    def _meters(self, cooked: sqlite3.Connection, logdb: sqlite3.Connection,
                entitled: list[bytes]) -> list[Item]:
        items: list[Item] = []
        recorded = {bytes(d) for (d,) in self.db.execute(
            "SELECT dev FROM published WHERE cleared = 0")}
        for dev in entitled:
            if dev not in recorded:
                continue  # a first reading after _record looked: the next round
            rows = cooked.execute("SELECT seq, t, dur, imp, exp, flags, leaf FROM readings "
                                  "WHERE dev = ? ORDER BY seq DESC LIMIT 2", (dev,)).fetchall()
            if not rows:
                continue
            name = dev.hex()
            items += self._announce("meter", name, f"Meter {name}")
            sent = self.db.execute("SELECT seq FROM meters WHERE dev = ?", (dev,)).fetchone()
            if sent is not None and sent[0] >= rows[0][0]:
                continue
            self.db.execute("INSERT OR REPLACE INTO meters VALUES (?, ?)", (dev, rows[0][0]))
            try:
                state = self.meter_state(dev, rows, logdb)
            except _BAD as e:
                self._bad("reading", f"meter {name} seq {rows[0][0]}", e)
                continue
            state = self._monotone("meter", name, state)
            items.append((self.state_topic("meter", name), _json(state), 1, True))
        return items

    def meter_state(self, dev: bytes, rows: list[Any], logdb: sqlite3.Connection,
                    ) -> dict[str, Any]:
        """A meter's latest reading (the first of its cooked `rows`, the one before it next)
        as its state JSON; BadRowError (or what decoding raised) if there is none to make."""
        seq, leaf = rows[0][0], rows[0][6]
        entry = logdb.execute("SELECT data FROM entries WHERE idx = ?", (leaf,)).fetchone()
        if entry is None:
            raise BadRowError(f"log entry {leaf} is missing")
        m = P.parse(bytes(entry[0]))
        f = m.fields
        if m.type != P.READING or f[1] != dev or f[2] != seq:
            raise BadRowError(f"log entry {leaf} is not that reading")
        prev = None
        if len(rows) == 2:
            s, t, dur, imp, exp, flags, _ = rows[1]
            prev = {0: P.READING, 1: dev, 2: s, 3: t, 4: dur, 5: imp, 6: exp, 7: flags}
        record = reading_row(f, leaf, prev).record(UTC)
        return {"fog": self.fog, **{k: v for k, v in record.items() if k not in (
            "start_local", "end_local", "estimated", "estimate_method")}}

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        failing = False
        while True:
            try:
                self.step()
                failing = False
            except Exception:  # logged once per failure streak; ingest is never affected
                if not failing:
                    log.exception("republish step failed (retried every %.1f s)",
                                  self.config.ha_period_s)
                failing = True
            if self._stop.wait(self.config.ha_period_s):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="republish", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for db in self._readers.values():
            db.close()
        self._readers.clear()
        self.db.close()


def _text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _json(doc: dict[str, Any]) -> bytes:
    return _text(doc).encode()

