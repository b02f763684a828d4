"""Home demand response end to end (docs/PROTOCOL.md section 30): on a real aggregator, a
utility offers two customers contracts through `meterledger dr`, they accept, one opts out
of the first event; the utility calls two events; a real FogNode with its chain link,
dispatcher and DR module limits the enrolled meter (a firmware meter app that really caps
its power) and not the opted-out one, restores it after, measures the curtailed energy
against the baseline of its own verified intervals and reports it; the chain pays the
customer's points from the utility's account; a repeated report is refused, and a restart
repeats nothing.

Time is a manual clock shared by the chain, the fog and the meters; nothing sleeps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import App
from fog_node.chainlink.dispatch import Dispatcher
from fog_node.chainlink.dr import DemandResponse
from fog_node.chainlink.link import ChainLink
from fog_node.config import FogConfig
from fog_node.enrollment import apply_request
from fog_node.node import FogNode, init_data_dir
from meterledger import wire as P
from meterledger.cli import main as meterledger_main
from meterledger.clients.chain import ChainClient
from meterledger.wire import certificates as GC
from meterledger.wire import dr as DR
from meterledger.wire import market as MK
from tests.fog_node.test_dispatch import Net, meter_app
from tests.kit.chainkit import Chain, running_chain
from tests.kit.fogkit import ManualClock

DAY = 86_400
D = 1_800_000_000 - 1_800_000_000 % DAY + 4 * DAY  # the events' day, 00:00 UTC
E1, E2 = (D + 18 * 3600, D + 19 * 3600), (D + 20 * 3600, D + 21 * 3600)
ID1, ID2 = b"\xe1" * 8, b"\xe2" * 8
UTILITY, FUNDER = P.SigningKey.from_int(0x0717), P.SigningKey.from_int(0x4013)
HOMES = (P.SigningKey.from_int(0x4011), P.SigningKey.from_int(0x4012))
FUNDS = 10 * 10**6


class Home:
    """One household's meter: the firmware app that takes commands, and the readings it
    signs with its key (200 Wh a quarter hour unless told)."""

    def __init__(self, node: FogNode, app: App) -> None:
        self.node, self.app = node, app
        self.key = P.SigningKey.from_bytes(app.meter.key.private_bytes())
        self.id = self.key.id
        self.seq, self.register, self.prev = 0, 0, P.ZERO32

    def read(self, t: int, wh: int = 200) -> None:
        self.seq += 1
        self.register += wh
        raw = P.sign1(self.key, P.reading(self.id, self.seq, t, 900, self.register, 0, 0,
                                          self.prev))
        self.prev = P.digest(raw)
        with self.node.lock:
            outcomes, _ = self.node.ingest.process([raw])
        assert outcomes[0].status == "logged", outcomes

    def limit(self) -> int:
        return int(self.app.meter.st.get("limit", 0))


class World:
    def __init__(self, tmp: Path, chain: Chain, clock: ManualClock) -> None:
        self.tmp, self.chain, self.clock = tmp, chain, clock
        init_data_dir(tmp / "fog")
        self.open()
        chain.register("fog", key=self.node.key, name="district-1")
        apps = [meter_app(tmp / f"meter-{i}", clock, self.node.key, i) for i in range(2)]
        for a in apps:
            apply_request(self.node, {"pub": a.meter.key.pub.hex(), "status": "active"})
        self.homes = [Home(self.node, a) for a in apps]
        self.net = Net(self.node, apps)
        self.start_fog()
        self.keys: dict[str, Path] = {}
        for name, key in (("utility", UTILITY), ("home1", HOMES[0]), ("home2", HOMES[1])):
            self.keys[name] = tmp / f"{name}.key"
            self.keys[name].write_text(key.private_bytes().hex())

    def open(self) -> None:
        self.node = FogNode(FogConfig(data_dir=self.tmp / "fog", skew_s=10**9), self.clock.now)
        self.link = ChainLink(self.node, ChainClient(self.chain.url), self.clock.now)

    def start_fog(self) -> None:
        self.disp = Dispatcher(self.node, self.link, self.net.send, self.clock.now)
        self.dr = DemandResponse(self.link, self.disp, self.clock.now)
        self.link.on_step = self.dr.step

    def close(self) -> None:
        self.dr.close()
        self.disp.close()
        self.link.close()
        self.node.close()

    def restart(self) -> None:
        """The fog stops and starts on its data dir (the meters and the chain run on)."""
        self.close()
        self.open()
        self.net.node = self.node
        for h in self.homes:
            h.node = self.node
        self.start_fog()

    def at(self, t: int, wh: tuple[int, int] | None = (200, 200)) -> None:
        """Time t: each meter's reading (`wh` Wh since the last), indexed by the fog."""
        self.clock.t = t
        if wh is not None:
            for h, e in zip(self.homes, wh, strict=True):
                h.read(t, e)
        with self.node.lock:
            self.node.cooker.catch_up(t)

    def round(self) -> None:
        """The link's round (DR first), the meters' results in, the dispatcher's tick."""
        self.link.step()
        self.net.deliver()
        self.disp.tick(self.clock.now())

    def post(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> None:
        status, doc = self.chain.post(self.chain.sign(key, kind, body))
        assert status == 200, doc

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str, key: str | None = None
            ) -> dict[str, Any]:
        args = ["dr", *argv, "--chain", self.chain.url, "--json"]
        if key is not None:
            args += ["--key", str(self.keys[key])]
        assert meterledger_main(args) == 0
        out: dict[str, Any] = json.loads(capsys.readouterr().out)
        return out

    def reports(self) -> list[tuple[bytes, bytes]]:
        """(event, meter) of every dr_report in the outbox, landed."""
        rows = self.link.db.execute("SELECT tx, state FROM outbox WHERE kind = ?",
                                    (DR.DR_REPORT,)).fetchall()
        assert all(state == "landed" for _, state in rows)
        return [(P.parse(raw).fields[4][1], P.parse(raw).fields[4][2]) for raw, _ in rows]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = ManualClock(D - 3 * DAY)
    with running_chain(tmp_path, clock.now) as chain:
        w = World(tmp_path, chain, clock)
        try:
            yield w
        finally:
            w.close()


