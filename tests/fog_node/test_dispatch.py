"""The fog carries out dispatch instructions: signed commands to its meters, their signed
results matched, retries until not_after, and an execution report on the chain.

Real parts: a running aggregator on loopback (tests/kit/chainkit.py) whose dispatch key signs
the instructions, a FogNode with its SQLite stores and chain link in tmp_path, and firmware
meter apps on host boards (firmware/app.py), which check the fog's signature and cid and
drive their relay. `Net` plays MQTT: it hands each command to the meter, and the meter's
result to the fog's ingest when the test delivers. Time is a manual clock, never slept on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app import App
from fog_node.chainlink.dispatch import EXPIRED, NOT_ENROLLED, REPLAY, Dispatcher, Outcome, tally
from fog_node.chainlink.faults import FaultReporter
from fog_node.chainlink.link import AnchorError, ChainLink
from fog_node.config import FogConfig
from fog_node.cooking.feeders import Fault
from fog_node.enrollment import apply_request
from fog_node.node import FogNode, init_data_dir
from fog_node.service import FogService
from hal.host import Board
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.wire import chain as C
from tests.kit.chainkit import Chain, running_chain
from tests.kit.fogkit import ManualClock

T0 = 1_800_000_000
RETRY = 30.0


def meter_app(d: Path, clock: ManualClock, fog: P.SigningKey, seed: int) -> App:
    config = {"fog_pub": fog.public_key.raw.hex(), "source": "sim", "seed": seed}
    board = Board(dict(config, data_dir=str(d), clock=clock.now, ticks_ms=clock.ticks_ms,
                       sleep_ms=lambda ms: None))
    app = App(board, config, None)
    app.start()
    return app


class Net:
    """Commands to the meter apps; their results back to ingest on deliver(). A meter in
    `down` hears nothing; `lose` drops the next result of that meter (it still acts)."""

    def __init__(self, node: FogNode, apps: list[App]) -> None:
        self.node = node
        self.apps = {a.meter.id: a for a in apps}
        self.sent: list[tuple[bytes, bytes]] = []
        self.results: list[tuple[bytes, bytes]] = []
        self.down: set[bytes] = set()
        self.lose: set[bytes] = set()

    def send(self, dev: bytes, msg: bytes) -> None:
        self.sent.append((dev, msg))
        app = self.apps.get(dev)
        if app is None or dev in self.down:
            return
        result = app.command(msg)
        if dev in self.lose:
            self.lose.discard(dev)
            return
        self.results.append((dev, result))

    def deliver(self) -> None:
        results, self.results = self.results, []
        if results:
            with self.node.lock:
                self.node.ingest.process([r for _, r in results], [d for d, _ in results])


class Rig:
    def __init__(self, tmp: Path, chain: Chain, clock: ManualClock, n: int = 3) -> None:
        self.tmp, self.chain, self.clock = tmp, chain, clock
        d = tmp / "fog"
        init_data_dir(d)
        self.open()
        chain.register("fog", key=self.node.key, name="district-1")
        self.apps = [meter_app(tmp / f"meter-{i}", clock, self.node.key, i) for i in range(n)]
        for a in self.apps:
            apply_request(self.node, {"pub": a.meter.key.pub.hex(), "status": "active"})
        self.net = Net(self.node, self.apps)
        self.disp = Dispatcher(self.node, self.link, self.net.send, clock.now, retry_s=RETRY)
        self.link.step()  # first contact with the chain

    def open(self) -> None:
        self.node = FogNode(FogConfig(data_dir=self.tmp / "fog", skew_s=10**9), self.clock.now)
        self.link = ChainLink(self.node, ChainClient(self.chain.url), self.clock.now)

    def restart(self) -> None:
        """The fog stops and starts again on its data dir (the meters keep running)."""
        self.disp.close()
        self.link.close()
        self.node.close()
        self.open()
        self.net.node = self.node
        self.disp = Dispatcher(self.node, self.link, self.net.send, self.clock.now,
                               retry_s=RETRY)

    def close(self) -> None:
        self.disp.close()
        self.link.close()
        self.node.close()

    def instruct(self, op: str, args: dict[int, Any], not_after: int,
                 devs: list[bytes] | None = None) -> bytes:
        """Post an instruction signed by the dispatch key and let the link record it."""
        tx = self.chain.sign(self.chain.key, C.INSTRUCTION, C.instruction_body(
            self.node.key.id, op, args, not_after, devs or [], "test"))
        status, doc = self.chain.post(tx)
        assert status == 200, doc
        self.link.step()
        return P.digest(tx)

    def round(self, advance: float = 0.0) -> None:
        """Time passes, the dispatcher ticks, results arrive, it ticks again."""
        self.clock.advance(advance)
        self.disp.tick(self.clock.now())
        self.net.deliver()
        self.disp.tick(self.clock.now())

    def state(self, digest: bytes) -> str:
        return {d: s for d, _, _, s in self.link.instructions()}[digest]

    def report(self, digest: bytes) -> dict[int, Any]:
        """The report of the instruction, sent and found on the chain."""
        self.link.flush()
        rows = self.link.db.execute("SELECT tx, state FROM outbox WHERE kind = 'report'")
        found = []
        for raw, state in rows:
            body = P.parse(raw).fields[4]
            if body[1] == digest:
                assert state == "landed"
                status, doc = self.chain.get(f"/v1/tx/{P.digest(raw).hex()}")
                assert status == 200 and doc["tx"] == raw.hex()
                found.append(body)
        assert len(found) == 1, f"{len(found)} reports of the instruction"
        return found[0]


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    clock = ManualClock(T0)
    with running_chain(tmp_path, clock.now) as chain:
        r = Rig(tmp_path, chain, clock)
        try:
            yield r
        finally:
            r.close()


def fields(raw: bytes) -> P.Fields:
    return P.parse(raw, schema=False).fields


def test_an_instruction_switches_every_meter_and_its_report_lands_on_the_chain(rig: Rig) -> None:
    digest = rig.instruct("relay", {1: False}, T0 + 600)
    assert all(a.board.relay() for a in rig.apps)
    rig.round()
    assert not any(a.board.relay() for a in rig.apps)  # the meters really switched
    cmds = [fields(m) for _, m in rig.net.sent]
    assert {c[1] for c in cmds} == {a.meter.id for a in rig.apps}
    assert all(c[6] == digest and c[2] == 1 and c[3] == "relay" and c[4] == {1: False}
               and c[5] == T0 + 600 and c[17] == rig.node.key.id for c in cmds)
    assert rig.state(digest) == "reported"
    body = rig.report(digest)
    assert (body[2], body[3], body[4]) == (3, 0, 0)
    assert body[6] == "3 done, 0 rejected, 0 failed"
    # the entries are the results in the fog's log, signed by the meters, for these cids
    results = {(fields(rig.node.log.entry(i))[1], fields(rig.node.log.entry(i))[2]):
               rig.node.log.entry(i) for i in body[5]}
    assert set(results) == {(a.meter.id, 1) for a in rig.apps}
    for a in rig.apps:
        res = P.verify(results[(a.meter.id, 1)], P.PublicKey(a.meter.key.pub)).fields
        assert (res[0], res[3], res[4]) == (P.RESULT, P.RESULT_DONE, "relay off")
    # the side-chain holds the commands too, each once
    for c in rig.disp.commands(digest):
        assert rig.node.log.entry(c["command_leaf"]) == c["msg"]
        assert c["state"] == "answered" and c["tries"] == 1
    assert rig.disp.counters["commands_sent"] == 3 and rig.disp.counters["results_matched"] == 3
    assert rig.disp.counters["reports_queued"] == 1
    rig.round(60)
    rig.link.flush()
    assert rig.report(digest) == body  # reported once


def test_a_silent_meter_gets_resends_every_retry_then_counts_failed(rig: Rig) -> None:
    silent = rig.apps[0].meter.id
    rig.net.down.add(silent)
    digest = rig.instruct("limit", {1: 3000}, T0 + 100)
    rig.round()
    assert rig.state(digest) == "executing"

    def tries_of_silent() -> list[int]:
        return [c["tries"] for c in rig.disp.commands(digest) if c["dev"] == silent]

    times = []
    for _ in range(14):  # to T0 + 140, in 10 s steps
        before = sum(1 for d, _ in rig.net.sent if d == silent)
        rig.round(10)
        if sum(1 for d, _ in rig.net.sent if d == silent) > before:
            times.append(rig.clock.now() - T0)
    assert times == [30, 60, 90]  # every retry_s, and none after not_after
    assert tries_of_silent() == [4]
    sends = {m for d, m in rig.net.sent if d == silent}
    assert len(sends) == 1  # a resend is the same signed command
    # reported once not_after plus the grace passed
    assert rig.state(digest) == "reported"
    body = rig.report(digest)
    assert (body[2], body[3], body[4]) == (2, 0, 1)
    assert "1 unanswered by not_after" in body[6] and len(body[5]) == 2
    assert rig.apps[1].meter.st["limit"] == 3000 and rig.apps[0].meter.st["limit"] == 0


def test_a_lost_result_is_resolved_by_the_replay_answer_to_the_resend(rig: Rig) -> None:
    m0 = rig.apps[0]
    rig.net.lose.add(m0.meter.id)
    digest = rig.instruct("relay", {1: False}, T0 + 600)
    rig.round()
    assert m0.board.relay() is False  # the meter acted; the fog never heard
    assert rig.state(digest) == "executing"
    rig.round(RETRY)
    assert m0.meter.stats["commands"] == 1  # the resend was not acted on again
    assert rig.state(digest) == "reported"
    (c,) = [c for c in rig.disp.commands(digest) if c["dev"] == m0.meter.id]
    assert c["tries"] == 2 and c["replay"] == 1 and REPLAY in c["result_detail"]
    body = rig.report(digest)
    assert (body[2], body[3], body[4]) == (3, 0, 0)
    assert "1 done on a replay answer" in body[6]
    assert c["result_leaf"] in body[5]


def test_a_real_result_replaces_a_replay_answer_that_came_first(rig: Rig) -> None:
    # double delivery (MQTT and RS485): the copy that arrives second is answered as a replay,
    # and its result may reach the fog first
    m0 = rig.apps[0]
    rig.net.down.update(a.meter.id for a in rig.apps[1:])
    digest = rig.instruct("relay", {1: False}, T0 + 600)
    rig.disp.tick(rig.clock.now())
    (msg,) = [m for d, m in rig.net.sent if d == m0.meter.id]
    first = rig.net.results.pop()
    rig.net.send(m0.meter.id, msg)  # the second copy
    rig.net.results.append(first)  # ... answered before the first
    rig.net.deliver()
    rig.disp.tick(rig.clock.now())
    (c,) = [c for c in rig.disp.commands(digest) if c["dev"] == m0.meter.id]
    assert (c["result_status"], c["result_detail"], c["replay"]) == (0, "relay off", 0)
    assert rig.disp.counters["results_replay"] == 1


def test_an_expired_instruction_is_reported_failed_without_a_command(rig: Rig) -> None:
    rig.clock.advance(100)
    digest = rig.instruct("relay", {1: False}, T0 + 50)
    rig.round()
    assert rig.net.sent == []
    body = rig.report(digest)
    assert (body[2], body[3], body[4], body[5]) == (0, 0, 3, [])
    assert f"3 {EXPIRED}" in body[6]
    assert all(a.board.relay() for a in rig.apps)


def test_a_meter_not_enrolled_here_counts_failed(rig: Rig) -> None:
    stranger = P.SigningKey.from_int(4242).id
    digest = rig.instruct("relay", {1: False}, T0 + 600, [rig.apps[1].meter.id, stranger])
    rig.round()
    assert [d for d, _ in rig.net.sent] == [rig.apps[1].meter.id]
    body = rig.report(digest)
    assert (body[2], body[3], body[4]) == (1, 0, 1)
    assert f"1 {NOT_ENROLLED}" in body[6]
    assert rig.apps[1].board.relay() is False and rig.apps[0].board.relay() is True


def test_cids_keep_increasing_across_a_restart(rig: Rig) -> None:
    first = rig.instruct("relay", {1: False}, T0 + 600)
    rig.round()
    # a second instruction: its commands are signed and stored, then the fog stops before
    # any result came back
    rig.net.down.update(rig.net.apps)
    second = rig.instruct("relay", {1: True}, T0 + 600)
    rig.round(5)
    assert {c["cid"] for c in rig.disp.commands(second)} == {2}
    rig.restart()
    rig.net.down.clear()
    rig.round(RETRY)  # resent after the restart, same cid, now answered
    assert rig.state(second) == "reported"
    assert all(a.board.relay() for a in rig.apps)
    third = rig.instruct("interval", {1: 300}, T0 + 600)
    rig.round(1)
    cids = {c["cid"] for c in rig.disp.commands(third)}
    assert cids == {3}
    cid = rig.disp.command(rig.apps[0].meter.id, "ping", {}, T0 + 600)
    assert cid == 4
    rig.round(1)
    assert rig.disp.commands(b"")[-1]["result_detail"] == "pong"
    assert [a.meter.st["cid"] for a in rig.apps] == [4, 3, 3]
    assert rig.apps[0].meter.dur == 300
    for d in (first, second, third):
        body = rig.report(d)
        assert (body[2], body[3], body[4]) == (3, 0, 0)


def test_a_rejection_counts_rejected_and_a_foreign_cid_is_learned(rig: Rig) -> None:
    # the meter accepted cid 7 from this fog's key before (a data dir restored from backup)
    m0 = rig.apps[0]
    old = P.sign1(rig.node.key, P.command(m0.meter.id, 7, "ping", {}, T0 + 600, b"",
                                          rig.node.key.id))
    m0.command(old)
    digest = rig.instruct("relay", {1: False}, T0 + 600, [m0.meter.id])
    rig.round()
    body = rig.report(digest)
    assert (body[2], body[3], body[4]) == (0, 1, 0)
    assert "rejected: 1 stale_cid" in body[6]
    assert m0.board.relay() is True
    again = rig.instruct("relay", {1: False}, T0 + 600, [m0.meter.id])
    rig.round()
    assert rig.disp.commands(again)[0]["cid"] == 8
    assert m0.board.relay() is False


def test_a_report_waits_for_the_first_contact_with_the_chain(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    with running_chain(tmp_path, clock.now) as chain:
        init_data_dir(tmp_path / "fog")
        node = FogNode(FogConfig(data_dir=tmp_path / "fog"), clock.now)
        link = ChainLink(node, ChainClient(chain.url), clock.now)
        try:
            with pytest.raises(AnchorError, match="before the first contact"):
                link.queue_tx(C.REPORT, C.report_body(bytes(32), 0, 0, 0, []))
            assert link.depth() == 0
        finally:
            link.close()
            node.close()


def test_reports_and_anchors_share_one_nonce_sequence(rig: Rig) -> None:
    digest = rig.instruct("relay", {1: False}, T0 + 600)
    rig.round()  # a report queued, and the results logged
    rig.node.checkpoints.seal(int(rig.clock.now()))
    assert rig.link.plan(force=True) == 1
    rig.link.flush()
    rows = rig.link.db.execute("SELECT nonce, kind, state FROM outbox ORDER BY nonce").fetchall()
    assert [(k, s) for _, k, s in rows] == [("report", "landed"), ("anchor", "landed")]
    assert rows[1][0] == rows[0][0] + 1
    assert rig.report(digest)[2] == 3


def test_a_report_too_large_for_one_message_is_split_and_every_part_lands(rig: Rig) -> None:
    digest = rig.instruct("ping", {}, T0 + 600, [rig.apps[0].meter.id])
    outcomes = [Outcome(i.to_bytes(8, "big"), "answered", 0, "pong", 2**32 + i)
                for i in range(1000)]  # 1000 five-byte entries: more than 4096 bytes
    assert rig.disp._queue_report(digest, outcomes, len(outcomes), True) > 1
    rig.link.flush()
    bodies = [P.parse(raw).fields[4] for raw, in
              rig.link.db.execute("SELECT tx FROM outbox WHERE kind = 'report' AND "
                                  "state = 'landed' ORDER BY nonce")]
    assert sum(b[2] for b in bodies) == 1000 and all(b[3] == b[4] == 0 for b in bodies)
    assert [e for b in bodies for e in b[5]] == [2**32 + i for i in range(1000)]
    assert all(b[6].startswith("part report of ") for b in bodies)
    assert rig.state(digest) == "reported"


def test_tally_names_every_kind_of_outcome() -> None:
    d = bytes(8)
    done, rejected, failed, entries, detail = tally([
        Outcome(d, "answered", 0, "relay off", 5),
        Outcome(d, "answered", 1, "stale_cid: cid 3 not greater than last accepted 3 " + REPLAY,
                9, replay=True),
        Outcome(d, "answered", 1, "expired: not_after 1 is before now 2", 7),
        Outcome(d, "answered", 2, "failed: relay stuck", 8),
        Outcome(d, "unanswered"),
        Outcome(d, "uncommanded", detail=NOT_ENROLLED),
    ])
    assert (done, rejected, failed, entries) == (2, 1, 3, [5, 7, 8, 9])
    assert detail == ("2 done, 1 rejected, 3 failed; rejected: 1 expired; 1 done on a replay "
                      "answer (the meter had accepted the command; its result was lost); "
                      "1 failed at the meter; 1 not enrolled at this fog; "
                      "1 unanswered by not_after")


class _Ticks:
    def __init__(self) -> None:
        self.at: list[float] = []

    def tick(self, now: float) -> None:
        self.at.append(now)


def test_the_service_ticks_the_dispatcher_once_a_second_and_sends_on_both_links(
        tmp_path: Path) -> None:
    clock = ManualClock(T0)
    init_data_dir(tmp_path / "fog")
    node = FogNode(FogConfig(data_dir=tmp_path / "fog", rs485_port="loop://",
                             rs485_addresses=[1, 2]), clock.now)
    try:
        service = FogService(node, clock.now)
        ticks = _Ticks()
        service.dispatcher = ticks  # type: ignore[assignment]
        for _ in range(5):
            service.scheduler.dispatch()
            clock.advance(0.5)
        assert [t - T0 for t in ticks.at] == [0, 1, 2]
        published: list[Any] = []
        service.link.publish = published.extend  # type: ignore[method-assign, assignment]
        bus = service.bus
        assert bus is not None
        dev, other = b"\x01" * 8, b"\x02" * 8
        bus.slots[0].dev = dev  # address 1 gave this meter's birth
        assert bus.knows(dev) and not bus.knows(other)
        service.send_command(dev, b"cmd")
        service.send_command(dev, b"cmd")  # a resend while the first still waits on the bus
        service.send_command(other, b"cmd2")
        root = f"grid/f/{node.id_hex}/cmd/"
        assert published == [(root + dev.hex(), b"cmd", 1, False)] * 2 + [
            (root + other.hex(), b"cmd2", 1, False)]
        assert bus.queued_commands(dev) == 1 and bus.queued_commands(other) == 0
        assert bus.has_command(dev, b"cmd") and not bus.has_command(dev, b"other")
    finally:
        node.close()


def test_a_local_fault_is_acted_on_then_reported_on_the_chain(tmp_path: Path):
    """on_tamper = "relay_off": the tampering meter gets a relay-off command through the
    dispatcher, and a fault transaction saying so lands on the chain; a fault found before
    the link's first contact waits and is sent after it."""
    clock = ManualClock(T0)
    with running_chain(tmp_path, clock.now) as chain:
        rig = Rig(tmp_path, chain, clock)
        try:
            bad = rig.apps[1]
            tamper = Fault("tamper", "feeder-a", T0, "1 meter(s) report tampering",
                           (bad.meter.id,), (7, 9))
            reporter = FaultReporter(rig.link, lambda: rig.disp, "relay_off")
            assert bad.relay_closed
            reporter(tamper, T0 + 1)
            rig.round()
            assert not bad.relay_closed and all(a.relay_closed for a in rig.apps if a is not bad)
            rig.link.flush()
            [raw] = [r[0] for r in rig.link.db.execute("SELECT tx FROM outbox WHERE kind = 'fault'")]
            status, doc = chain.get(f"/v1/tx/{P.digest(raw).hex()}")
            assert status == 200 and doc["tx"] == raw.hex()  # on the chain
            body = P.parse(raw).fields[4]
            assert (body[1], body[3], body[5]) == ("tamper", T0 + 1, [7, 9])
            assert body[2].startswith("feeder feeder-a, interval 1800000000: ")
            assert body[4].startswith("relay_off: relay-off commands to 1 meter(s): "
                                      + bad.meter.id.hex())
            # reported only: no command; and a reporter before first contact keeps it waiting
            fresh = ChainLink(rig.node, ChainClient(chain.url), clock.now)
            fresh.db.execute("DELETE FROM meta WHERE k = 'synced'")
            waiting = FaultReporter(fresh, lambda: None)
            waiting(Fault("outage", "feeder-a", T0, "3 of 3 meters lost supply"), T0 + 2)
            assert waiting.counters["fault_txs_queued"] == 0
            fresh.step()  # first contact
            assert waiting.flush() == 1
            fresh.close()
        finally:
            rig.close()
