"""Tariffs and bill receipts on the chain (docs/PROTOCOL.md section 28): a utility's
proposal and a regulator's approval of exactly it, before it starts; the version in force at
a time; a bill's receipt under it, once per period, and its correction by name; a reason for
every refusal; replayed alike by verify-chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app import tariffs as TF
from aggregator.chain.store import BlockStore
from aggregator.chain.verify import check_derived, store_blocks, verify_blocks
from meterledger import wire as P
from meterledger.wire import billing as BL
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import market as MK
from tests.kit.appchain import AppChain, open_store
from tests.kit.chainkit import T0

OPERATOR = P.SigningKey.from_int(0xB11)
UTILITY, OTHER = P.SigningKey.from_int(0x0717), P.SigningKey.from_int(0x0718)
REGULATOR = P.SigningKey.from_int(0x7E6)
START = T0 + 86_400
PERIODS = [(0, 10_000), (480, 25_000)]


class Tariffs(AppChain):
    def __init__(self, store: BlockStore, tmp_path: Path) -> None:
        self.now = T0 + 60
        super().__init__(store, tmp_path, OPERATOR, lambda: float(self.now))
        self.register("utility", UTILITY)
        self.register("utility", OTHER)
        self.register("regulator", REGULATOR)

    def propose(self, version: int, start: int = START, key: P.SigningKey = UTILITY,
                **kw: int) -> bytes:
        self.send(key, BL.BL_TARIFF, BL.tariff_body("residential", version, start, PERIODS,
                                                    **kw))
        return bytes(self.record(version)["tx"])

    def record(self, version: int) -> dict[str, Any]:
        return dict(self.store.record(TF.T_TARIFF, TF.tariff_key("residential", version)))


@pytest.fixture(params=["memory", "sqlite"])
def tf(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tariffs]:
    t = Tariffs(open_store(request.param, tmp_path), tmp_path)
    yield t
    t.close()


def test_a_tariff_takes_the_utilitys_and_the_regulators_signatures(tf: Tariffs) -> None:
    digest = tf.propose(1, demand_rate=2_000_000, fixed=150_000)
    rec = tf.record(1)
    assert rec["utility"] == UTILITY.id and "approval" not in rec
    assert BL.Tariff.of(rec["body"]).periods == tuple(PERIODS)
    # only a regulator approves, only exactly what was proposed, once
    assert tf.refused(UTILITY, BL.BL_APPROVE, BL.approve_body("residential", 1, digest)) == \
        "not_permitted"
    assert tf.refused(REGULATOR, BL.BL_APPROVE, BL.approve_body(
        "residential", 1, b"\x00" * 32)) == "tariff_mismatch"
    assert tf.refused(REGULATOR, BL.BL_APPROVE, BL.approve_body(
        "residential", 2, digest)) == "unknown_tariff"
    tf.send(REGULATOR, BL.BL_APPROVE, BL.approve_body("residential", 1, digest))
    assert tf.record(1)["regulator"] == REGULATOR.id
    assert tf.refused(REGULATOR, BL.BL_APPROVE, BL.approve_body("residential", 1, digest)) == \
        "already_approved"
    replay = verify_blocks(store_blocks(tf.store))
    check_derived(tf.store, replay)


def test_versions_go_up_by_one_never_backwards_in_time_nor_across_utilities(
        tf: Tariffs) -> None:
    assert tf.refused(UTILITY, BL.BL_TARIFF, BL.tariff_body(
        "residential", 2, START, PERIODS)) == "tariff_version"
    assert tf.refused(UTILITY, BL.BL_TARIFF, BL.tariff_body(
        "residential", 1, T0, PERIODS)) == "tariff_retroactive"
    assert tf.refused(REGULATOR, BL.BL_TARIFF, BL.tariff_body(
        "residential", 1, START, PERIODS)) == "not_permitted"  # a utility's kind
    tf.propose(1)
    assert tf.refused(UTILITY, BL.BL_TARIFF, BL.tariff_body(
        "residential", 1, START, PERIODS)) == "tariff_version"
    assert tf.refused(OTHER, BL.BL_TARIFF, BL.tariff_body(
        "residential", 2, START, PERIODS)) == "not_permitted"


def test_an_unapproved_tariff_never_applies_and_the_latest_start_wins(tf: Tariffs) -> None:
    first = tf.propose(1)
    second = tf.propose(2, start=START + 30 * 86_400)
    st = G.Staged(tf.store)
    assert TF.in_force(st, "residential", START) is None  # proposed, not approved
    tf.send(REGULATOR, BL.BL_APPROVE, BL.approve_body("residential", 1, first))
    tf.send(REGULATOR, BL.BL_APPROVE, BL.approve_body("residential", 2, second))
    st = G.Staged(tf.store)
    assert TF.in_force(st, "residential", START - 1) is None
    versions = [TF.in_force(st, "residential", t) for t in (START, START + 30 * 86_400)]
    assert [None if v is None else v["body"][2] for v in versions] == [1, 2]
    # a version left unapproved until it starts can never be approved
    late = tf.propose(3, start=START + 60 * 86_400)
    tf.now = START + 60 * 86_400
    tf.propose(4, start=START + 90 * 86_400)  # a block at the new time
    assert tf.refused(REGULATOR, BL.BL_APPROVE, BL.approve_body("residential", 3, late)) == \
        "tariff_started"


def _usage() -> list[BL.Usage]:
    """A day of 15-minute intervals from START: 100 Wh each, the last four estimated."""
    return [BL.Usage(START + 900 * (i + 1), 900, 100, int(i >= 92)) for i in range(96)]


def test_a_bill_is_received_once_under_the_tariff_in_force_and_corrected_by_name(
        tf: Tariffs) -> None:
    digest = tf.propose(1, fixed=150_000, estimated=BL.BILL)
    tf.send(REGULATOR, BL.BL_APPROVE, BL.approve_body("residential", 1, digest))
    t = BL.Tariff.of(tf.record(1)["body"])
    account, meter, end = b"\xac" * 8, b"\x11" * 8, START + 86_400
    bill = BL.compute_bill(t, _usage())
    # 32 night intervals at 10 c/kWh, 64 day ones at 25 c/kWh, 100 Wh each; 1.50 fixed
    assert [x.cents for x in bill.lines] == [32, 160, 150] and bill.estimated == 4
    doc = BL.bill_document(account, meter, START, end, t, bill, _usage())
    body = BL.receipt_body(account, START, end, "residential", 1, BL.bill_digest(doc),
                           bill.total)
    assert tf.refused(UTILITY, BL.BL_RECEIPT, body) == "period_open"
    tf.now = end + 60
    tf.propose(2, start=end + 86_400)  # a block at the new time (unapproved: no effect)
    assert tf.refused(OTHER, BL.BL_RECEIPT, body) == "not_permitted"
    assert tf.refused(UTILITY, BL.BL_RECEIPT, {**body, 5: 2}) == "unknown_tariff"
    assert tf.refused(UTILITY, BL.BL_RECEIPT, {**body, 2: START - 900}) == \
        "tariff_not_in_force"
    tf.send(UTILITY, BL.BL_RECEIPT, body)
    key = account + G.u64(START)
    first = dict(tf.store.record(TF.T_RECEIPT, key))
    assert (first["total"], first["bill"], first["n"]) == (342, BL.bill_digest(doc), 1)
    assert tf.refused(UTILITY, BL.BL_RECEIPT, body) == "receipt_repeated"
    assert tf.refused(UTILITY, BL.BL_RECEIPT, {**body, 8: b"\x00" * 32}) == "unknown_receipt"
    # a dispute: re-run without the estimated hour, the correction names the receipt
    fixed = BL.compute_bill(t, _usage()[:92])
    doc2 = BL.bill_document(account, meter, START, end, t, fixed, _usage()[:92])
    tf.send(UTILITY, BL.BL_RECEIPT, BL.receipt_body(
        account, START, end, "residential", 1, BL.bill_digest(doc2), fixed.total,
        replaces=first["tx"]))
    second = dict(tf.store.record(TF.T_RECEIPT, key))
    assert (second["replaces"], second["n"], second["total"]) == (first["tx"], 2, 338)
    # periods are billed in order, once each: no period over a billed one, and a
    # correction keeps its period
    assert tf.refused(UTILITY, BL.BL_RECEIPT, {**body, 2: START + 43_200}) == \
        "period_overlap"
    assert tf.refused(UTILITY, BL.BL_RECEIPT, {**body, 3: end - 900, 8: second["tx"]}) == \
        "period_overlap"
    replay = verify_blocks(store_blocks(tf.store))
    check_derived(tf.store, replay)


def test_a_bills_digest_is_its_content_not_its_json() -> None:
    t = BL.Tariff.of(BL.tariff_body("residential", 1, START, PERIODS))
    doc = BL.bill_document(b"\xac" * 8, b"\x11" * 8, START, START + 86_400, t,
                           BL.compute_bill(t, _usage()), _usage())
    same = json.loads(json.dumps(dict(reversed(list(doc.items())))))
    assert BL.bill_digest(same) == BL.bill_digest(doc)
    assert BL.bill_digest({**doc, "total": doc["total"] + 1}) != BL.bill_digest(doc)
    # the intervals billed are part of what the receipt names
    moved = [[*doc["usage"][0][:4], doc["usage"][0][4] + 1], *doc["usage"][1:]]
    assert BL.bill_digest({**doc, "usage": moved}) != BL.bill_digest(doc)


# --- outage credits -----------------------------------------------------------------------------
HOME = b"\x11" * 8


def _outage(tf: Tariffs, start: int, end: int, meters: list[bytes]) -> bytes:
    """The fog's closed outage record on the chain; its transaction's digest."""
    body = C.fault_body("outage", "feeder f1 restored", end, "none", [], meters=meters,
                        start=start, end=end)
    tf.send(tf.fog.key, C.FAULT, body)
    p = tf.ledger.participant(tf.fog.key.id)
    assert p is not None
    return P.digest(P.sign1(tf.fog.key, C.tx(tf.fog.key.id, p.nonce, C.FAULT, body, T0,
                                             OPERATOR.id)))


def test_an_outage_credit_needs_the_fogs_record_beyond_the_grace_once(tf: Tariffs) -> None:
    # an hour's grace, then 20 c per kWh not served, at most 5.00 an outage
    digest = tf.propose(1, grace_s=3_600, compensation_rate=20_000, compensation_cap=500_000)
    tf.send(REGULATOR, BL.BL_APPROVE, BL.approve_body("residential", 1, digest))
    tf.now = START + 86_400
    tf.propose(2, start=START + 2 * 86_400)  # a block at the new time (unapproved)
    long = _outage(tf, START + 3_600, START + 4 * 3_600, [HOME, b"\x22" * 8])
    short = _outage(tf, START + 6 * 3_600, START + 6 * 3_600 + 1_800, [HOME])
    t = BL.Tariff.of(tf.record(1)["body"])
    body = BL.credit_body(long, HOME, START + 3_600, "residential", 1, 2_000,
                          BL.compensation_cents(t, 2_000))
    assert body[7] == 40  # 2 kWh x 20 c
    assert tf.refused(UTILITY, BL.BL_CREDIT, {**body, 1: short}) == "no_outage_record"
    assert tf.refused(UTILITY, BL.BL_CREDIT, {**body, 2: b"\x33" * 8}) == "no_outage_record"
    assert tf.refused(UTILITY, BL.BL_CREDIT, BL.credit_body(
        short, HOME, START + 6 * 3_600, "residential", 1, 0, 0)) == "within_grace"
    assert tf.refused(UTILITY, BL.BL_CREDIT, {**body, 7: 41}) == "credit_mismatch"
    assert tf.refused(OTHER, BL.BL_CREDIT, body) == "not_permitted"
    assert tf.refused(UTILITY, BL.BL_CREDIT, {**body, 5: 2}) == "unknown_tariff"
    assert tf.refused(REGULATOR, BL.BL_CREDIT, body) == "not_permitted"  # the role's
    # the cap: 100 kWh not served is 20.00, capped at 5.00
    assert BL.compensation_cents(t, 100_000) == 500
    tf.send(UTILITY, BL.BL_CREDIT, body)
    rec = dict(tf.store.record(TF.T_CREDIT, HOME + long))
    assert (rec["cents"], rec["wh"], rec["end"], rec["utility"]) == (
        40, 2_000, START + 4 * 3_600, UTILITY.id)
    assert tf.refused(UTILITY, BL.BL_CREDIT, body) == "credit_repeated"
    replay = verify_blocks(store_blocks(tf.store))
    check_derived(tf.store, replay)


# --- points redeemed against bills --------------------------------------------------------------
GRID, CUSTOMER = P.SigningKey.from_int(0x6E1D), P.SigningKey.from_int(0x5C1)
POINT = 10**6


def _points(tf: Tariffs) -> None:
    """The market's grid operator enrols the customer: its grant is 100 points."""
    tf.register("dispatch", GRID)
    tf.register("market", CUSTOMER)
    tf.send(GRID, GC.PARAMS, GC.params_body("market", 1, {}))
    tf.send(GRID, MK.MK_NETWORK, MK.network_body(1, [("root", "", 10**8, 0)]))
    tf.send(GRID, MK.MK_ENROLL, MK.enroll_body(CUSTOMER.id, tf.fog.key.id, HOME, "root"))


