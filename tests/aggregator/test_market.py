"""The P2P market and grid access on the chain (docs/PROTOCOL.md section 27): access
decisions with a reason per failed attribute, points accounts, continuous and sealed
cycles with the paper's rules, three-signature contracts with escrow, settlement from the
fog's delivery statements, reputation and reviews, congestion; on the SQLite store and its
in-memory twin, replayed alike by verify-chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.app import auction as AU
from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app import market_cycle as MC
from aggregator.chain.store import BlockStore
from aggregator.chain.verify import check_derived, store_blocks, verify_blocks
from meterledger import wire as P
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import market as MK
from tests.kit.appchain import AppChain, open_store
from tests.kit.chainkit import T0

OPERATOR = P.SigningKey.from_int(0xC0)
GRID, REGULATOR = P.SigningKey.from_int(0x6E1D), P.SigningKey.from_int(0x7E6)
NAMES = ("U1", "U2", "U3", "D1", "D2", "D3")
KEYS = {n: P.SigningKey.from_int(0x5000 + i) for i, n in enumerate(NAMES)}
METERS = {n: bytes([0x10 + i]) * 8 for i, n in enumerate(NAMES)}
CYCLE = T0 - T0 % 900 + 7200  # the first cycle the tests trade
GRANT = 100 * 10**6
PV = {1: "pv", 2: "clean", 3: 5_000, 4: 400, 5: 2, 6: 10_000}  # a good access request
NETWORK = [("root", "", 10**8, 0), ("f-east", "root", 10**8, 20), ("f-west", "root", 10**8, 30)]
LINE = {"U1": "f-east", "U2": "f-east", "U3": "f-west", "D1": "f-east", "D2": "f-west",
        "D3": "f-east"}


class Market(AppChain):
    """A market chain: a grid operator, a regulator, buyers U1-U3 and sellers D1-D3 (001
    Table 2), each enrolled with a meter of one fog; its clock moves only when a test
    says."""

    def __init__(self, store: BlockStore, tmp_path: Path, mode: int,
                 **market: int) -> None:
        self.now = CYCLE - 3000
        super().__init__(store, tmp_path, OPERATOR, lambda: float(self.now))
        self.register("dispatch", GRID)
        self.register("regulator", REGULATOR)
        for n in NAMES:
            self.register("market", KEYS[n])
        self.send(REGULATOR, GC.PARAMS, GC.params_body("access", 1, {}))
        self.send(GRID, GC.PARAMS, GC.params_body("market", 1, {"mode": mode, **market}))
        self.send(GRID, MK.MK_NETWORK, MK.network_body(1, NETWORK))
        for n in NAMES:
            self.send(GRID, MK.MK_ENROLL, MK.enroll_body(KEYS[n].id, self.fog.key.id,
                                                         METERS[n], LINE[n]))
        for n in ("D1", "D2", "D3"):
            self.send(KEYS[n], MK.MK_ACCESS, PV)
        self.ticks = 0

    def at(self, t: int) -> None:
        """Move the chain's time to t: a block at t (the access parameters again)."""
        self.now = t
        self.ticks += 1
        self.send(REGULATOR, GC.PARAMS, GC.params_body("access", 1 + self.ticks, {}))
        assert self.store.chain_time() == t

    def acct(self, n: str) -> dict[str, int]:
        a = self.store.record(M.T_ACCOUNT, KEYS[n].id)
        return dict(a) if a is not None else {"balance": 0, "held": 0, "owed": 0}

    def contract(self, cycle: int, i: int) -> dict[str, Any]:
        return dict(self.store.record(M.T_CONTRACT, MC.contract_key(cycle, i)))

    def contracts(self, cycle: int) -> list[tuple[str, str, int]]:
        who = {k.id: n for n, k in KEYS.items()}
        out, i = [], 0
        while (c := self.store.record(M.T_CONTRACT, MC.contract_key(cycle, i))) is not None:
            out.append((who[c["buyer"]], who[c["seller"]], c["wh"]))
            i += 1
        return out

    def rep(self, n: str) -> dict[str, int]:
        return dict(self.store.record(M.T_REP, KEYS[n].id) or {})

    def order(self, n: str, side: str, wh: int, price: int, fee_max: int = 0,
              cycle: int = CYCLE) -> None:
        self.send(KEYS[n], MK.MK_ORDER, MK.order_body(cycle, side, wh, price, fee_max))

    def sign_all(self, cycle: int) -> None:
        for i in range(len(self.contracts(cycle))):
            c = self.contract(cycle, i)
            for pid in (c["buyer"], c["seller"]):
                self.send(next(k for k in KEYS.values() if k.id == pid), MK.MK_SIGN,
                          self.sign_body(cycle, i))
            self.send(GRID, MK.MK_SIGN, self.sign_body(cycle, i))

    def sign_body(self, cycle: int, i: int) -> dict[int, Any]:
        return MK.sign_body(cycle, i, MK.contract_terms(cycle, i, self.contract(cycle, i)))

    def deliver(self, n: str, cycle: int, exp: int, parts: int = 1) -> None:
        """The fog states the meter's export over the cycle (in `parts` intervals) and
        anchors it."""
        dur = 900 // parts
        for i in range(parts):
            self.fog.state(METERS[n], cycle + dur * (i + 1), exp // parts, dur=dur)
        self.fog.checkpoints.seal(T0, force=True)
        self.send(self.fog.key, C.ANCHOR, self.fog.anchor())


@pytest.fixture(params=["memory", "sqlite"])
def mk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Market]:
    m = Market(open_store(request.param, tmp_path), tmp_path, MK.CONTINUOUS)
    yield m
    m.close()