def _history(w: World) -> None:
    """Three ordinary days: 200 Wh a quarter hour in both events' windows."""
    for d in (3, 2, 1):
        for lo, hi in (E1, E2):
            for t in range(lo - d * DAY, hi - d * DAY + 1, 900):
                w.at(t)


def _contracts(w: World, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The utility's points, both offers accepted, both events, home 2's opt-out of E1:
    through `meterledger dr` but for the market's set-up."""
    c = w.chain
    for role, key in (("utility", UTILITY), ("holder", HOMES[0]), ("holder", HOMES[1]),
                      ("market", FUNDER)):
        c.register(role, key)
    w.post(c.key, GC.PARAMS, GC.params_body("market", 1, {}))
    w.post(c.key, MK.MK_NETWORK, MK.network_body(1, [("root", "", 10**8, 0)]))
    w.post(c.key, MK.MK_ENROLL, MK.enroll_body(FUNDER.id, w.node.key.id, b"\x99" * 8, "root"))
    w.post(FUNDER, MK.MK_TRANSFER, MK.transfer_body(UTILITY.id, FUNDS))
    contracts = []
    # home 1 curtails from 40 c/kWh, 500 W at most, 1 point per kWh; home 2 from 20 c/kWh,
    # 400 W, 2 points per kWh; both keep 100 W and their nights (00:00-06:00)
    for home, threshold, max_w, rate in ((0, 40_000, 500, 1_000), (1, 20_000, 400, 2_000)):
        offer = w.cli(capsys, "offer", "--customer", HOMES[home].id_hex, "--meter",
                      w.homes[home].id.hex(), "--fog", w.node.key.id_hex, "--feeder", "f1",
                      "--threshold", str(threshold), "--max-w", str(max_w), "--floor-w",
                      "100", "--window", "0-360", "--rate", str(rate), "--valid-from",
                      str(D - DAY), "--valid-to", str(D + 30 * DAY), key="utility")
        w.cli(capsys, "accept", "--offer", offer["digest"], key=f"home{home + 1}")
        contracts.append(offer["digest"])
    w.cli(capsys, "event", "--id", ID1.hex(), "--price", "50000", "--start", str(E1[0]),
          "--end", str(E1[1]), "--target", w.node.key.id_hex, "--note", "evening peak",
          key="utility")
    w.cli(capsys, "event", "--id", ID2.hex(), "--price", "30000", "--start", str(E2[0]),
          "--end", str(E2[1]), "--target", f"{w.node.key.id_hex}:f1", key="utility")
    w.cli(capsys, "pref", "--contract", contracts[1], "--skip-event", ID1.hex(), key="home2")
    return contracts


def _event(w: World, window: tuple[int, int], wh: tuple[int, int]) -> None:
    """An event's hour: its start (the fog acts), its quarter hours' readings, its end (the
    fog restores, then reports once the restore is answered and the chain's time passed)."""
    lo, hi = window
    w.at(lo)
    w.round()
    for t in range(lo + 900, hi + 1, 900):
        w.at(t, wh)
    w.chain.register("holder")  # a block at the end: the chain's time passes it
    w.round()
    w.round()


def test_the_fog_curtails_the_enrolled_meter_and_the_chain_pays_its_customer(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    _history(w)
    w.clock.t = D + 12 * 3600
    contracts = _contracts(w, capsys)
    w.round()
    assert {d["contract"] for d in w.cli(capsys, "contracts", HOMES[1].id_hex)["contracts"]
            } == {contracts[1]}
    assert [e["event"] for e in w.cli(capsys, "events", "--fog", w.node.key.id_hex)["events"]
            ] == [ID1.hex(), ID2.hex()]

    # E1: home 1 is limited to its baseline's 800 W less 500 W; home 2 opted out
    w.at(E1[0])
    w.round()
    assert [h.limit() for h in w.homes] == [300, 0]
    [(dev, msg)] = w.net.sent
    f = P.parse(msg).fields
    assert (dev, f[3], f[4], f[5], f[6]) == (w.homes[0].id, "limit", {1: 300}, E1[1], ID1)
    for t in range(E1[0] + 900, E1[1] + 1, 900):
        w.at(t, (50, 200))
    assert w.reports() == []  # not before the end
    w.chain.register("holder")
    w.round()
    assert [h.limit() for h in w.homes] == [0, 0]  # restored
    w.round()
    assert w.reports() == [(ID1, w.homes[0].id)]
    doc = w.cli(capsys, "reports", ID1.hex())
    [r] = doc["reports"]
    # 800 Wh baseline (three days), 200 Wh measured: 600 Wh curtailed, paid up to 500 W x 1 h
    assert (r["meter"], r["baseline"], r["measured"], r["curtailed"], r["days"],
            r["missing_s"], r["wh_paid"], r["due"], r["paid"], r["owed"], r["why"]) == (
        w.homes[0].id.hex(), 800, 200, 600, 3, 0, 500, 500_000, 500_000, 0, "")
    assert r["commands"] == [[1, DR.DONE], [2, DR.DONE]] and r["limit_w"] == 300
    # the entries are the meter's signed results in the fog's log
    for leaf in r["entries"]:
        res = P.verify(w.node.log.entry(leaf), P.PublicKey(w.homes[0].app.meter.key.pub))
        assert res.fields[0] == P.RESULT and res.fields[3] == P.RESULT_DONE
    client = ChainClient(w.chain.url)
    assert client.market_account(HOMES[0].id_hex)["balance"] == 500_000

    # E2 at 30 c/kWh: below home 1's threshold; home 2's 800 W less 400 W
    sent = len(w.net.sent)
    _event(w, E2, (200, 50))
    assert [P.parse(m).fields[1] for _, m in w.net.sent[sent:]] == [w.homes[1].id] * 2
    assert w.reports() == [(ID1, w.homes[0].id), (ID2, w.homes[1].id)]
    [r] = w.cli(capsys, "reports", ID2.hex())["reports"]
    assert (r["limit_w"], r["curtailed"], r["wh_paid"], r["paid"]) == (400, 600, 400, 800_000)
    assert [client.market_account(h.id_hex)["balance"] for h in (*HOMES, UTILITY)] == [
        500_000, 800_000, FUNDS - 1_300_000]

    # the chain takes one report per event and meter
    raw = w.link.db.execute("SELECT tx FROM outbox WHERE kind = ? ORDER BY nonce LIMIT 1",
                            (DR.DR_REPORT,)).fetchone()[0]
    status, doc = w.chain.post(w.chain.sign(w.node.key, DR.DR_REPORT, P.parse(raw).fields[4]))
    assert (status, doc["error"]) == (400, "report_repeated"), doc

    # a restart sends no command and no report again
    sent = len(w.net.sent)
    w.restart()
    w.at(E2[1] + 3600, None)
    w.round()
    assert len(w.net.sent) == sent and len(w.reports()) == 2
    assert [(a["state"], a["limit_w"]) for a in w.dr.acts()] == [("reported", 300),
                                                                ("reported", 400)]


def test_an_override_during_the_event_restores_the_meter_and_forfeits_payment(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    _history(w)
    w.clock.t = D + 12 * 3600
    contracts = _contracts(w, capsys)
    w.round()
    # the chain is away at the event's start: the fog acts on what it kept
    client, w.link.client = w.link.client, ChainClient("http://127.0.0.1:9", timeout_s=2)
    w.at(E1[0])
    w.round()
    assert w.homes[0].limit() == 300 and w.dr.counters["sync_failed"] == 1
    w.link.client = client
    w.at(E1[0] + 900, (50, 200))
    # home 1 changes its mind: a pause from now; the fog lifts the limit at its next round
    w.cli(capsys, "pref", "--contract", contracts[0], "--pause-until", str(E1[1] + DAY),
          key="home1")
    w.round()
    assert w.homes[0].limit() == 0
    for t in range(E1[0] + 1800, E1[1] + 1, 900):
        w.at(t, (200, 200))
    w.chain.register("holder")
    w.round()
    w.round()
    [r] = w.cli(capsys, "reports", ID1.hex())["reports"]
    assert (r["curtailed"], r["why"], r["paid"]) == (150, DR.OPTED_OUT, 0)
    assert ChainClient(w.chain.url).market_account(HOMES[0].id_hex)["balance"] == 0
