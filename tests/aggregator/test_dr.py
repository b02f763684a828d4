"""Home demand response on the chain (docs/PROTOCOL.md section 30): a utility's offer and a
customer's acceptance, one contract per meter; the customer's preferences; DR events; the
fog's report, on which the chain pays the capped compensation in points once, or records it
owed until the utility settles; a reason for every refusal; replayed alike by verify-chain,
on the SQLite store and its in-memory twin."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.app import dr as D
from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.store import BlockStore
from aggregator.chain.verify import check_derived, store_blocks, verify_blocks
from meterledger import wire as P
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import dr as DR
from meterledger.wire import market as MK
from tests.kit.appchain import AppChain, open_store
from tests.kit.chainkit import T0

OPERATOR = P.SigningKey.from_int(0xD0)
UTILITY, OTHER = P.SigningKey.from_int(0x0717), P.SigningKey.from_int(0x0718)
HOME, NEIGHBOUR = P.SigningKey.from_int(0x4011), P.SigningKey.from_int(0x4012)
FUNDER, OTHER_FOG = P.SigningKey.from_int(0x4013), P.SigningKey.from_int(0x4014)
METER, METER2 = b"\x11" * 8, b"\x22" * 8
DAY = 86_400
MIDNIGHT = T0 - T0 % DAY + DAY  # the day after the chain starts, 00:00 UTC
EV_START, EV_END = MIDNIGHT + 18 * 3600, MIDNIGHT + 19 * 3600
VALID = (MIDNIGHT, MIDNIGHT + 30 * DAY)
FUNDS = 10 * 10**6  # the utility's points: 10 points


class Demand(AppChain):
    """A chain with two utilities, two customers (a holder and a market participant), a
    second fog, and the utility holding FUNDS points (a market participant's grant moved
    to it); its clock moves only when a test says."""

    def __init__(self, store: BlockStore, tmp_path: Path) -> None:
        self.now = T0 + 60
        self.ticks = 0
        super().__init__(store, tmp_path, OPERATOR, lambda: float(self.now))
        for role, key in (("utility", UTILITY), ("utility", OTHER), ("holder", HOME),
                          ("market", NEIGHBOUR), ("market", FUNDER), ("fog", OTHER_FOG)):
            self.register(role, key)
        self.send(OPERATOR, GC.PARAMS, GC.params_body("market", 1, {}))
        self.send(OPERATOR, MK.MK_NETWORK, MK.network_body(1, [("root", "", 10**8, 0)]))
        self.send(OPERATOR, MK.MK_ENROLL, MK.enroll_body(FUNDER.id, self.fog.key.id,
                                                         b"\x99" * 8, "root"))
        self.send(FUNDER, MK.MK_TRANSFER, MK.transfer_body(UTILITY.id, FUNDS))

    def tx(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> bytes:
        """Send; the transaction's digest."""
        p = self.ledger.participant(key.id)
        raw = P.sign1(key, C.tx(key.id, (p.nonce if p else 0) + 1, kind, body, T0,
                                self.operator.id))
        self.ledger.submit(raw)
        return P.digest(raw)

    def at(self, t: int) -> None:
        """Move the chain's time to t: a block at t (a new holder registered)."""
        self.now = t
        self.ticks += 1
        self.register("holder", P.SigningKey.from_int(0xA000 + self.ticks))
        assert self.store.chain_time() == t

    def offer(self, customer: P.SigningKey = HOME, meter: bytes = METER,
              valid: tuple[int, int] = VALID, **kw: Any) -> dict[int, Any]:
        terms: dict[str, Any] = {"threshold": 30_000, "max_w": 500, "floor_w": 100,
                                 "windows": [(0, 360)], "tz_min": 0, "rate": 1_000, **kw}
        return DR.offer_body(customer.id, meter, self.fog.key.id, "f1", terms["threshold"],
                             terms["max_w"], terms["floor_w"], terms["windows"],
                             terms["tz_min"], terms["rate"], *valid)

    def contract(self, customer: P.SigningKey = HOME, meter: bytes = METER, **kw: Any) -> bytes:
        """An offer accepted; its digest (the contract's id)."""
        offer = self.tx(UTILITY, DR.DR_OFFER, self.offer(customer, meter, **kw))
        self.tx(customer, DR.DR_ACCEPT, DR.accept_body(offer))
        return offer

    def event(self, eid: bytes = b"\xe1" * 8, price: int = 50_000, start: int = EV_START,
              end: int = EV_END, key: P.SigningKey = UTILITY) -> bytes:
        return self.tx(key, DR.DR_EVENT, DR.event_body(eid, price, start, end,
                                                       [(self.fog.key.id, "")], "peak"))

    def balance(self, key: P.SigningKey) -> int:
        return M.account(G.Staged(self.store), key.id)["balance"]

    def report(self, contract: bytes, eid: bytes = b"\xe1" * 8, meter: bytes = METER,
               outcome: int = DR.DONE, baseline: int = 800, measured: int = 200,
               days: int = 7, missing: int = 0) -> dict[int, Any]:
        c = DR.Curtailment(days, baseline, measured, missing,
                           DR.curtailed(baseline, measured, days, missing))
        return DR.report_body(eid, meter, contract, 300, [(7, outcome), (8, DR.DONE)],
                              [41, 40], c)

    def record(self, table: str, key: bytes) -> dict[str, Any]:
        return dict(self.store.record(table, key))

    def replay(self) -> None:
        check_derived(self.store, verify_blocks(store_blocks(self.store)))