def test_access_is_decided_and_recorded_with_a_reason_per_failed_attribute(mk: Market) -> None:
    granted = mk.store.record(M.T_ACCESS, KEYS["D1"].id)
    assert (granted["granted"], granted["reasons"]) == (1, [])
    assert granted["until"] == mk.store.chain_time() + 365 * 86_400
    # fossil, supply and price out of range, unsafe, 220 kV, one attribute missing
    mk.send(KEYS["U1"], MK.MK_ACCESS, {1: "coal", 2: "clean", 3: 10**11, 4: 5_000,
                                       6: 220_000})
    refused = mk.store.record(M.T_ACCESS, KEYS["U1"].id)
    assert (refused["granted"], refused["reasons"]) == (0, [
        "MISSING_ATTRIBUTE", "SOURCE_NOT_ALLOWED", "NATURE_NOT_ALLOWED", "SUPPLY_OUT_OF_RANGE",
        "PRICE_OUT_OF_RANGE", "VOLTAGE_ABOVE_110KV"])
    mk.send(KEYS["U2"], MK.MK_ACCESS, {**PV, 5: 1})
    assert mk.store.record(M.T_ACCESS, KEYS["U2"].id)["reasons"] == ["SAFETY_NOT_MET"]
    assert refused["attributes"]["voltage_v"] == 220_000
    stranger = P.SigningKey.from_int(0x51)
    mk.register("market", stranger)
    mk.send(stranger, MK.MK_ACCESS, PV)
    assert mk.store.record(M.T_ACCESS, stranger.id)["reasons"] == ["NOT_QUALIFIED"]
    # only admitted sellers sell; anyone enrolled buys
    assert mk.refused(KEYS["U1"], MK.MK_ORDER, MK.order_body(CYCLE, MK.SELL, 10, 300, 0)) == \
        "not_admitted"
    assert mk.refused(stranger, MK.MK_ORDER, MK.order_body(CYCLE, MK.BUY, 10, 300, 0)) == \
        "not_enrolled"
    mk.at(granted["until"])
    assert mk.refused(KEYS["D1"], MK.MK_ORDER, MK.order_body(
        CYCLE + 366 * 86_400, MK.SELL, 10, 300, 0)) in ("not_admitted", "bad_cycle")


