"""Home Assistant republishing (fog_node/republish.py, docs/DATA.md, issue 14), all real: a
mosquitto that includes the fog's generated TLS, password and ACL files, a running fog node,
virtual meters running the firmware's MQTT transport over TLS, and a Home Assistant client
logged in as the read-only user the fog configured. It finds the discovery configs and the
state JSON of the feeder and of the one meter whose customer consented, never anything of
the other meter, cannot read the meters' own topics nor forge a state; withdrawing the
consent clears the meter's retained topics.

The `bench` tests drive a republisher round by round over a fog's real stores (rows written
straight into them) and the fog's real MQTT process: clearings the process did not take are
owed until it does (across a restart), every start sweeps, a total never goes down, and a bad
cooked row is skipped."""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fog_node.broker_access import BrokerAccess
from fog_node.config import FogConfig
from fog_node.enrollment import queue_request
from fog_node.node import FogNode, init_data_dir
from fog_node.republish import Republisher
from fog_node.service import FogService
from fog_node.transport.mqtt import MQTTLink
from hardware.virtual_meter import VirtualMeter
from meterledger import wire as P
from meterledger.errors import MeterLedgerError
from meterledger.infra.sqlite import connect
from tests.kit.chainkit import aggregate_fields
from tests.kit.fogkit import (
    ManualClock,
    enroll_request,
    mqtt_meters,
    secure_broker,
    secure_config,
    wait,
)

T0 = 1_800_000_000
HA = "homeassistant-ro"


class HAClient:
    """Home Assistant as the broker sees it: TLS, the read-only user, subscribed to `#`."""

    def __init__(self, config: FogConfig, access: BrokerAccess) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=HA, clean_session=True,
                             protocol=mqtt.MQTTv311)
        self.c.tls_set_context(ssl.create_default_context(cafile=str(access.ca_cert)))
        self.c.username_pw_set(HA, access.ha_password())
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, r, p: c.subscribe("#", 1)
        self.c.on_subscribe = lambda *_: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", config.mqtt_tls_port, 30)
        self.c.loop_start()
        wait(self.subscribed.is_set, 10, what="Home Assistant subscribed")

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def last(self) -> dict[str, bytes]:
        with self.lock:
            return dict(self.messages)

    def json(self, topic: str) -> Any:
        raw = self.last().get(topic)
        return json.loads(raw) if raw else None

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, 1, True).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@dataclasses.dataclass
class Stack:
    config: FogConfig
    clock: ManualClock
    meters: list[VirtualMeter]
    node: FogNode | None = None
    svc: FogService | None = None

    def start(self, **settings: Any) -> FogService:
        self.config = dataclasses.replace(self.config, **settings)
        self.node = FogNode(self.config, self.clock.now)
        self.svc = FogService(self.node, self.clock.now)
        self.svc.start()
        wait(self.svc.connected.is_set, what="the fog connected over TLS")
        return self.svc

    def stop(self) -> None:
        if self.svc is not None:
            self.svc.stop()
        if self.node is not None:
            self.node.close()
        self.svc = self.node = None

    def tick(self) -> None:
        self.clock.advance(10)  # an interval per 90 ticks
        for vm in self.meters:
            vm.app.step()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    config = secure_config(tmp_path, seal_period_s=0.2, privacy_min_meters=1,
                           ha_republish=True, ha_username=HA, ha_period_s=0.1)
    key = init_data_dir(config.data_dir)
    clock = ManualClock(T0 - 10)
    with secure_broker(tmp_path, config, key.id.hex()):
        ca = (config.data_dir / "broker" / "ca.crt").read_text()
        meters = mqtt_meters(tmp_path, 2, config.mqtt_tls_port, key, clock, ca=ca)
        for vm in meters:
            queue_request(config.data_dir, enroll_request(vm))
        s = Stack(config, clock, meters)
        try:
            yield s
        finally:
            for vm in meters:
                vm.app.transport.close()
            s.stop()


def aggregates(node: FogNode) -> list[P.Fields]:
    out = []
    for i in range(node.log.size()):
        m = P.parse(node.log.entry(i))
        if m.type == P.AGGREGATE:
            out.append(m.fields)
    return out