@pytest.fixture(params=["memory", "sqlite"])
def dr(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Demand]:
    d = Demand(open_store(request.param, tmp_path), tmp_path)
    yield d
    d.close()


def test_an_offer_takes_the_customers_signature_and_a_meter_one_contract(dr: Demand) -> None:
    assert dr.refused(HOME, DR.DR_OFFER, dr.offer()) == "not_permitted"  # a utility's kind
    assert dr.refused(UTILITY, DR.DR_OFFER, dr.offer(customer=OTHER_FOG)) == \
        "unknown_participant"  # a fog is no customer
    assert dr.refused(UTILITY, DR.DR_OFFER, {**dr.offer(), 3: NEIGHBOUR.id}) == "unknown_fog"
    assert dr.refused(UTILITY, DR.DR_OFFER, dr.offer(valid=(T0 - DAY, T0))) == "offer_lapsed"
    assert dr.refused(UTILITY, DR.DR_OFFER, dr.offer(valid=(T0 + DAY, T0))) == "bad_fields"
    assert dr.refused(UTILITY, DR.DR_OFFER, dr.offer(windows=[(300, 200)])) == "bad_fields"
    offer = dr.tx(UTILITY, DR.DR_OFFER, dr.offer())
    rec = dr.record(D.T_OFFER, offer)
    assert (rec["utility"], rec["customer"], rec["prefs"]) == (UTILITY.id, HOME.id, 0)
    assert "accept" not in rec
    assert dr.refused(HOME, DR.DR_ACCEPT, DR.accept_body(b"\x00" * 32)) == "unknown_offer"
    assert dr.refused(NEIGHBOUR, DR.DR_ACCEPT, DR.accept_body(offer)) == "not_offered_to_you"
    accept = dr.tx(HOME, DR.DR_ACCEPT, DR.accept_body(offer))
    rec = dr.record(D.T_OFFER, offer)
    assert (rec["accept"], rec["accepted"]) == (accept, dr.now)
    assert dr.refused(HOME, DR.DR_ACCEPT, DR.accept_body(offer)) == "offer_taken"
    # the meter's second contract may not overlap the first; one after it may
    again = dr.tx(UTILITY, DR.DR_OFFER, dr.offer(customer=NEIGHBOUR))
    assert dr.refused(NEIGHBOUR, DR.DR_ACCEPT, DR.accept_body(again)) == "meter_contracted"
    later = dr.tx(UTILITY, DR.DR_OFFER, dr.offer(customer=NEIGHBOUR,
                                                 valid=(VALID[1], VALID[1] + DAY)))
    dr.tx(NEIGHBOUR, DR.DR_ACCEPT, DR.accept_body(later))
    # an offer lapses unaccepted
    short = dr.tx(UTILITY, DR.DR_OFFER, dr.offer(meter=METER2, valid=(T0, T0 + DAY)))
    dr.at(T0 + DAY)
    assert dr.refused(HOME, DR.DR_ACCEPT, DR.accept_body(short)) == "offer_lapsed"
    dr.replay()


