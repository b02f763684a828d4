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
after the messages were handed over, so a restart resumes where it stopped and sends the
last ones again at worst. A meter whose consent was withdrawn (no longer listed) has its
retained topics cleared at the next start.

A feeder's import and export totals (`total_increasing` sensors) are the sums over its
intervals of the latest revision of each interval's aggregate; a revision changes the total
by its difference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC
from typing import Any

from fog_node.config import FogConfig
from fog_node.export import reading_row, utc_text
from fog_node.node import FogError
from fog_node.reads import RegistryView, read_only
from meterledger import wire as P
from meterledger.infra.sqlite import atomic, connect, meta, set_meta

log = logging.getLogger("fog_node")
Publish = Callable[[list[tuple[str, bytes, int, bool]]], None]
BATCH = 1000  # aggregates read per step
_STATE = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meters (dev BLOB PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS feeders (feeder TEXT PRIMARY KEY, imp INTEGER NOT NULL,
    exp INTEGER NOT NULL, ivl INTEGER NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feeder_ivls (feeder TEXT NOT NULL, ivl INTEGER NOT NULL,
    rev INTEGER NOT NULL, imp INTEGER NOT NULL, exp INTEGER NOT NULL,
    PRIMARY KEY (feeder, ivl));
"""
# the sensors of each entity: (suffix, name, the state's key)
FEEDER_SENSORS = (("import", "Import", "import_total_wh"), ("export", "Export", "export_total_wh"))
METER_SENSORS = (("import", "Import register", "import_wh"),
                 ("export", "Export register", "export_wh"))


def slug(name: str) -> str:
    """A feeder name as one topic level and id part: itself when it is letters, digits,
    '-' and '_' (up to 40), else those characters and 8 hex of its SHA-256."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
        return name
    return (re.sub(r"[^A-Za-z0-9_-]", "_", name)[:31] + "_"
            + hashlib.sha256(name.encode()).hexdigest()[:8])


def _outside(a: str, b: str) -> bool:
    return a != b and not a.startswith(b + "/") and not b.startswith(a + "/")


class Republisher:
    def __init__(self, config: FogConfig, fog_hex: str, publish: Publish,
                 connected: threading.Event) -> None:
        for name, root in (("ha_root", config.ha_root),
                           ("ha_discovery_prefix", config.ha_discovery_prefix)):
            if not _outside(root, config.mqtt_root):
                raise FogError(f"{name} {root!r} must lie outside mqtt_root "
                               f"{config.mqtt_root!r}: meters' topics are not republished")
        self.config = config
        self.fog = fog_hex
        self.publish = publish
        self.connected = connected
        self.dir = config.data_dir
        self.db = connect(self.dir / "republish.db")
        self.db.executescript(_STATE)
        self._readers: dict[str, sqlite3.Connection] = {}
        self._announced: set[str] = set()  # unique ids whose config was sent this connection
        self._withdrawn_checked = False
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

    def _announce(self, kind: str, name: str, label: str) -> list[tuple[str, bytes, int, bool]]:
        items = []
        for topic, doc in self.discovery(kind, name, label):
            if doc["unique_id"] not in self._announced:
                self._announced.add(doc["unique_id"])
                items.append((topic, _json(doc), 1, True))
        return items

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
        """Publish what is new; returns how many messages were handed to the MQTT process."""
        if not self.connected.is_set():
            self._announced.clear()  # a new connection announces again (a broker may forget)
            return 0
        cooked, logdb = self._reader("cooked.db"), self._reader("log.db")
        if cooked is None or logdb is None:
            return 0
        items: list[tuple[str, bytes, int, bool]] = []
        with atomic(self.db):
            if not self._withdrawn_checked:
                items += self._withdrawn()
            cooked.execute("BEGIN")  # one view of the index for the round
            try:
                items += self._feeders(cooked)
                items += self._meters(cooked, logdb)
            finally:
                cooked.execute("COMMIT")
            self.publish(items)
        self._withdrawn_checked = True
        return len(items)

    def _withdrawn(self) -> list[tuple[str, bytes, int, bool]]:
        """Meters sent before but no longer consented: their retained topics cleared."""
        keep = set(self.consented())
        items: list[tuple[str, bytes, int, bool]] = []
        for (dev,) in self.db.execute("SELECT dev FROM meters").fetchall():
            if bytes(dev) in keep:
                continue
            name = bytes(dev).hex()
            items += [(topic, b"", 1, True) for topic, _ in self.discovery("meter", name, "")]
            items.append((self.state_topic("meter", name), b"", 1, True))
            self.db.execute("DELETE FROM meters WHERE dev = ?", (dev,))
            log.info("republish: meter %s is no longer consented; its topics were cleared",
                     name)
        return items

    def _feeders(self, cooked: sqlite3.Connection) -> list[tuple[str, bytes, int, bool]]:
        cursor = int(meta(self.db, "cursor") or 0)
        rows = cooked.execute("SELECT leaf, msg FROM aggregates WHERE leaf >= ? ORDER BY leaf "
                              "LIMIT ?", (cursor, BATCH)).fetchall()
        touched: dict[str, str] = {}
        for leaf, msg in rows:
            f = P.parse(msg, schema=False).fields
            self._add_aggregate(f, leaf)
            touched[slug(f[1])] = f[1]
            cursor = leaf + 1
        set_meta(self.db, "cursor", cursor)
        items: list[tuple[str, bytes, int, bool]] = []
        for (feeder,) in self.db.execute("SELECT feeder FROM feeders ORDER BY feeder"):
            items += self._announce("feeder", slug(feeder), f"Feeder {feeder}")
        for name in sorted(touched):
            (state,) = self.db.execute("SELECT state FROM feeders WHERE feeder = ?",
                                       (touched[name],)).fetchone()
            items.append((self.state_topic("feeder", name), state.encode(), 1, True))
        return items

    def _add_aggregate(self, f: P.Fields, leaf: int) -> None:
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
        state = json.loads(row[3]) if row and not latest else self.feeder_state(f, leaf)
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
                ) -> list[tuple[str, bytes, int, bool]]:
        items: list[tuple[str, bytes, int, bool]] = []
        for dev in self.consented():
            rows = cooked.execute("SELECT seq, t, dur, imp, exp, flags, leaf FROM readings "
                                  "WHERE dev = ? ORDER BY seq DESC LIMIT 2", (dev,)).fetchall()
            if not rows:
                continue
            name = dev.hex()
            items += self._announce("meter", name, f"Meter {name}")
            sent = self.db.execute("SELECT seq FROM meters WHERE dev = ?", (dev,)).fetchone()
            if sent is not None and sent[0] >= rows[0][0]:
                continue
            entry = logdb.execute("SELECT data FROM entries WHERE idx = ?",
                                  (rows[0][6],)).fetchone()
            if entry is None:
                continue
            f = P.parse(bytes(entry[0]), schema=False).fields
            prev = None
            if len(rows) == 2:
                s, t, dur, imp, exp, flags, _ = rows[1]
                prev = {0: P.READING, 1: dev, 2: s, 3: t, 4: dur, 5: imp, 6: exp, 7: flags}
            record = reading_row(f, rows[0][6], prev).record(UTC)
            state = {"fog": self.fog, **{k: v for k, v in record.items() if k not in (
                "start_local", "end_local", "estimated", "estimate_method")}}
            items.append((self.state_topic("meter", name), _json(state), 1, True))
            self.db.execute("INSERT OR REPLACE INTO meters VALUES (?, ?)", (dev, rows[0][0]))
        return items

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