def test_points_are_granted_once_held_by_bids_and_never_spent_twice(mk: Market) -> None:
    assert mk.acct("U1") == {"balance": GRANT, "held": 0, "owed": 0}
    mk.send(KEYS["U1"], MK.MK_TRANSFER, MK.transfer_body(KEYS["U2"].id, 10**6))
    assert (mk.acct("U1")["balance"], mk.acct("U2")["balance"]) == (GRANT - 10**6, GRANT + 10**6)
    assert mk.refused(KEYS["U1"], MK.MK_TRANSFER, MK.transfer_body(KEYS["U2"].id, GRANT)) == \
        "insufficient_points"
    # a bid holds (bid + P_T + fee_max) x Wh; P_T = 50 + 10 + 10
    mk.order("U1", MK.BUY, 1_000, 400, fee_max=30)
    assert mk.acct("U1")["held"] == (400 + 70 + 30) * 1_000
    assert mk.refused(KEYS["U3"], MK.MK_ORDER, MK.order_body(CYCLE, MK.BUY, 10**6, 400, 0)) \
        == "insufficient_points"
    assert mk.refused(GRID, MK.MK_ENROLL, MK.enroll_body(KEYS["U1"].id, mk.fog.key.id,
                                                         b"\x77" * 8, "root")) == \
        "already_enrolled"


def test_continuous_orders_match_in_price_time_priority_with_the_papers_rules(
        mk: Market) -> None:
    mk.order("D1", MK.SELL, 2_000, 420)
    mk.order("D2", MK.SELL, 1_000, 380)
    mk.order("U1", MK.BUY, 2_500, 430)  # takes D2's 1,000 at 380, then 1,500 of D1's 420
    assert mk.contracts(CYCLE) == [("U1", "D2", 1_000), ("U1", "D1", 1_500)]
    c = mk.contract(CYCLE, 0)
    # P_F = P_T + the midpoint (no line of f-east - f-west congested: no fee)
    assert (c["mid"], c["pt"], c["fee"], c["pf"], c["path"]) == (405, 70, 0, 475,
                                                                 ["f-east", "f-west"])
    assert mk.acct("U1")["held"] == 475 * 1_000 + (425 + 70) * 1_500
    # eqs. 2-3: a seller's re-quote never rises, a buyer's never falls
    assert mk.refused(KEYS["D1"], MK.MK_ORDER, MK.order_body(CYCLE, MK.SELL, 500, 421, 0)) == \
        "requote_not_monotonic"
    assert mk.refused(KEYS["U1"], MK.MK_ORDER, MK.order_body(CYCLE, MK.BUY, 500, 429, 0)) == \
        "requote_not_monotonic"
    mk.send(KEYS["D1"], MK.MK_CANCEL, MK.cancel_body(CYCLE, MK.SELL))
    assert mk.refused(KEYS["D1"], MK.MK_CANCEL, MK.cancel_body(CYCLE, MK.SELL)) == "no_order"
    # the gate: no order after it; the cycle closes, unmatched U2 loses reputation
    mk.order("U2", MK.BUY, 100, 300)
    mk.at(CYCLE - 300)
    assert mk.refused(KEYS["U3"], MK.MK_ORDER, MK.order_body(CYCLE, MK.BUY, 10, 500, 0)) == \
        "gate_closed"
    mk.send(KEYS["U3"], MK.MK_CLEAR, MK.cycle_body(CYCLE))
    assert mk.refused(KEYS["U3"], MK.MK_CLEAR, MK.cycle_body(CYCLE)) == "cycle_closed"
    assert mk.rep("U2") == {"bid": 1, "done": 0, "good": 0, "penalty": 20_000}
    assert mk.acct("U2")["held"] == 0
    cyc = mk.store.record(M.T_CYCLE, M.u64(CYCLE))
    # midpoints 405 and 425, the later weighing 1.5 times the earlier
    assert (cyc["low"], cyc["cep"]) == (405, 417)
    # the next cycle's bids must be above this cycle's lowest clearing price
    assert mk.refused(KEYS["U3"], MK.MK_ORDER, MK.order_body(
        CYCLE + 900, MK.BUY, 10, 405, 0)) == "bid_below_floor"
    mk.order("U3", MK.BUY, 10, 406, cycle=CYCLE + 900)
    # that cycle closes without a trade: it has no clearing price, the floor lapses (a floor
    # above every bid would otherwise shut the market for good)
    mk.at(CYCLE + 600)
    mk.send(KEYS["U3"], MK.MK_CLEAR, MK.cycle_body(CYCLE + 900))
    mk.order("U3", MK.BUY, 10, 1, cycle=CYCLE + 1800)
    # the mode an order of a cycle was placed under never changes
    assert mk.refused(GRID, GC.PARAMS, GC.params_body("market", 2, {"mode": MK.SEALED})) == \
        "params_frozen"