def test_an_event_is_the_utilitys_in_the_future_for_registered_fogs(dr: Demand) -> None:
    assert dr.refused(HOME, DR.DR_EVENT, DR.event_body(
        b"\xe1" * 8, 1, EV_START, EV_END, [(dr.fog.key.id, "")])) == "not_permitted"
    body = DR.event_body(b"\xe1" * 8, 50_000, EV_START, EV_END, [(dr.fog.key.id, "f1")])
    assert dr.refused(UTILITY, DR.DR_EVENT, {**body, 5: [[HOME.id, ""]]}) == "unknown_fog"
    assert dr.refused(UTILITY, DR.DR_EVENT, {**body, 3: T0, 4: T0 + 3600}) == \
        "event_started"
    targets = sorted([[OTHER_FOG.id, ""], [dr.fog.key.id, "f1"]])
    for bad in ({3: EV_START + 60}, {4: EV_START + 5 * 3600}, {4: EV_START},
                {5: targets[::-1]}, {5: [targets[0]] * 2}, {5: [[b"\x01" * 7, ""]]}):
        assert dr.refused(UTILITY, DR.DR_EVENT, {**body, **bad}) == "bad_fields", bad
    dr.tx(UTILITY, DR.DR_EVENT, {**body, 1: b"\xe0" * 8, 5: targets})
    dr.tx(UTILITY, DR.DR_EVENT, body)
    rec = dr.record(D.T_EVENT, b"\xe1" * 8)
    assert (rec["utility"], rec["price"], rec["start"], rec["end"]) == (
        UTILITY.id, 50_000, EV_START, EV_END)
    assert dr.store.record(D.T_FOGEV, dr.fog.key.id + G.u64(EV_END) + b"\xe1" * 8) == 1
    assert dr.refused(OTHER, DR.DR_EVENT, body) == "event_exists"
    dr.replay()


def test_preferences_are_the_customers_on_a_contract_in_force(dr: Demand) -> None:
    offer = dr.tx(UTILITY, DR.DR_OFFER, dr.offer())
    skip = DR.pref_body(offer, DR.SKIP_EVENT, b"\xe1" * 8)
    assert dr.refused(HOME, DR.DR_PREF, skip) == "contract_inactive"  # not accepted
    dr.tx(HOME, DR.DR_ACCEPT, DR.accept_body(offer))
    assert dr.refused(HOME, DR.DR_PREF, {**skip, 1: b"\x00" * 32}) == "unknown_offer"
    assert dr.refused(NEIGHBOUR, DR.DR_PREF, skip) == "not_offered_to_you"
    assert dr.refused(HOME, DR.DR_PREF, skip) == "unknown_event"
    assert dr.refused(HOME, DR.DR_PREF, DR.pref_body(offer, DR.PAUSE)) == "bad_fields"
    assert dr.refused(HOME, DR.DR_PREF, DR.pref_body(offer, DR.SKIP_WINDOW, lo=T0 - DAY,
                                                      hi=T0 - 60)) == "pref_lapsed"
    assert dr.refused(HOME, DR.DR_PREF, DR.pref_body(offer, DR.PAUSE,
                                                      hi=T0 + 400 * DAY)) == "bad_fields"
    dr.event()
    dr.tx(HOME, DR.DR_PREF, skip)
    dr.tx(HOME, DR.DR_PREF, DR.pref_body(offer, DR.PAUSE, hi=T0 + DAY))
    ps = D.prefs(G.Staged(dr.store), offer)
    assert ps == [DR.Pref(dr.now, DR.SKIP_EVENT, b"\xe1" * 8),
                  DR.Pref(dr.now, DR.PAUSE, lo=dr.now, hi=T0 + DAY)]
    assert dr.record(D.T_OFFER, offer)["prefs"] == 2
    dr.at(EV_END)
    assert dr.refused(HOME, DR.DR_PREF, skip) == "event_ended"
    for i in range(D.PREFS_MAX - 2):
        dr.tx(HOME, DR.DR_PREF, DR.pref_body(offer, DR.SKIP_WINDOW, lo=EV_END + i,
                                             hi=EV_END + DAY))
    assert dr.refused(HOME, DR.DR_PREF, DR.pref_body(
        offer, DR.PAUSE, hi=EV_END + DAY)) == "prefs_exhausted"
    dr.at(VALID[1])
    assert dr.refused(HOME, DR.DR_PREF, DR.pref_body(
        offer, DR.PAUSE, hi=VALID[1] + DAY)) == "contract_inactive"  # lapsed
    dr.replay()


def test_a_report_pays_the_capped_compensation_once(dr: Demand) -> None:
    contract = dr.contract()
    unaccepted = dr.tx(UTILITY, DR.DR_OFFER, dr.offer(meter=METER2, customer=NEIGHBOUR))
    body = dr.report(contract)
    assert dr.refused(dr.fog.key, DR.DR_REPORT, body) == "unknown_event"
    dr.event()
    assert dr.refused(dr.fog.key, DR.DR_REPORT, body) == "event_open"
    dr.at(EV_END)
    assert dr.refused(HOME, DR.DR_REPORT, body) == "not_permitted"  # a fog's kind
    assert dr.refused(OTHER_FOG, DR.DR_REPORT, body) == "not_the_meters_fog"
    assert dr.refused(dr.fog.key, DR.DR_REPORT, {**body, 2: METER2}) == "contract_mismatch"
    assert dr.refused(dr.fog.key, DR.DR_REPORT, dr.report(unaccepted, meter=METER2)) == \
        "unknown_offer"
    assert dr.refused(dr.fog.key, DR.DR_REPORT, {**body, 9: 599}) == "bad_fields"
    dr.tx(dr.fog.key, DR.DR_REPORT, body)
    # 800 Wh baseline, 200 measured: 600 Wh curtailed, capped at 500 W x 1 h; 1,000 mpt/kWh
    rep = dr.record(D.T_REPORT, b"\xe1" * 8 + METER)
    assert (rep["curtailed"], rep["wh_paid"], rep["due"], rep["paid"], rep["owed"],
            rep["why"]) == (600, 500, 500_000, 500_000, 0, "")
    assert (dr.balance(HOME), dr.balance(UTILITY)) == (500_000, FUNDS - 500_000)
    assert dr.refused(dr.fog.key, DR.DR_REPORT, body) == "report_repeated"
    dr.replay()


