"""The fog reports its meters' firmware and alarms to the dispatch chain (docs/PROTOCOL.md
section 29, "What the fog reports"; fog_node.chainlink.devices): a registered meter's
firmware once per change, an unregistered one's never (without halting the outbox); a
firmware change without an approved firmware ticket, and a TAMPER reading without an
approved ticket covering it, make alarms; the fog's own OTA update and a ticketed cover
opening do not; a restart repeats nothing; the outbox never halts.

Real parts: a FogNode with its SQLite stores in tmp_path fed signed SPEC births and
readings (the kit of tests/fog_node/test_cooking.py), its ChainLink with the reporter as
its round module, and a running aggregator on loopback (tests/kit/chainkit.py). Time is
the test's clock, shared by the fog and the chain, never slept on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fog_node import ota
from fog_node.chainlink.devices import UNREGISTERED_RETRY_S, DeviceReporter
from fog_node.chainlink.link import ChainLink, steps
from fog_node.config import FogConfig
from fog_node.node import FogNode
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.wire import trace as DV
from tests.fog_node.test_cooking import IVL, T0, Fog
from tests.kit.chainkit import Chain, running_chain

OPERATOR, UTILITY = P.SigningKey.from_int(0x0A11), P.SigningKey.from_int(0x0717)
PLATE = DV.Nameplate("meter", "ACME", "M-1", "S-1", T0 - 86_400 * 60, T0 - 86_400 * 30)


class World:
    """The fog (three meters: 0 and 1 registered on the chain, 2 not), its link and
    reporter, and the chain."""

    def __init__(self, tmp: Path, fog: Fog, chain: Chain) -> None:
        self.tmp, self.fog, self.chain = tmp, fog, chain
        self.boots = [0, 0, 0]
        chain.register("fog", key=fog.node.key, name="district-1")
        chain.register("operator", key=OPERATOR, name="Alice Zhang")
        chain.register("utility", key=UTILITY, name="utility")
        self.m = fog.meters
        for meter in self.m[:2]:
            self.post(OPERATOR, DV.DV_REGISTER, DV.register_body(meter.dev, PLATE))
        self.open()

    def open(self) -> None:
        clock = lambda: float(self.fog.now)  # noqa: E731
        self.link = ChainLink(self.fog.node, ChainClient(self.chain.url), clock)
        self.reports = DeviceReporter(self.link, clock)
        self.link.on_step = steps(self.reports.step)

    def close(self) -> None:
        self.reports.close()
        self.link.close()

    def restart(self) -> None:
        """The fog stops and starts on its data dir (the chain runs on)."""
        self.close()
        self.fog.node.close()
        self.fog.node = FogNode(FogConfig(data_dir=self.tmp / "fog", skew_s=10**7),
                                lambda: self.fog.now)
        self.open()

    def post(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> bytes:
        raw = self.chain.sign(key, kind, body, t=self.fog.now)
        status, doc = self.chain.post(raw)
        assert status == 200, doc
        return raw

    def birth(self, i: int, fw: str, hw: str = "esp32") -> int:
        """Meter i connects running `fw`; returns the birth's log index."""
        self.boots[i] += 1
        meter = self.m[i]
        raw = P.sign1(meter.key, {0: P.BIRTH, 1: meter.dev, 10: meter.key.public_key.raw,
                                  11: fw, 12: self.boots[i], 13: meter.seq, 14: hw, 15: "sim",
                                  4: IVL, 16: self.fog.node.key.id})
        self.fog.send(raw)
        return self.fog.node.log.size() - 1

    def rounds(self, n: int = 2) -> None:
        for _ in range(n):
            self.fog.now += 5
            self.link.step()
            assert self.link.halted is None

    def sent(self, kind: str) -> list[dict[int, Any]]:
        """Bodies of the fog's transactions of `kind` in its outbox, in nonce order; each
        one landed."""
        rows = self.link.db.execute("SELECT tx, state FROM outbox WHERE kind = ? ORDER BY "
                                    "nonce", (kind,)).fetchall()
        assert all(state == "landed" for _, state in rows), rows
        return [P.parse(raw).fields[4] for raw, _ in rows]

    def timeline(self, i: int) -> dict[str, Any]:
        return ChainClient(self.chain.url).device_timeline(self.m[i].dev.hex())


def test_firmware_and_alarms_are_reported_once_and_never_halt_the_outbox(
        tmp_path: Path) -> None:
    fog = Fog(tmp_path, 3)
    fog.all_read(T0)
    with running_chain(tmp_path, lambda: float(fog.now)) as chain:
        w = World(tmp_path, fog, chain)
        try:
            _scenario(w)
        finally:
            w.close()
            fog.node.close()