def _balance(tf: Tariffs, pid: bytes) -> int:
    return int(G.Staged(tf.store).get(M.T_ACCOUNT, pid)["balance"])


def test_points_are_redeemed_against_a_bill_at_the_tariffs_rate(tf: Tariffs) -> None:
    _points(tf)
    body = BL.redeem_body("residential", b"\xac" * 8, 20 * POINT)
    assert tf.refused(CUSTOMER, BL.BL_REDEEM, body) == "tariff_not_in_force"
    # version 1 takes no points; version 2 takes them at 1.5 cents a point
    tf.send(REGULATOR, BL.BL_APPROVE, BL.approve_body("residential", 1, tf.propose(1)))
    tf.send(REGULATOR, BL.BL_APPROVE, BL.approve_body(
        "residential", 2, tf.propose(2, start=START + 86_400, points_rate=1_500)))
    tf.now = START + 60
    tf.propose(3, start=START + 90 * 86_400)  # a block at the new time
    assert tf.refused(CUSTOMER, BL.BL_REDEEM, body) == "points_not_accepted"
    tf.now = START + 86_400 + 60
    tf.propose(4, start=START + 91 * 86_400)
    assert tf.refused(CUSTOMER, BL.BL_REDEEM, {**body, 3: 333}) == "points_too_few"
    assert tf.refused(CUSTOMER, BL.BL_REDEEM, {**body, 3: 101 * POINT}) == \
        "insufficient_points"
    assert tf.refused(CUSTOMER, BL.BL_REDEEM, {**body, 1: "business"}) == \
        "tariff_not_in_force"
    tf.send(CUSTOMER, BL.BL_REDEEM, body)
    [(key, rec)] = G.Staged(tf.store).scan(TF.T_REDEEM, b"\xac" * 8)
    assert (rec["customer"], rec["upt"], rec["cents"], rec["version"], rec["t"]) == (
        CUSTOMER.id, 20 * POINT, 30, 2, START + 86_400 + 60)
    assert key[8:16] == G.u64(START + 86_400 + 60)
    # the points moved to the tariff's utility: none made, none lost
    assert (_balance(tf, CUSTOMER.id), _balance(tf, UTILITY.id)) == (80 * POINT, 20 * POINT)
    two = BL.Tariff.of(tf.record(2)["body"])  # a third of a point is half a cent: half up
    assert (BL.points_cents(two, POINT // 3), BL.points_cents(two, POINT // 3 + 1)) == (0, 1)
    replay = verify_blocks(store_blocks(tf.store))
    check_derived(tf.store, replay)
