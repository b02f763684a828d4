"""Home Assistant republishing (fog_node/republish.py, docs/DATA.md, issue 14), all real: a
mosquitto that includes the fog's generated TLS, password and ACL files, a running fog node,
virtual meters running the firmware's MQTT transport over TLS, and a Home Assistant client
logged in as the read-only user the fog configured. It finds the discovery configs and the
state JSON of the feeder and of the one meter whose customer consented, never anything of
the other meter, cannot read the meters' own topics nor forge a state; withdrawing the
consent clears the meter's retained topics."""

from __future__ import annotations

import dataclasses
import json
import ssl
import threading
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
from hardware.virtual_meter import VirtualMeter
from meterledger import wire as P
from meterledger.errors import MeterLedgerError
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
    assert Republisher.configured(config, key.id.hex(), lambda items: None,
                                  threading.Event()) is None
    for root in ("grid", "grid/ha"):
        with pytest.raises(MeterLedgerError, match="outside mqtt_root"):
            Republisher(dataclasses.replace(config, ha_republish=True, ha_root=root),
                        key.id.hex(), lambda items: None, threading.Event())
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