def test_three_signatures_make_a_contract_and_delivery_settles_it(mk: Market) -> None:
    mk.order("D1", MK.SELL, 2_000, 400)
    mk.order("U1", MK.BUY, 1_000, 400)
    mk.order("U2", MK.BUY, 1_000, 410)
    assert mk.contracts(CYCLE) == [("U1", "D1", 1_000), ("U2", "D1", 1_000)]
    assert mk.refused(KEYS["U3"], MK.MK_SIGN, mk.sign_body(CYCLE, 0)) == "not_party"
    # the terms signed are the record's: another price is refused
    other = {**mk.contract(CYCLE, 0), "bid": 401}
    assert mk.refused(KEYS["U1"], MK.MK_SIGN, MK.sign_body(
        CYCLE, 0, MK.contract_terms(CYCLE, 0, other))) == "terms_mismatch"
    mk.sign_all(CYCLE)
    assert mk.contract(CYCLE, 0)["state"] == MC.EFFECTIVE
    assert mk.refused(GRID, MK.MK_SIGN, mk.sign_body(CYCLE, 0)) == "contract_closed"
    mk.at(CYCLE - 300)
    mk.send(KEYS["U1"], MK.MK_CLEAR, MK.cycle_body(CYCLE))
    assert mk.refused(KEYS["U1"], MK.MK_SETTLE, MK.cycle_body(CYCLE)) == "delivery_pending"
    # D1 delivered 1,600 Wh of 2,000 over three 5-minute statements
    mk.deliver("D1", CYCLE, 1_600, parts=3)
    # a statement of another length inside the cycle could overlap what was counted: not
    # counted; one of the interval ending at 0 is no cycle's (and no crash)
    mk.fog.state(METERS["D1"], CYCLE + 120, 10_000, dur=60)
    mk.fog.state(METERS["D1"], 0, 10_000, dur=60)
    mk.fog.checkpoints.seal(T0, force=True)
    mk.send(mk.fog.key, C.ANCHOR, mk.fog.anchor())
    rec = mk.store.record(M.T_DELIVERY, KEYS["D1"].id + M.u64(CYCLE))
    assert (rec["exp"], rec["dur"], rec["step"], rec["other"]) == (1_599, 900, 300, 1)
    before = {n: mk.acct(n) for n in ("U1", "U2", "D1")}
    assert mk.store.record(M.T_ACCOUNT, GRID.id) is None  # the grid operator had none
    mk.at(CYCLE + 900)
    mk.send(KEYS["U3"], MK.MK_SETTLE, MK.cycle_body(CYCLE))
    first, second = mk.contract(CYCLE, 0), mk.contract(CYCLE, 1)
    assert (first["delivered"], second["delivered"]) == (1_000, 599)  # 1,599: 3 x 533
    # U2: midpoint 405 to D1, P_T 70 + fee 0 to the grid, 401 Wh refunded at P_F 475
    assert mk.acct("U2")["held"] == 0
    assert mk.acct("U2")["balance"] == before["U2"]["balance"] + 475 * 401
    assert mk.acct("D1")["balance"] == before["D1"]["balance"] + 400 * 1_000 + 405 * 599 \
        - 600 * 401  # the imbalance price of its shortfall
    assert mk.store.record(M.T_ACCOUNT, GRID.id)["balance"] == 70 * 1_599 + 600 * 401
    assert mk.rep("D1") == {"bid": 2, "done": 2, "good": 0, "penalty": 0}
    # reviews: each party once, of the other, only of a delivered trade
    mk.send(KEYS["U1"], MK.MK_REVIEW, MK.review_body(CYCLE, 0, True))
    assert mk.refused(KEYS["U1"], MK.MK_REVIEW, MK.review_body(CYCLE, 0, True)) == \
        "already_reviewed"
    assert mk.refused(KEYS["U3"], MK.MK_REVIEW, MK.review_body(CYCLE, 0, True)) == "not_party"
    assert mk.rep("D1")["good"] == 1
    assert AU.reputation(1, 2, 2) == 750_000
    replay = verify_blocks(store_blocks(mk.store))
    check_derived(mk.store, replay)