# long: one story, from discovery to a withdrawn consent, on one running stack
def test_home_assistant_gets_feeders_and_the_consented_meter_only(stack: Stack) -> None:
    consented, other = stack.meters
    yes, no = consented.app.meter.id.hex(), other.app.meter.id.hex()
    stack.start(ha_meters=[yes])
    assert stack.node is not None
    fog = stack.node.id_hex
    ha = HAClient(stack.config, stack.node.access)
    feeder_state = f"meterledger/{fog}/feeder/all/state"
    meter_state = f"meterledger/{fog}/meter/{yes}/state"

    def fresh() -> bool:
        f, m = ha.json(feeder_state), ha.json(meter_state)
        return bool(f and m and f["end_unix"] >= T0 + 1800 and m["seq"] >= 3)

    wait(fresh, timeout=60, tick=stack.tick, what="feeder and meter states")
    got = ha.last()  # the configs went before the states, in order (one publisher, QoS 1)
    # discovery: two energy sensors each, for the feeder and the consented meter
    configs = {t: json.loads(p) for t, p in got.items()
               if t.startswith("homeassistant/sensor/") and p}
    assert sorted(configs) == sorted(
        f"homeassistant/sensor/meterledger_{fog}_{kind}_{name}_{what}/config"
        for kind, name in (("feeder", "all"), ("meter", yes)) for what in ("import", "export"))
    for topic, c in configs.items():
        assert topic == f"homeassistant/sensor/{c['unique_id']}/config"
        assert (c["device_class"], c["state_class"], c["unit_of_measurement"]) == \
            ("energy", "total_increasing", "Wh")
        assert c["state_topic"] == c["json_attributes_topic"]
        assert c["device"]["identifiers"][0].startswith(f"meterledger_{fog}_")
        key = c["value_template"].removeprefix("{{ value_json.").removesuffix(" }}")
        assert isinstance(json.loads(got[c["state_topic"]])[key], int)
    feeder = configs[f"homeassistant/sensor/meterledger_{fog}_feeder_all_import/config"]
    assert feeder["value_template"] == "{{ value_json.import_total_wh }}"
    # the feeder's state: the latest aggregate, and totals over every interval's latest rev
    aggs = aggregates(stack.node)
    state = ha.json(feeder_state)
    latest: dict[int, P.Fields] = {}
    for a in aggs:
        if a[2] not in latest or a[16] > latest[a[2]][16]:
            latest[a[2]] = a
    top = latest[max(latest)]
    assert (state["feeder"], state["end_unix"], state["dur_s"]) == ("all", top[2], top[3])
    assert (state["import_wh"], state["meters"], state["rev"]) == (top[4], top[6], top[16])
    assert state["import_total_wh"] == sum(a[4] for a in latest.values())
    assert state["export_total_wh"] == sum(a[5] for a in latest.values())
    # the meter's state: its latest reading, decoded
    m = ha.json(meter_state)
    with stack.node.lock:
        _, leaf = stack.node.registry.logged_digest(consented.app.meter.id, m["seq"]) \
            or (b"", -1)
        f = P.parse(stack.node.log.entry(leaf)).fields
    assert (m["dev"], m["end_unix"], m["import_wh"], m["export_wh"]) == (yes, f[3], f[5], f[6])
    assert m["flags"] == P.flag_names(f[7]) and m["v_min_v"] == f[9][1] / 10
    assert m["import_interval_wh"] is not None and m["log_index"] == leaf
    assert "start_local" not in m and m["fog"] == fog
    # consent: nothing of the other meter, and nothing of the meters' own topics
    assert all(no not in t and no.encode() not in p for t, p in ha.messages)
    assert not any(t.startswith("grid/") for t, _ in ha.messages)
    # the read-only user cannot forge a state (the broker drops its publish)
    ha.publish(feeder_state, b'{"forged": true}')
    ha.close()
    second = HAClient(stack.config, stack.node.access)
    wait(lambda: feeder_state in second.last(), 10, what="retained feeder state")
    assert "forged" not in second.json(feeder_state)
    second.close()

    # the customer withdraws consent: at the next start its retained topics are cleared
    stack.stop()
    ha = HAClient(stack.config, BrokerAccess(stack.config, fog))  # watching the restart
    wait(lambda: meter_state in ha.last(), 10, what="the retained meter state")
    stack.start(ha_meters=[])
    assert stack.node is not None
    meter_topics = [t for t in configs if f"_meter_{yes}_" in t] + [meter_state]
    wait(lambda: all(ha.last().get(t) == b"" for t in meter_topics), 30,
         tick=stack.tick, what="the meter's retained topics cleared")
    ha.close()
    third = HAClient(stack.config, stack.node.access)
    wait(lambda: feeder_state in third.last(), 10, what="retained feeder state")
    assert not any(yes in t for t in third.last()), "retained meter topics remain"
    third.close()