def test_the_chain_pays_nothing_where_the_rule_or_the_evidence_says_so(dr: Demand) -> None:
    opted = dr.contract()
    silent = dr.contract(NEIGHBOUR, METER2, threshold=60_000)
    dr.event()
    dr.tx(HOME, DR.DR_PREF, DR.pref_body(opted, DR.SKIP_WINDOW, lo=EV_START - 3600,
                                         hi=EV_START + 60))
    dr.at(EV_END)
    dr.tx(dr.fog.key, DR.DR_REPORT, dr.report(opted))
    dr.tx(dr.fog.key, DR.DR_REPORT, dr.report(silent, meter=METER2, outcome=DR.UNANSWERED))
    whys = [dr.record(D.T_REPORT, b"\xe1" * 8 + m)["why"] for m in (METER, METER2)]
    assert whys == [DR.OPTED_OUT, DR.BELOW_THRESHOLD]
    assert (dr.balance(HOME), dr.balance(NEIGHBOUR), dr.balance(UTILITY)) == (0, 0, FUNDS)
    c = D.contract_of(dr.record(D.T_OFFER, silent))
    e = D.event_of(dr.record(D.T_EVENT, b"\xe1" * 8), b"\xe1" * 8)
    ok = dataclasses.replace(c, threshold=0)
    assert D.why_unpaid(ok, e, [], dr.report(silent, outcome=DR.REJECTED)) == \
        DR.NO_DEVICE_RESPONSE
    assert D.why_unpaid(ok, e, [], dr.report(silent, missing=900)) == DR.INCOMPLETE_DATA
    assert D.why_unpaid(ok, e, [], dr.report(silent, days=0)) == DR.NO_BASELINE
    assert D.why_unpaid(ok, e, [], dr.report(silent)) == ""
    dr.replay()


def test_what_the_utility_cannot_pay_is_owed_until_it_settles(dr: Demand) -> None:
    contract = dr.contract(rate=30_000)  # 500 Wh paid x 30,000 mpt/kWh = 15 points
    dr.event()
    dr.at(EV_END)
    dr.tx(dr.fog.key, DR.DR_REPORT, dr.report(contract))
    rep = dr.record(D.T_REPORT, b"\xe1" * 8 + METER)
    assert (rep["due"], rep["paid"], rep["owed"]) == (15 * 10**6, FUNDS, 5 * 10**6)
    assert dr.store.record(D.T_OWED, UTILITY.id + b"\xe1" * 8 + METER) == 5 * 10**6
    later = DR.event_body(b"\xe2" * 8, 50_000, EV_START + DAY, EV_END + DAY,
                          [(dr.fog.key.id, "")])
    assert dr.refused(UTILITY, DR.DR_EVENT, later) == "compensation_owed"
    settle = DR.settle_body(b"\xe1" * 8, METER)
    assert dr.refused(OTHER, DR.DR_SETTLE, settle) == "not_permitted"
    assert dr.refused(UTILITY, DR.DR_SETTLE, DR.settle_body(b"\xe1" * 8, METER2)) == \
        "unknown_report"
    assert dr.refused(UTILITY, DR.DR_SETTLE, settle) == "insufficient_points"
    dr.tx(HOME, MK.MK_TRANSFER, MK.transfer_body(UTILITY.id, 5 * 10**6))  # bought back
    dr.tx(UTILITY, DR.DR_SETTLE, settle)
    rep = dr.record(D.T_REPORT, b"\xe1" * 8 + METER)
    assert (rep["paid"], rep["owed"], dr.balance(HOME), dr.balance(UTILITY)) == (
        15 * 10**6, 0, FUNDS, 0)
    assert dr.store.record(D.T_OWED, UTILITY.id + b"\xe1" * 8 + METER) is None
    assert dr.refused(UTILITY, DR.DR_SETTLE, settle) == "nothing_owed"
    dr.tx(UTILITY, DR.DR_EVENT, later)
    dr.replay()