def test_unsigned_contracts_lapse_and_missing_statements_settle_undelivered(
        mk: Market) -> None:
    mk.order("D2", MK.SELL, 1_000, 400)
    mk.order("U3", MK.BUY, 1_000, 400)
    mk.order("D1", MK.SELL, 1_000, 400)
    mk.order("U1", MK.BUY, 1_000, 400)
    for i, n in ((0, "U3"), (0, "D2")):
        mk.send(KEYS[n], MK.MK_SIGN, mk.sign_body(CYCLE, i))
    mk.send(GRID, MK.MK_SIGN, mk.sign_body(CYCLE, 0))  # contract 1 is never signed
    mk.at(CYCLE)
    assert mk.refused(KEYS["U1"], MK.MK_SIGN, mk.sign_body(CYCLE, 1)) == "signing_closed"
    mk.send(KEYS["U1"], MK.MK_CLEAR, MK.cycle_body(CYCLE))
    mk.at(CYCLE + 900 + 3_599)
    assert mk.refused(KEYS["U1"], MK.MK_SETTLE, MK.cycle_body(CYCLE)) == "delivery_pending"
    later = CYCLE + 7200
    mk.order("D2", MK.BUY, 100, 500, cycle=later)  # D2 also buys: it holds (500 + 70) x 100
    mk.send(KEYS["D2"], MK.MK_TRANSFER, MK.transfer_body(KEYS["U2"].id,
                                                         GRANT - 100_000 - 57_000))
    mk.at(CYCLE + 900 + 3_600)
    mk.send(KEYS["U1"], MK.MK_SETTLE, MK.cycle_body(CYCLE))
    assert mk.contract(CYCLE, 1)["state"] == MC.LAPSED
    assert mk.acct("U1") == {"balance": GRANT, "held": 0, "owed": 0}
    undelivered = mk.contract(CYCLE, 0)
    assert (undelivered["delivered"], undelivered["measured"]) == (0, 0)
    assert mk.acct("U3") == {"balance": GRANT, "held": 0, "owed": 0}
    # D2's imbalance of 1,000 Wh at 600 is more than it has: it owes the rest, paid first
    # from what it receives next
    assert mk.acct("D2") == {"balance": 0, "held": 57_000, "owed": 500_000}
    assert mk.store.record(M.T_ACCOUNT, GRID.id)["balance"] == 100_000
    mk.send(KEYS["U2"], MK.MK_TRANSFER, MK.transfer_body(KEYS["D2"].id, 200_000))
    assert mk.acct("D2") == {"balance": 0, "held": 57_000, "owed": 300_000}
    assert mk.store.record(M.T_ACCOUNT, GRID.id)["balance"] == 300_000
    # its bid still matches: the escrow (P_T 70 + midpoint 450) x 100 stays held, only the
    # rest of the hold is freed, and pays its debt first
    mk.order("D1", MK.SELL, 100, 400, cycle=later)
    assert mk.contracts(later) == [("D2", "D1", 100)]
    assert mk.acct("D2") == {"balance": 0, "held": 52_000, "owed": 295_000}
    assert mk.refused(KEYS["U3"], MK.MK_REVIEW, MK.review_body(CYCLE, 0, False)) == \
        "not_delivered"
    assert mk.refused(KEYS["U1"], MK.MK_SETTLE, MK.cycle_body(CYCLE)) == "already_settled"


def test_a_congested_feeder_pays_its_fee_and_curtails(tmp_path: Path) -> None:
    m = Market(open_store("memory", tmp_path), tmp_path, MK.CONTINUOUS)
    try:
        # a version may not drop a line a participant is enrolled on
        assert m.refused(GRID, MK.MK_NETWORK, MK.network_body(2, NETWORK[:2])) == \
            "line_in_use"
        # f-west carries 4 kW: 1,000 Wh in a 15-minute cycle
        m.send(GRID, MK.MK_NETWORK, MK.network_body(2, [
            ("root", "", 10**8, 0), ("f-east", "root", 10**8, 20),
            ("f-west", "root", 4_000, 30)]))
        m.order("D2", MK.SELL, 3_000, 380)  # on f-west
        m.order("U1", MK.BUY, 2_000, 400, fee_max=100)  # f-east: via f-west and f-east
        assert m.contracts(CYCLE) == [("U1", "D2", 1_000)]
        c = m.contract(CYCLE, 0)
        assert (c["fee"], c["path"]) == (30, ["f-east", "f-west"])  # f-west only congested
        assert m.store.record(M.T_CONGESTED, M.u64(CYCLE) + b"f-west") == 30
        m.order("U2", MK.BUY, 500, 400, fee_max=100)  # nothing left on f-west
        assert len(m.contracts(CYCLE)) == 1
    finally:
        m.close()