def test_republishing_is_off_by_default_and_keeps_out_of_the_meters_root(tmp_path: Path,
                                                                          ) -> None:
    config = FogConfig(data_dir=tmp_path / "fog")
    assert not config.ha_republish and config.ha_meters == [] and not config.ha_all_meters
    key = init_data_dir(config.data_dir)
    access = BrokerAccess(config, key.id.hex())
    assert "meterledger" not in access.acl.read_text() + access.passwd.read_text()
    assert Republisher.configured(config, key.id.hex(), lambda items: True,
                                  threading.Event()) is None
    for root in ("grid", "grid/ha"):
        with pytest.raises(MeterLedgerError, match="outside mqtt_root"):
            Republisher(dataclasses.replace(config, ha_republish=True, ha_root=root),
                        key.id.hex(), lambda items: True, threading.Event())
    on = dataclasses.replace(config, ha_republish=True, ha_username=HA)
    access = BrokerAccess(on, key.id.hex())
    access.write()
    acl = access.acl.read_text()
    fog_block = acl.split(f"user fog-{key.id.hex()}\n")[1].split("\n\n")[0].splitlines()
    assert fog_block[-2:] == ["topic write meterledger/#", "topic write homeassistant/#"]
    assert acl.split(f"user {HA}\n")[1].split("\n\n")[0].splitlines() == [
        "topic read meterledger/#", "topic read homeassistant/#"]
    assert (access.dir / "ha.secret").stat().st_mode & 0o777 == 0o600
    assert any(line.startswith(f"{HA}:$7$") for line in access.passwd.read_text().splitlines())


def meter_topics(fog: str, dev: str) -> list[str]:
    """A meter's discovery config topics and its state topic."""
    return [f"homeassistant/sensor/meterledger_{fog}_meter_{dev}_{what}/config"
            for what in ("import", "export")] + [f"meterledger/{fog}/meter/{dev}/state"]


def test_a_revoked_meter_and_a_withdrawn_consent_are_cleared_while_running(stack: Stack,
                                                                           ) -> None:
    a, b = stack.meters
    svc = stack.start(ha_all_meters=True)
    assert stack.node is not None and svc.republisher is not None
    ha = HAClient(stack.config, stack.node.access)
    kept, revoked = (meter_topics(stack.node.id_hex, vm.app.meter.id.hex()) for vm in (a, b))
    wait(lambda: bool(ha.json(kept[-1]) and ha.json(revoked[-1])), 60, tick=stack.tick,
         what="both meters' states")
    # ha_all_meters covers active meters only: revoking one clears it, no restart needed
    queue_request(stack.config.data_dir, enroll_request(b, status="revoked"))
    wait(lambda: all(ha.last().get(t) == b"" for t in revoked), 30, tick=stack.tick,
         what="the revoked meter's topics cleared")
    assert all(ha.last().get(t) for t in kept)
    # entitlement is the config's, read each round (a reload would assign it)
    rep = svc.republisher
    rep.config = dataclasses.replace(rep.config, ha_all_meters=False)
    wait(lambda: all(ha.last().get(t) == b"" for t in kept), 30,
         what="the withdrawn meter's topics cleared")
    assert rep.counters["cleared"] == 2
    ha.close()


