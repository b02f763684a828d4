"""The whole dispatch loop, every part real: firmware meters on MQTT through mosquitto, the fog
service with its chain link and dispatcher, and the aggregator over HTTP with a registered
rule set. Load rises on a feeder -> the fog's cooked aggregates are anchored -> the rule
suggests curtailing -> a dispatcher approves it (API, bearer token) -> the instruction is on
the chain -> the fog sends signed commands -> the meters' limits switch -> the next readings
show the lower load -> the execution report is on the chain, naming the logged results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fog_node.chainlink.dispatch import Dispatcher
from fog_node.chainlink.faults import FaultReporter
from fog_node.chainlink.link import ChainLink
from fog_node.config import FogConfig
from fog_node.cooking.feeders import Feeder
from fog_node.enrollment import apply_request
from fog_node.node import FogNode, init_data_dir
from fog_node.service import FogService
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.wire import chain as C
from tests.kit.chainkit import Chain, running_chain
from tests.kit.fogkit import ManualClock, mqtt_meters, wait

IVL = 900
START = 1_800_000_000 - 6 * 3600  # 02:00 UTC: the simulated homes draw their night base load
THRESHOLD_KW = 8.0
LIMIT_W = 1000

RULES = f"""
name = "district-7"
version = 1

[[rule]]
id = "curtail-feeder-a"
feeder = "feeder-a"
metric = "import_kw"
above = {THRESHOLD_KW}
for_intervals = 2
op = "limit"
args = {{ max_w = {LIMIT_W} }}
valid_s = 1800
why = "feeder-a import above {THRESHOLD_KW} kW: limit the flexible loads"
"""


def chain_txs(chain: Chain, kind: str) -> list[P.Fields]:
    head = chain.ledger.head()
    out = []
    for h in range(head.height + 1):
        for raw in chain.ledger.block(h).txs:
            f = P.parse(raw).fields
            if f[3] == kind:
                out.append(f)
    return out


CLOCK = ManualClock(START - 10)  # one simulated time for meters, fog and chain


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    CLOCK.t = CLOCK.start
    with running_chain(tmp_path, CLOCK.now) as c:
        yield c


def test_load_rise_to_suggestion_to_commands_to_lower_load_to_report(tmp_path: Path, broker: Any,
                                                                    chain: Chain) -> None:
    clock = CLOCK
    key = init_data_dir(tmp_path / "fog")
    meters = mqtt_meters(tmp_path / "meters", 4, broker.port, key, clock)
    ids = tuple(vm.app.meter.id for vm in meters)
    config = FogConfig(data_dir=tmp_path / "fog", mqtt_port=broker.port, mqtt_security="lab",
                       seal_period_s=1,
                       interval_s=IVL, grace_s=60, chain_url=chain.url,
                       feeders=[Feeder("feeder-a", ids)], privacy_min_meters=3)
    node = FogNode(config, clock.now)
    chain.register("fog", key=node.key, name="fog-district-7")
    status, doc = chain.post(chain.sign(chain.key, C.RULES, C.rules_body("district-7", 1, RULES)))
    assert status == 200, doc
    svc = FogService(node, clock.now)
    link = ChainLink(node, ChainClient(chain.url), clock.now, period_s=60)
    node.chain = link
    svc.dispatcher = Dispatcher(node, link, svc.send_command, clock.now, retry_s=30)
    svc.faults = FaultReporter(link, lambda: svc.dispatcher)
    svc.start()
    link.start(0.05)
    try:
        wait(svc.connected.is_set, what="fog connected to mosquitto")
        for vm in meters:
            apply_request(node, {"pub": vm.app.meter.key.pub.hex(), "status": "active"})

        def step(dt: float = 30) -> None:
            clock.advance(dt)
            for vm in meters:
                vm.app.step()

        def run_to(t: float) -> None:
            while clock.t < t:
                step(min(30, t - clock.t))

        def anchored(ivl: int) -> bool:
            _, doc = chain.get(f"/v1/aggregates?fog={node.id_hex}&feeder=feeder-a")
            return any(a["ivl"] == ivl for a in doc["aggregates"])

        def agg(ivl: int) -> P.Fields:
            _, doc = chain.get(f"/v1/aggregates?fog={node.id_hex}&feeder=feeder-a")
            items = [a for a in doc["aggregates"] if a["ivl"] == ivl]
            return P.verify(bytes.fromhex(items[-1]["msg"]), node.key.public_key).fields

        def close(ivl: int) -> None:
            """Run the meters to the interval's close, wait until the fog has every meter's
            reading (acked; the clock stands still meanwhile, so a slow fog on a loaded host
            never finds the grace over before the readings came), then past the grace; wait
            for it on the chain (the meters keep stepping, so their readings are acked)."""
            run_to(ivl)
            wait(lambda: all(vm.app.meter.spool.acked == vm.app.meter.st["seq"] for vm in meters),
                 tick=lambda: step(0), timeout=60, what=f"the readings of {ivl} acked")
            run_to(ivl + 61)
            wait(lambda: anchored(ivl), tick=lambda: step(1), timeout=60,
                 what=f"aggregate of {ivl} anchored")

        # night load: two quiet intervals, nothing to suggest
        close(START + IVL)
        close(START + 2 * IVL)
        assert agg(START + 2 * IVL)[4] * 3600 / IVL / 1000 < THRESHOLD_KW
        _, doc = chain.get("/v1/suggestions")
        assert doc["suggestions"] == []
        # load rises on the feeder (every home switches on 3 kW) for two intervals
        for vm in meters:
            vm.app.meter.source.base_w += 3000
        close(START + 3 * IVL)
        close(START + 4 * IVL)
        high = agg(START + 4 * IVL)
        assert (high[6], high[7]) == (4, 4) and high[4] * 3600 / IVL / 1000 > THRESHOLD_KW
        _, doc = chain.get("/v1/suggestions?state=open")
        [sug] = doc["suggestions"]
        assert sug["rule"] == "curtail-feeder-a" and sug["feeder"] == "feeder-a"
        assert sug["ivls"] == [START + 3 * IVL, START + 4 * IVL]
        # a dispatcher approves it: the instruction goes on the chain
        assert chain.post_auth(f"/v1/suggestions/{sug['id']}/approve", None)[0] == 401
        status, doc = chain.post_auth(f"/v1/suggestions/{sug['id']}/approve")
        assert status == 200, doc
        instruction = bytes.fromhex(doc["instruction"])
        [ins] = chain_txs(chain, C.INSTRUCTION)
        assert (ins[4][1], ins[4][2], ins[4][3]) == (node.key.id, "limit", {1: LIMIT_W})
        assert ins[4][7] == C.rules_digest(RULES)  # which rules suggested it is provable
        # the fog picks it up and commands the meters: their limits switch
        try:
            wait(lambda: all(vm.app.meter.source.limit_w == LIMIT_W for vm in meters),
                 tick=lambda: step(1), timeout=60, what="every meter limited")
        except AssertionError:
            print("DEBUG", link.instructions(), svc.dispatcher.counters, link.counters,
                  svc.dispatcher.commands(), [vm.app.meter.stats for vm in meters])
            raise
        wait(lambda: len(chain_txs(chain, C.REPORT)) == 1, tick=lambda: step(1), timeout=60,
             what="execution report on the chain")
        [report] = chain_txs(chain, C.REPORT)
        body = report[4]
        assert report[1] == node.key.id and body[1] == instruction
        assert (body[2], body[3], body[4]) == (4, 0, 0)
        results = [P.parse(node.log.entry(i)).fields for i in body[5]]
        assert sorted(r[1] for r in results) == sorted(ids)
        assert all(r[0] == P.RESULT and r[3] == 0 for r in results)
        commands = [P.parse(node.log.entry(i)).fields for i in range(node.log.size())
                    if P.parse(node.log.entry(i), schema=False).type == P.COMMAND]
        assert {c[6] for c in commands} == {instruction}  # each names the instruction
        # the next full interval shows the lower load: 4 homes at 1 kW at most
        t = (int(clock.t) // IVL + 1) * IVL
        close(t + IVL)
        low = agg(t + IVL)
        assert (low[7], low[4]) == (4, low[4]) and low[4] <= 4 * LIMIT_W * IVL // 3600
        assert low[4] * 3600 / IVL / 1000 < THRESHOLD_KW < high[4] * 3600 / IVL / 1000
    finally:
        link.stop()
        svc.stop()
        svc.dispatcher.close()
        node.close()
