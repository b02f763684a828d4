"""The peer-to-peer market on a consortium chain (marker `consortium`; docs/PROTOCOL.md
section 27): what tests/aggregator/test_market.py shows of the embedded chain, on a real
one-validator CometBFT network, where the rules' clock is CometBFT's header time, the wall
clock's, so no test chooses it. A grid operator and a regulator set the market (continuous,
60-second cycles) and the access rules, enrol a buyer and a seller on two feeders, the
seller is admitted; in a cycle picked a minute or more ahead of the clock the seller asks,
the buyer's bid is matched over a congested feeder (its fee, its curtailment) and the three
parties sign before the delivery starts; after the gate anyone clears the cycle, after the
delivery interval settlement waits for the seller's meter's statements, a fog anchors one
covering the cycle and the cycle settles from it, every account paid to the micro-point; an
unadmitted seller's ask is refused with its reason; verify-chain replays the validator's
data. A cycle whose gate the clock passed before its trade was signed (a loaded machine) is
given up for the next one, and cleared and settled (its contracts lapse) at the end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aggregator.__main__ import main
from aggregator.chain.backends.cometbft.app import BlockRecord
from aggregator.chain.backends.cometbft.network import PARTIES
from meterledger import wire as P
from meterledger.clients.chain import ChainClient, ChainRefused, Receipt, Sender
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import market as MK
from tests.kit.chainkit import FogSide
from tests.kit.consortium import T0, LocalNet, local_net, post
from tests.kit.fogkit import wait

pytestmark = [pytest.mark.consortium, pytest.mark.timeout(600)]

VALIDATOR = PARTIES[0][0]  # the network's one validator
SLOW = 180.0  # a condition's timeout: generous, on a loaded 2-core machine
CYCLE_S, GATE_S = 60, 5  # the shortest cycle; orders close 5 s before it starts
LEAD_S = 60  # a traded cycle starts more than this after it is picked
MARKET = {"mode": MK.CONTINUOUS, "cycle_s": CYCLE_S, "gate_s": GATE_S, "horizon_s": 3_600,
          "settle_s": 3_600}
# f-west carries 60 kW: 1,000 Wh in a 60-second cycle; congested, it costs 30 mpt/kWh
NETWORK = [("root", "", 10**8, 0), ("f-east", "root", 10**8, 20),
           ("f-west", "root", 60_000, 30)]
PV = MK.access_body("pv", "clean", 5_000, 400, 2, 10_000)  # a request the defaults grant
BUYER_METER, SELLER_METER = b"\x11" * 8, b"\x22" * 8
GRANT = 100 * 10**6  # the points an enrolment grants (the default grant_upt)
ASK, ASKED = 400, 2_000  # the seller's ask: mpt/kWh, Wh
BID, WANTED, FEE_MAX = 500, 1_500, 100  # the buyer's bid: mpt/kWh, Wh, fee it accepts
CAP_WH = 60_000 * CYCLE_S // 3600  # what f-west carries in a cycle: the contract's Wh
MID, PT, FEE = (BID + ASK + 1) // 2, 50 + 10 + 10, 30  # midpoint, P_T = c1 + c2 + c3, fee
PF = MID + PT + FEE  # the final price, the escrow per Wh
STATED, IMBALANCE = 800, 600  # what the seller's meter exported; the imbalance price
LATE = ("gate_closed", "signing_closed")  # the clock passed the cycle before its trade


@dataclass
class Market:
    """The network, its fog and the market's parties."""

    t: LocalNet
    fog: FogSide
    grid: P.SigningKey
    regulator: P.SigningKey
    buyer: P.SigningKey
    seller: P.SigningKey

    @property
    def client(self) -> ChainClient:
        return ChainClient(self.t.api(VALIDATOR), timeout_s=SLOW)

    def register(self, role: str, key: P.SigningKey | None = None) -> None:
        """Registered by the dispatch key (the kit counts its nonces)."""
        status, doc = post(self.t.api(VALIDATOR), self.t.register_tx(role, key))
        assert status == 200, doc

    def send(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> Receipt:
        """Signed with the key's next nonce and committed (ChainRefused: the reason)."""
        return Sender(self.client, key, self.t.key.id).send(kind, body, int(time.time()))

    def refused(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> str:
        with pytest.raises(ChainRefused) as e:
            self.send(key, kind, body)
        return e.value.reason

    def head_time(self) -> int:
        """The rules' clock: the newest committed block's time (CometBFT's header time)."""
        return BlockRecord.decode(bytes.fromhex(self.client.head()["header"])).time_s

    def until(self, t: int, what: str) -> None:
        """Until the rules' clock reaches `t`. CometBFT makes no empty blocks, and a block
        after an idle spell carries the time before it: once this machine's clock (the
        validator's) is there, a registration a second makes blocks until one is past."""
        def poke() -> None:
            if time.time() >= t:
                self.register("fog")

        wait(lambda: self.head_time() >= t, timeout=max(0.0, t - time.time()) + SLOW,
             tick=poke, every=1.0, what=what)

    def account(self, key: P.SigningKey) -> tuple[int, int, int]:
        a = self.client.market_account(key.id_hex)
        return a["balance"], a["held"], a["owed"]

    def contract(self, cycle: int) -> dict[str, Any]:
        return self.client.market_contract(cycle, 0)


@pytest.fixture
def market(tmp_path: Path) -> Iterator[Market]:
    with local_net(1) as t:
        t.start()
        t.wait_api()
        assert ChainClient(t.api(VALIDATOR)).head()["engine"] == "cometbft"
        fog = FogSide(tmp_path)
        m = Market(t, fog, *(P.SigningKey.generate() for _ in range(4)))
        try:
            for role, key in (("dispatch", m.grid), ("regulator", m.regulator),
                              ("market", m.buyer), ("market", m.seller), ("fog", fog.key)):
                m.register(role, key)
            m.send(m.regulator, GC.PARAMS, GC.params_body("access", 1, {}))
            m.send(m.grid, GC.PARAMS, GC.params_body("market", 1, MARKET))
            m.send(m.grid, MK.MK_NETWORK, MK.network_body(1, NETWORK))
            for key, meter, line in ((m.buyer, BUYER_METER, "f-east"),
                                     (m.seller, SELLER_METER, "f-west")):
                m.send(m.grid, MK.MK_ENROLL, MK.enroll_body(key.id, fog.key.id, meter, line))
            m.send(m.seller, MK.MK_ACCESS, PV)
            yield m
        finally:
            fog.close()


def next_cycle(m: Market) -> int:
    """The first cycle starting more than LEAD_S from now (the chain's clock or this
    machine's, whichever is ahead: an idle chain's newest block is older than now)."""
    now = max(m.head_time(), int(time.time()))
    return (now + LEAD_S) // CYCLE_S * CYCLE_S + CYCLE_S


def trade(m: Market, cycle: int) -> None:
    """The seller asks, the buyer's bid is matched, the three parties sign contract 0."""
    m.send(m.seller, MK.MK_ORDER, MK.order_body(cycle, MK.SELL, ASKED, ASK))
    m.send(m.buyer, MK.MK_ORDER, MK.order_body(cycle, MK.BUY, WANTED, BID, FEE_MAX))
    for key in (m.buyer, m.seller, m.grid):
        c = m.client.market_contract(cycle, 0)
        m.send(key, MK.MK_SIGN, MK.sign_body(cycle, 0, MK.contract_terms(cycle, 0, c)))


def open_trade(m: Market) -> tuple[int, list[int]]:
    """The cycle whose trade was signed in time, and the cycles given up before it (the
    clock passed their gate or start first)."""
    given_up: list[int] = []
    for _ in range(3):
        cycle = next_cycle(m)
        try:
            trade(m, cycle)
        except ChainRefused as e:
            if e.reason not in LATE:
                raise
            given_up.append(cycle)
            continue
        return cycle, given_up
    pytest.fail(f"no cycle's trade was signed before its start: {given_up}")


def deliver(m: Market, cycle: int, exp: int) -> None:
    """The fog states the seller's meter's export over the cycle (one 60 s interval ending
    with it) and anchors the statement."""
    m.fog.state(SELLER_METER, cycle + CYCLE_S, exp, dur=CYCLE_S)
    m.fog.checkpoints.seal(T0, force=True)
    m.send(m.fog.key, C.ANCHOR, m.fog.anchor())


def close_given_up(m: Market, cycles: list[int]) -> None:
    """A given-up cycle is cleared and settled: its unsigned contracts lapse, their escrow
    goes back (nothing is paid: the accounts below are as if it never was)."""
    for cycle in cycles:
        m.send(m.grid, MK.MK_CLEAR, MK.cycle_body(cycle))
        m.send(m.grid, MK.MK_SETTLE, MK.cycle_body(cycle))
        assert all(c["state"] == "lapsed"
                   for c in m.client.market_contracts(cycle)["contracts"])


def verify_chain(m: Market, capsys: pytest.CaptureFixture[str]) -> str:
    """verify-chain on the stopped validator's data dir: replayed from the network's genesis,
    every state root and the derived state (the market's records too) checked."""
    capsys.readouterr()
    net = m.t.net
    code = main(["verify-chain", "--data-dir", str(net.validator(VALIDATOR).app_dir(net.root))])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith(f"consortium chain {m.t.key.id.hex()} ({net.chain_name}) ok: "), out
    assert "(trusted key)" in out and "every state root and the derived state checked" in out
    return out


def test_a_trade_is_matched_signed_cleared_and_settled_by_cometbft_block_time(
        market: Market, capsys: pytest.CaptureFixture[str]) -> None:
    m = market
    # only admitted sellers sell: the buyer never applied for grid access (a cycle whose
    # gate is far: the reason is the seller's, whatever the clock)
    assert m.refused(m.buyer, MK.MK_ORDER, MK.order_body(
        next_cycle(m) + 600, MK.SELL, 100, ASK)) == "not_admitted"
    cycle, given_up = open_trade(m)
    c = m.contract(cycle)
    assert (c["buyer"], c["seller"], c["state"], c["signed"]) == (
        m.buyer.id_hex, m.seller.id_hex, "effective", 7)
    # f-west congested: its fee on top, the trade curtailed to what it carries
    assert (c["wh"], c["mid"], c["pt"], c["fee"], c["pf"], c["path"]) == (
        CAP_WH, MID, PT, FEE, PF, ["f-east", "f-west"])
    assert c["escrow"] == PF * CAP_WH
    # what is left of each order; the bid still holds its most for its rest
    assert left(m, cycle) == {MK.BUY: (WANTED - CAP_WH, (BID + PT + FEE_MAX) * (WANTED - CAP_WH)),
                              MK.SELL: (ASKED - CAP_WH, 0)}
    # after the gate anyone closes the cycle: what the bid still held goes back
    m.until(cycle - GATE_S, "the rules' clock past the gate")
    m.send(m.grid, MK.MK_CLEAR, MK.cycle_body(cycle))
    cyc = m.client.market_cycle(cycle)
    assert (cyc["state"], cyc["contracts"], cyc["low"], cyc["cep"]) == ("closed", 1, MID, MID)
    assert cyc["closed"] >= cycle - GATE_S
    assert m.client.market_floor() == {"cycle": cycle, "floor": MID}
    assert left(m, cycle)[MK.BUY] == (WANTED - CAP_WH, 0)
    # after the delivery interval, settlement waits for the seller's meter's statements
    m.until(cycle + CYCLE_S, "the rules' clock past the delivery interval")
    assert m.refused(m.buyer, MK.MK_SETTLE, MK.cycle_body(cycle)) == "delivery_pending"
    deliver(m, cycle, STATED)
    d = m.client.market_delivery(m.seller.id_hex, cycle)["delivery"]
    assert (d["exp"], d["dur"], d["step"], len(d["statements"])) == (STATED, CYCLE_S, CYCLE_S, 1)
    close_given_up(m, given_up)
    m.send(m.buyer, MK.MK_SETTLE, MK.cycle_body(cycle))
    settled(m, cycle)
    m.t.stop()
    verify_chain(m, capsys)


def left(m: Market, cycle: int) -> dict[str, tuple[int, int]]:
    """Each side's order of the cycle: the Wh left of it and what it holds."""
    orders = m.client.market_book(cycle)["orders"]
    assert {o["participant"] for o in orders} == {m.buyer.id_hex, m.seller.id_hex}
    return {o["side"]: (o["left"], o["held"]) for o in orders}


def settled(m: Market, cycle: int) -> None:
    """The contract settled from the stated export; every account paid to the micro-point."""
    c = m.contract(cycle)
    assert (c["state"], c["delivered"], c["measured"]) == ("settled", STATED, 1)
    assert m.client.market_cycle(cycle)["state"] == "settled"
    short = CAP_WH - STATED
    # the buyer paid P_F for what was delivered; the rest of its escrow came back
    assert m.account(m.buyer) == (GRANT - PF * STATED, 0, 0)
    # the seller: the midpoint for what it delivered, less the imbalance price of the rest
    assert m.account(m.seller) == (GRANT + MID * STATED - IMBALANCE * short, 0, 0)
    # the grid operator: P_T and the fee of what was delivered, and the imbalance
    assert m.account(m.grid) == ((PT + FEE) * STATED + IMBALANCE * short, 0, 0)
    assert m.client.market_account(m.seller.id_hex)["reputation"]["done"] == 1
    assert m.refused(m.buyer, MK.MK_SETTLE, MK.cycle_body(cycle)) == "already_settled"