@dataclasses.dataclass
class Bench:
    """A fog's stores (a FogNode's, rows written into them by hand), its MQTT process on the
    fog's broker, Home Assistant watching, and the republishers made over them."""

    config: FogConfig
    node: FogNode
    link: MQTTLink
    connected: threading.Event
    ha: HAClient
    reps: list[Republisher] = dataclasses.field(default_factory=list)

    def republisher(self, up: threading.Event | None = None, **settings: Any) -> Republisher:
        rep = Republisher(dataclasses.replace(self.config, **settings), self.node.id_hex,
                          self.link.publish, up or self.connected)
        self.reps.append(rep)
        return rep

    def _index(self, table: str, row: tuple[Any, ...]) -> None:
        db = connect(self.config.data_dir / "cooked.db", wal=False)
        try:
            db.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
        finally:
            db.close()

    def aggregate(self, ivl: int, imp: int, rev: int = 0, replaces: bytes | None = None,
                  raw: bytes | None = None) -> bytes:
        """Feeder `all`'s aggregate of interval `ivl` logged and indexed (`raw` instead)."""
        key, end = self.node.key, T0 + 900 * ivl
        raw = raw or P.sign1(key, aggregate_fields(key.id, "all", end, imp, rev=rev,
                                                   replaces=replaces))
        leaf = self.node.log.append_batch([raw])
        self._index("aggregates", ("all", end, rev, P.digest(raw), leaf, raw))
        return P.digest(raw)

    def reading(self, meter: P.SigningKey, seq: int, imp: int, raw: bytes | None = None,
                ) -> None:
        """`meter`'s reading `seq` logged and indexed (`raw` logged in its place)."""
        t = T0 + 900 * seq
        signed = P.sign1(meter, P.reading(meter.id, seq, t, 900, imp, 0, 0, bytes(32)))
        leaf = self.node.log.append_batch([raw or signed])
        self._index("readings", (meter.id, seq, t, 900, imp, 0, 0, None, None,
                                 P.digest(signed), leaf, 0))

    def topics(self, meter: P.SigningKey) -> list[str]:
        return meter_topics(self.node.id_hex, meter.id.hex())

    def cleared(self, meter: P.SigningKey) -> bool:
        return all(self.ha.last().get(t) == b"" for t in self.topics(meter))


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    config = secure_config(tmp_path, ha_republish=True, ha_username=HA, ha_period_s=0.1)
    key = init_data_dir(config.data_dir)
    with secure_broker(tmp_path, config, key.id.hex()):
        node = FogNode(config, time.time)
        connected = threading.Event()
        link = MQTTLink(node.access.client, node.access.fog_user, [], queue.SimpleQueue(),
                        connected, lambda: None)
        link.start()
        b = Bench(config, node, link, connected, HAClient(config, node.access))
        try:
            wait(connected.is_set, what="the fog's MQTT process connected")
            yield b
        finally:
            b.ha.close()
            for rep in b.reps:
                rep.stop()
            link.stop()
            node.close()


METER = P.SigningKey.from_int(0xC0FFEE)


def published(bench: Bench) -> None:
    """METER's reading published, with consent."""
    bench.reading(METER, 1, 100)
    assert bench.republisher(ha_meters=[METER.id.hex()]).step() > 0
    wait(lambda: bool(bench.ha.json(bench.topics(METER)[-1])), 10, what="the meter's state")


def test_a_clearing_the_mqtt_process_did_not_take_stays_owed_across_a_restart(bench: Bench,
                                                                              ) -> None:
    published(bench)
    bench.link.stop()  # the MQTT process is gone ...
    assert bench.link.publish([("meterledger/x", b"", 1, True)]) is False
    up = threading.Event()
    up.set()  # ... while the connection still looks up (the reader has not seen it yet)
    withdrawn = bench.republisher(up, ha_meters=[])
    assert withdrawn.step() == 0 and withdrawn.step() == 0  # not taken: owed
    assert withdrawn.counters["not_taken"] == 2 and withdrawn.counters["cleared"] == 0
    withdrawn.stop()  # the fog restarts, the MQTT process still down
    again = bench.republisher(up, ha_meters=[])
    assert again.step() == 0
    bench.link.start()
    wait(bench.connected.is_set, what="a new MQTT process, connected")
    assert again.step() == 3  # three topics, emptied
    wait(lambda: bench.cleared(METER), 10, what="the meter's topics cleared")
    assert again.counters["cleared"] == 1
    assert again.step() == 0  # cleared once while running: nothing more until a restart