def test_a_sealed_call_clears_the_papers_table_2(tmp_path: Path) -> None:
    m = Market(open_store("sqlite", tmp_path), tmp_path, MK.SEALED, c1=5, c2=1, c3=1)
    try:
        # committed in this order: with every reputation new (1/2), time priority ranks
        # them, and this order is the one giving Table 3's range sizes (SOURCES s2.4.4)
        quotes = {"U2": (MK.BUY, 100), "U1": (MK.BUY, 97), "U3": (MK.BUY, 95),
                  "D2": (MK.SELL, 90), "D3": (MK.SELL, 97), "D1": (MK.SELL, 100)}
        salt = b"\x5a" * 32
        for n, (side, price) in quotes.items():
            digest = MK.commit_digest(KEYS[n].id, CYCLE, side, 1_000, price, 0, salt)
            m.send(KEYS[n], MK.MK_COMMIT, MK.commit_body(CYCLE, digest))
        assert m.refused(KEYS["U1"], MK.MK_COMMIT, MK.commit_body(CYCLE, b"\x00" * 32)) == \
            "already_committed"
        assert m.refused(KEYS["U1"], MK.MK_ORDER, MK.order_body(CYCLE, MK.BUY, 1, 97, 0)) == \
            "market_mode"
        assert m.refused(KEYS["U1"], MK.MK_REVEAL, MK.reveal_body(
            CYCLE, MK.BUY, 1_000, 97, 0, salt)) == "gate_open"
        m.at(CYCLE - 300)
        assert m.refused(KEYS["U1"], MK.MK_REVEAL, MK.reveal_body(
            CYCLE, MK.BUY, 1_000, 98, 0, salt)) == "reveal_mismatch"
        for n, (side, price) in quotes.items():
            m.send(KEYS[n], MK.MK_REVEAL, MK.reveal_body(CYCLE, side, 1_000, price, 0, salt))
        assert m.refused(KEYS["U1"], MK.MK_CLEAR, MK.cycle_body(CYCLE)) == "gate_open"
        m.at(CYCLE - 300 + 120)
        m.send(KEYS["U1"], MK.MK_CLEAR, MK.cycle_body(CYCLE))
        # the two trades of SOURCES s2.4.4; U3 and D1 are left unmatched
        assert m.contracts(CYCLE) == [("U2", "D2", 1_000), ("U1", "D3", 1_000)]
        assert [m.contract(CYCLE, i)["pf"] for i in (0, 1)] == [95 + 7, 97 + 7]
        assert m.rep("U3")["penalty"] == m.rep("D1")["penalty"] == 20_000
        assert m.rep("U2")["penalty"] == 0
        # a contract names every transaction it came from: a trade's proof starts there
        c = m.contract(CYCLE, 0)
        com = m.store.record(M.T_COMMIT, G.u64(CYCLE) + KEYS["U2"].id)
        assert c["commits"][0] == com["tx"] and len(c["commits"]) == 2
        assert c["tx"] == m.store.record(M.T_CYCLE, G.u64(CYCLE))["tx"]  # the clearing
        # a sealed market's reveal window must end before the cycle starts (its contracts
        # are signed before then)
        assert m.refused(GRID, GC.PARAMS, GC.params_body("market", 2, {
            "mode": MK.SEALED, "c1": 5, "c2": 1, "c3": 1, "gate_s": 120,
            "reveal_s": 120})) == "bad_params"
    finally:
        m.close()


def test_an_unrevealed_commitment_is_unmatched(tmp_path: Path) -> None:
    m = Market(open_store("memory", tmp_path), tmp_path, MK.SEALED)
    try:
        m.send(KEYS["U1"], MK.MK_COMMIT, MK.commit_body(CYCLE, b"\x11" * 32))
        m.at(CYCLE - 300 + 120)
        assert m.refused(KEYS["U1"], MK.MK_REVEAL, MK.reveal_body(
            CYCLE, MK.BUY, 1, 97, 0, b"\x00" * 32)) == "reveal_closed"
        m.send(KEYS["U2"], MK.MK_CLEAR, MK.cycle_body(CYCLE))
        assert m.rep("U1") == {"bid": 1, "done": 0, "good": 0, "penalty": 20_000}
    finally:
        m.close()