def _scenario(w: World) -> None:  # long: one story, each step building on the last
    m, fog = w.m, w.fog
    leaves = [w.birth(i, "1.0.0") for i in range(3)]
    w.rounds()  # the first round waits for the link's first contact; the second queues
    assert [b[1] for b in w.sent(DV.DV_FIRMWARE)] == [m[0].dev, m[1].dev]  # not meter 2
    tl = w.timeline(0)
    assert (tl["device"]["fw"], tl["device"]["hw"]) == ("1.0.0", "esp32")
    [rec] = [r for r in tl["timeline"] if r["kind"] == DV.DV_FIRMWARE]
    assert rec["body"]["birth"] == P.digest(fog.node.log.entry(leaves[0])).hex()
    assert rec["body"]["seen"] == fog.now - 10 and rec["by"] == fog.node.key.id.hex()
    assert w.sent(DV.DV_ALARM) == []  # a first version seen is no change
    assert w.reports.counters["unregistered"] == 1

    # meter 1's upgrade is ticketed and approved; meter 0's is not
    ticket = P.digest(w.post(OPERATOR, DV.DV_TICKET, DV.ticket_body(
        m[1].dev, "firmware", "upgrade to 1.1.0", fog.now, fog.now + 7200)))
    w.post(UTILITY, DV.DV_APPROVE, DV.approve_body(ticket))
    fog.now += 60
    seen = fog.now
    w.birth(0, "1.1.0")
    w.birth(1, "1.1.0")
    w.rounds()
    firmware = w.sent(DV.DV_FIRMWARE)
    assert [(b[1], b[2]) for b in firmware[2:]] == [(m[0].dev, "1.1.0"), (m[1].dev, "1.1.0")]
    [alarm] = w.sent(DV.DV_ALARM)
    assert (alarm[1], alarm[2], alarm[3]) == (m[0].dev, "firmware", seen)
    assert "1.0.0 -> 1.1.0" in alarm[4]

    # the fog's own OTA update of meter 0 is no alarm
    db = ota._jobs_db(fog.node.config.data_dir)  # the job record a push leaves (section 22)
    db.execute("INSERT INTO jobs (dev, doc, scanned) VALUES (?, ?, 0)",
               (m[0].dev, json.dumps({"version": "1.2.0", "state": "done"})))
    db.close()
    w.birth(0, "1.2.0")
    w.rounds()
    assert w.timeline(0)["device"]["fw"] == "1.2.0" and len(w.sent(DV.DV_ALARM)) == 1
    assert w.reports.counters["firmware_sanctioned"] == 2  # meter 1's ticket, this push

    # TAMPER: meter 0 without a ticket (an alarm); meter 1 inside its approved ticket's
    # window (none); meter 2 unregistered (none)
    fog.now = T0 + IVL + 30
    fog.send(m[0].reading(T0 + IVL, flags=P.TAMPER), m[1].reading(T0 + IVL, flags=P.TAMPER),
             m[2].reading(T0 + IVL, flags=P.TAMPER))
    w.rounds()
    alarms = w.sent(DV.DV_ALARM)
    assert [(a[1], a[2], a[3]) for a in alarms[1:]] == [(m[0].dev, DV.UNKNOWN_OP, T0 + IVL)]
    assert f"seq {m[0].seq}" in alarms[1][4]
    assert [r["kind"] for r in w.timeline(0)["timeline"]].count(DV.DV_ALARM) == 2
    assert [r["kind"] for r in w.timeline(1)["timeline"]].count(DV.DV_ALARM) == 0
    assert w.reports.counters["tamper_ticketed"] == 1
    assert w.reports.counters["tamper_unregistered"] == 1

    # a restart repeats nothing: same outbox, same chain records
    before = w.link.db.execute("SELECT COUNT(*) FROM outbox WHERE kind LIKE 'dv_%'").fetchone()
    w.restart()
    w.rounds(3)
    after = w.link.db.execute("SELECT COUNT(*) FROM outbox WHERE kind LIKE 'dv_%'").fetchone()
    assert before == after == (7,)  # 5 firmware records, 2 alarms

    # meter 2 is registered later: its firmware is reported at the next retry, not before
    w.post(OPERATOR, DV.DV_REGISTER, DV.register_body(m[2].dev, PLATE))
    w.rounds()
    assert len(w.sent(DV.DV_FIRMWARE)) == 5
    fog.now += UNREGISTERED_RETRY_S
    w.rounds()
    assert [(b[1], b[2]) for b in w.sent(DV.DV_FIRMWARE)[5:]] == [(m[2].dev, "1.0.0")]
    assert w.link.halted is None and w.link.depth() == 0


def test_the_chain_takes_a_fogs_raced_records_as_no_ops(tmp_path: Path) -> None:
    """What a fog checked may change before its transaction lands: an operator records the
    same firmware, a ticket covering the time seen is approved. The chain accepts the fog's
    transaction with no effect (no timeline record), so its outbox does not halt; the
    utility's same alarm is still refused."""
    fog = Fog(tmp_path, 1)
    with running_chain(tmp_path, lambda: float(fog.now)) as chain:
        w = World.__new__(World)
        w.tmp, w.fog, w.chain, w.m = tmp_path, fog, chain, fog.meters
        for role, key in (("fog", fog.node.key), ("operator", OPERATOR), ("utility", UTILITY)):
            chain.register(role, key=key)
        dev = fog.meters[0].dev
        w.post(OPERATOR, DV.DV_REGISTER, DV.register_body(dev, PLATE))
        w.post(OPERATOR, DV.DV_FIRMWARE, DV.firmware_body(dev, "2.0.0", "rp2", T0))
        n = w.timeline(0)["device"]["n"]
        w.post(fog.node.key, DV.DV_FIRMWARE, DV.firmware_body(dev, "2.0.0", "rp2", T0))
        ticket = P.digest(w.post(OPERATOR, DV.DV_TICKET, DV.ticket_body(
            dev, "switch_off", "w", T0, T0 + 3600)))
        w.post(UTILITY, DV.DV_APPROVE, DV.approve_body(ticket))
        w.post(fog.node.key, DV.DV_ALARM, DV.alarm_body(dev, "switch_off", T0 + 10))
        status, doc = chain.post(chain.sign(UTILITY, DV.DV_ALARM, DV.alarm_body(
            dev, "switch_off", T0 + 10), t=fog.now))
        assert (status, doc["error"]) == (400, "operation_ticketed")
        kinds = [r["kind"] for r in w.timeline(0)["timeline"]]
        assert len(kinds) == n + 2 and kinds[n:] == [DV.DV_TICKET, DV.DV_APPROVE]
        fog.node.close()