def test_every_start_and_reconnect_clears_again_what_was_ever_published(bench: Bench) -> None:
    published(bench)
    assert bench.republisher(ha_meters=[]).step() == 3
    wait(lambda: bench.cleared(METER), 10, what="the meter's topics cleared")
    state = bench.topics(METER)[-1]

    def stale() -> None:  # a clearing lost (a dying MQTT process, a restored broker store)
        bench.link.publish([(state, b'{"seq": 1}', 1, True)])
        wait(lambda: bench.ha.last().get(state) == b'{"seq": 1}', 10, what="a stale state")

    stale()
    rep = bench.republisher(ha_meters=[])  # a restart: the sweep
    assert rep.step() == 3
    wait(lambda: bench.cleared(METER), 10, what="the meter's topics cleared again")
    assert rep.step() == 0
    bench.link.stop()  # a reconnect, as the republisher sees it
    assert rep.step() == 0
    bench.link.start()
    wait(bench.connected.is_set, what="a new MQTT process, connected")
    stale()
    assert rep.step() == 3
    wait(lambda: bench.cleared(METER), 10, what="the meter's topics cleared after a reconnect")
    # consent given again: published again (configs and state), recorded again
    assert bench.republisher(ha_meters=[METER.id.hex()]).step() == 3
    wait(lambda: all(bench.ha.last().get(t) for t in bench.topics(METER)), 10,
         what="the meter published again")


def test_a_total_increasing_sensor_never_goes_down(bench: Bench) -> None:
    feeder = f"meterledger/{bench.node.id_hex}/feeder/all/state"

    def total() -> int:
        doc = bench.ha.json(feeder)
        return -1 if doc is None else int(doc["import_total_wh"])

    first = bench.aggregate(1, 1000)
    rep = bench.republisher()
    rep.step()
    wait(lambda: total() == 1000, 10, what="the first total")
    bench.aggregate(1, 400, rev=1, replaces=first)  # a revision lowers interval 1: sum 400
    rep.step()
    wait(lambda: bench.ha.json(feeder)["rev"] == 1, 10, what="the revision's state")
    assert total() == 1000 and rep.counters["held"] == 1
    rep.stop()
    rep = bench.republisher()  # the last total published is durable: sum 700, still held
    bench.aggregate(2, 300)
    rep.step()
    wait(lambda: bench.ha.json(feeder)["end_unix"] == T0 + 1800, 10, what="interval 2")
    assert total() == 1000
    bench.aggregate(3, 500)  # sum 1200: up again
    rep.step()
    wait(lambda: total() == 1200, 10, what="the total passing the one held")
    # a meter's register likewise
    meter = bench.topics(METER)[-1]
    rep = bench.republisher(ha_meters=[METER.id.hex()])

    def seq() -> int:
        return int((bench.ha.json(meter) or {}).get("seq", 0))

    bench.reading(METER, 1, 5000)
    rep.step()
    wait(lambda: seq() == 1, 10, what="reading 1")
    bench.reading(METER, 2, 4000)  # its register lower
    rep.step()
    wait(lambda: seq() == 2, 10, what="reading 2")
    assert bench.ha.json(meter)["import_wh"] == 5000


def test_a_bad_cooked_row_is_skipped_counted_and_logged(bench: Bench,
                                                        caplog: pytest.LogCaptureFixture,
                                                        ) -> None:
    feeder = f"meterledger/{bench.node.id_hex}/feeder/all/state"
    bench.aggregate(1, 1000)
    bench.aggregate(2, 0, raw=b"not a message")
    bench.aggregate(3, 0, raw=P.sign1(METER, P.reading(METER.id, 9, T0, 900, 1, 0, 0,
                                                         bytes(32))))  # not an aggregate
    bench.aggregate(4, 500)
    bench.reading(METER, 1, 100)
    bench.reading(METER, 2, 200, raw=b"not a reading")
    rep = bench.republisher(ha_meters=[METER.id.hex()])
    with caplog.at_level(logging.INFO, logger="fog_node"):
        assert rep.step() > 0
    wait(lambda: (bench.ha.json(feeder) or {}).get("end_unix") == T0 + 3600, 10,
         what="the aggregate after the bad rows")
    assert bench.ha.json(feeder)["import_total_wh"] == 1500
    assert rep.counters["bad_rows"] == 3
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 2, lines  # once per kind
    assert "skipped the aggregate at log index 1: " in lines[0]
    assert "skipped the reading at meter" in lines[1] and "seq 2" in lines[1]
    bench.reading(METER, 3, 300)  # and the next rows go on
    rep.step()
    wait(lambda: (bench.ha.json(bench.topics(METER)[-1]) or {}).get("seq") == 3, 10,
         what="the meter's next reading")
    assert rep.counters["bad_rows"] == 3