def test_a_green_bid_takes_green_asks_and_their_certificates_move_at_settlement(
        mk: Market) -> None:
    """D1's meter is also generator pv-d1, owned by D1: its certificates go with its green
    asks' delivered Wh, the last one split; a plain bid may still take a green ask (no
    certificate moves), a green bid never a plain ask."""
    registry = P.SigningKey.from_int(0x4E6)
    mk.register("registry", registry)
    mk.send(registry, GC.PARAMS, GC.params_body("certificates", 1, {"certificate_wh": 1_000}))
    mk.send(registry, GC.GENERATOR, GC.generator_body(
        "pv-d1", "pv", 10_000_000, T0 - 86_400, mk.fog.key.id, METERS["D1"], "certificates",
        KEYS["D1"].id))
    mk.deliver("D1", CYCLE - 1800, 2_500)  # pv-d1/0-1000 and 1000-2000, 500 Wh carried
    assert mk.refused(KEYS["D2"], MK.MK_ORDER, MK.order_body(
        CYCLE, MK.SELL, 500, 90, green=True)) == "green_uncovered"
    mk.send(KEYS["D1"], MK.MK_ORDER, MK.order_body(CYCLE, MK.SELL, 1_500, 90, green=True))
    mk.send(KEYS["U1"], MK.MK_ORDER, MK.order_body(CYCLE, MK.BUY, 700, 100, green=True))
    mk.order("U3", MK.BUY, 300, 100)
    mk.order("D2", MK.SELL, 1_000, 80)  # cheaper, but plain: U2's green bid passes it over
    mk.send(KEYS["U2"], MK.MK_ORDER, MK.order_body(CYCLE, MK.BUY, 500, 100, green=True))
    assert mk.contracts(CYCLE) == [("U1", "D1", 700), ("U3", "D1", 300), ("U2", "D1", 500)]
    assert [mk.contract(CYCLE, i).get("green") for i in range(3)] == [1, None, 1]
    mk.sign_all(CYCLE)
    mk.at(CYCLE - 300)
    mk.send(KEYS["U1"], MK.MK_CLEAR, MK.cycle_body(CYCLE))
    mk.deliver("D1", CYCLE, 1_200)  # contract 0 gets 700, 1 gets 300, 2 gets 200
    mk.at(CYCLE + 900)
    mk.send(KEYS["U3"], MK.MK_SETTLE, MK.cycle_body(CYCLE))
    first, plain, last = (mk.contract(CYCLE, i) for i in range(3))
    assert (first["green_moved"], first["green_short"]) == (["pv-d1/0-700"], 0)
    assert "green_moved" not in plain
    assert (last["delivered"], last["green_moved"], last["green_short"]) == (
        200, ["pv-d1/700-900"], 0)
    owned = {k[8:]: v for k, v in mk.store.records(G.T_OWNED, KEYS["D1"].id)}
    assert G.cert_key("pv-d1", 900, 1_000) in owned  # the rest of the split one stays
    for n, wh in (("U1", 700), ("U2", 200), ("D1", 3_000 - 900)):  # 2000-3000 issued since
        assert mk.store.record(G.T_BALANCE, KEYS[n].id)["active"] == wh, n
    # points for clean trades (001 s2.3 (2)): both parties earn 1 point a certified kWh
    # (clean_upt), the plain contract none
    assert (first["clean_upt"], last["clean_upt"], "clean_upt" in plain) == (
        700_000, 200_000, False)
    accounts = {n: mk.store.record(M.T_ACCOUNT, KEYS[n].id) for n in ("U1", "U2", "U3")}
    paid = {n: mk.contract(CYCLE, i)["pf"] * mk.contract(CYCLE, i)["delivered"]
            for i, n in enumerate(("U1", "U3", "U2"))}
    assert accounts["U1"]["balance"] == GRANT - paid["U1"] + 700_000
    assert accounts["U3"]["balance"] == GRANT - paid["U3"]
    replay = verify_blocks(store_blocks(mk.store))
    check_derived(mk.store, replay)
