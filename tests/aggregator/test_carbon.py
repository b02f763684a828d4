"""Carbon allowances and the notaries' records on the chain (docs/PROTOCOL.md section 26):
emissions charged from fossil generators' statements, free allocation by the historical-
intensity method, transfers only from what is held, settlement with a fine and a
restriction flag, CCER claims less the energy certified as GC, records in effect only at
the notaries' threshold and once, and a conversion decided once by the carbon chain's
time; on the SQLite store and its in-memory twin, replayed alike by verify-chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.app import carbon as K
from aggregator.chain.app import green as G
from aggregator.chain.app import notary as N
from aggregator.chain.store import BlockStore
from aggregator.chain.verify import check_derived, store_blocks, verify_blocks
from meterledger import wire as P
from meterledger.wire import carbon as CB
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from tests.kit.appchain import AppChain, open_store
from tests.kit.chainkit import T0

OPERATOR = P.SigningKey.from_int(0xC0)
REGISTRY, REGULATOR = P.SigningKey.from_int(0x4E6), P.SigningKey.from_int(0x7E6)
PLANT, COAL_CO = P.SigningKey.from_int(0x91A), P.SigningKey.from_int(0xC0A1)
BUYER = P.SigningKey.from_int(0xB0B)
NOTARIES = [P.SigningKey.from_int(0xA00 + i) for i in range(3)]
PV_METER, COAL_METER, GAS_METER = b"\x01" * 8, b"\x02" * 8, b"\x04" * 8
START = T0 - T0 % 3600 + 3600  # period 0 of the tests: an hour, four 15-minute intervals
IVL = START + 900  # the first interval of period 0 (ending at IVL)
PEER = b"\x99" * 8  # the GC chain these records come from
TX = b"\x55" * 32


class Carbon(AppChain):
    """A carbon chain: the operator, a registry, a regulator, a PV plant's owner, a coal
    company, a buyer, three notaries, and a fog stating its generators' energy; its clock
    (the block times) moves only when a test says."""

    def __init__(self, store: BlockStore, tmp_path: Path) -> None:
        self.now = START - 10
        super().__init__(store, tmp_path, OPERATOR, lambda: float(self.now))
        for role, key in (("registry", REGISTRY), ("regulator", REGULATOR), ("plant", PLANT),
                          ("plant", COAL_CO), ("holder", BUYER),
                          *(("notary", n) for n in NOTARIES)):
            self.register(role, key)
        self.send(REGULATOR, GC.PARAMS, GC.params_body("carbon", 1, {
            "start": START, "period_s": 3600, "grace_s": 600}))
        self.send(OPERATOR, GC.PARAMS, GC.params_body("notaries", 1, {
            "peer_chain": int.from_bytes(PEER, "big", signed=True)}))
        for gid, tech, meter, owner in (("pv-1", "pv", PV_METER, PLANT),
                                        ("coal-1", "coal", COAL_METER, COAL_CO),
                                        ("gas-1", "gas", GAS_METER, COAL_CO)):
            self.send(REGISTRY, GC.GENERATOR, GC.generator_body(
                gid, tech, 50_000_000, T0 - 86_400, self.fog.key.id, meter, "subsidy",
                owner.id))

    def at(self, t: int) -> None:
        """Move the chain's time to t: a block at t (what the next rules read)."""
        self.now = t
        self.send(OPERATOR, GC.PARAMS, GC.params_body("notaries", self.version() + 1, {
            "peer_chain": int.from_bytes(PEER, "big", signed=True)}))
        assert self.store.chain_time() == t

    def version(self) -> int:
        return int(self.store.record(G.T_PARAMS, b"notaries")["version"])

    def anchor(self, *stated: tuple[Any, ...]) -> None:
        """Anchor statements (meter, ivl, exp Wh[, est])."""
        for s in stated:
            self.fog.state(s[0], s[1], s[2], est=s[3] if len(s) > 3 else 0)
        self.fog.checkpoints.seal(T0, force=True)
        self.send(self.fog.key, C.ANCHOR, self.fog.anchor())

    def account(self, key: P.SigningKey, p: int = 0) -> dict[str, int]:
        a = self.store.record(K.T_ACCOUNT, key.id + G.u64(p))
        return dict(a) if a is not None else dict.fromkeys(K.ACCOUNT, 0)

    def held(self, key: P.SigningKey, p: int = 0) -> int:
        return K.balance(self.account(key, p))

    def attest(self, notary: P.SigningKey, subj: str, values: dict[str, Any],
               tx: bytes = TX, chain: bytes = PEER) -> None:
        self.send(notary, CB.ATTEST, CB.attest_body(chain, 7, tx, subj, values))

@pytest.fixture(params=["memory", "sqlite"])
def cb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Carbon]:
    c = Carbon(open_store(request.param, tmp_path), tmp_path)
    yield c
    c.close()


def test_emissions_are_charged_from_cumulative_fossil_energy_without_drift(cb: Carbon) -> None:
    cb.anchor((COAL_METER, IVL, 333_333), (COAL_METER, IVL + 900, 333_333))
    cb.anchor((COAL_METER, IVL + 1800, 333_333, 1))  # estimated: charged all the same
    cb.anchor((PV_METER, IVL, 900_000), (GAS_METER, IVL, 1_000_000))
    # 999,999 Wh x 811.2 g/kWh, once: 811,199 g (per statement it would be 3 x 270,399)
    assert cb.account(COAL_CO)["emitted"] == 811_199 + 490_000
    out = cb.store.record(K.T_OUTPUT, K.gkey("coal-1", 0))
    assert out == {"wh": 666_666, "est": 333_333, "refused": 0, "g": 811_199,
                   "factor": 811_200}
    assert cb.account(PLANT)["emitted"] == 0  # renewable: output counted, nothing charged
    assert cb.store.record(K.T_OUTPUT, K.gkey("pv-1", 0))["wh"] == 900_000
    cb.anchor((COAL_METER, IVL + 3600, 1_000_000))  # the next period's first interval
    assert cb.account(COAL_CO, 1)["emitted"] == 811_200


def test_free_allocation_is_the_benchmark_times_last_period_s_verified_output(
        cb: Carbon) -> None:
    cb.anchor(*((COAL_METER, IVL + 900 * i, 500_000) for i in range(4)))  # 2 MWh in period 0
    body = CB.allocate_body("coal-1", 1)
    assert cb.refused(REGULATOR, CB.CB_ALLOCATE, body) == "period_open"
    assert cb.refused(COAL_CO, CB.CB_ALLOCATE, body) == "not_permitted"
    cb.at(START + 3600)
    cb.send(REGULATOR, CB.CB_ALLOCATE, body)
    assert cb.account(COAL_CO, 1)["allocated"] == 2 * 770_000
    assert cb.refused(REGULATOR, CB.CB_ALLOCATE, body) == "already_allocated"
    # a generator without a verified history: only with the regulator's baseline
    assert cb.refused(REGULATOR, CB.CB_ALLOCATE, CB.allocate_body("gas-1", 1)) == \
        "no_verified_output"
    cb.send(REGULATOR, CB.CB_ALLOCATE, CB.allocate_body("gas-1", 1, 3_000_000))
    assert cb.account(COAL_CO, 1)["allocated"] == 2 * 770_000 + 3 * 465_000
    assert cb.refused(REGULATOR, CB.CB_ALLOCATE, CB.allocate_body("pv-1", 1, 10)) == \
        "not_emitter"
    assert cb.refused(REGULATOR, CB.CB_ALLOCATE, CB.allocate_body("nope", 1, 10)) == \
        "unknown_generator"


def test_allowances_move_only_from_what_the_sender_holds(cb: Carbon) -> None:
    cb.send(REGULATOR, CB.CB_ALLOCATE, CB.allocate_body("coal-1", 0, 1_000_000))
    assert cb.held(COAL_CO) == 770_000
    too_much = CB.transfer_body(BUYER.id, 0, 770_001)
    assert cb.refused(COAL_CO, CB.CB_TRANSFER, too_much) == "insufficient_allowance"
    cb.send(COAL_CO, CB.CB_TRANSFER, CB.transfer_body(BUYER.id, 0, 70_000))
    assert (cb.held(COAL_CO), cb.held(BUYER)) == (700_000, 70_000)
    cb.anchor((COAL_METER, IVL, 1_000_000))  # emissions lower what is held
    assert cb.refused(COAL_CO, CB.CB_TRANSFER, CB.transfer_body(BUYER.id, 0, 1)) == \
        "insufficient_allowance"
    assert cb.refused(COAL_CO, CB.CB_TRANSFER, CB.transfer_body(COAL_CO.id, 0, 1)) == \
        "bad_fields"
    cb.at(START + 3600 + 600)  # period 0's allowances were due: they no longer move
    assert cb.refused(BUYER, CB.CB_TRANSFER, CB.transfer_body(PLANT.id, 0, 1)) == \
        "period_closed"


def test_a_deficit_is_fined_and_restricted_at_settlement_and_late_energy_only_once(
        cb: Carbon) -> None:
    cb.send(REGULATOR, CB.CB_ALLOCATE, CB.allocate_body("coal-1", 0, 1_000_000))
    cb.anchor((COAL_METER, IVL, 2_000_000))  # 1,622,400 g emitted, 770,000 held
    settle = CB.settle_body(COAL_CO.id, 0)
    assert cb.refused(BUYER, CB.CB_SETTLE, settle) == "period_open"
    cb.at(START + 3600 + 600)
    cb.send(BUYER, CB.CB_SETTLE, settle)  # anyone may ask; the rule decides
    a = cb.account(COAL_CO)
    deficit = 1_622_400 - 770_000
    assert (a["fined_g"], a["fine"], a["settled"]) == (deficit, -(-deficit * 10_000 // 10**6), 1)
    assert cb.store.record(K.T_RESTRICTED, COAL_CO.id) == {"period": 0, "deficit_g": deficit}
    assert cb.refused(BUYER, CB.CB_SETTLE, settle) == "already_settled"
    cb.anchor((COAL_METER, IVL + 900, 100_000))  # late energy of period 0
    cb.send(REGULATOR, CB.CB_SETTLE, settle)
    a = cb.account(COAL_CO)
    assert a["fined_g"] == deficit + 81_120  # only the growth is fined
    assert a["fine"] == -(-deficit * 10_000 // 10**6) + -(-81_120 * 10_000 // 10**6)
    # a compliant next period lifts the restriction
    cb.send(REGULATOR, CB.CB_ALLOCATE, CB.allocate_body("coal-1", 1, 1_000_000))
    cb.at(START + 7200 + 600)
    cb.send(REGULATOR, CB.CB_SETTLE, CB.settle_body(COAL_CO.id, 1))
    assert cb.store.record(K.T_RESTRICTED, COAL_CO.id) is None
    assert cb.account(COAL_CO, 1)["fine"] == 0


def test_ccer_credit_is_verified_energy_less_what_was_certified_deducted_once(
        cb: Carbon) -> None:
    cb.anchor((PV_METER, IVL, 1_500_000), (PV_METER, IVL + 900, 1_500_000))  # 3 MWh
    claim = CB.ccer_body("pv-1", 0, 5_000_000)
    assert cb.refused(BUYER, CB.CB_CCER, claim) == "not_owner"
    assert cb.refused(COAL_CO, CB.CB_CCER, CB.ccer_body("coal-1", 0, 1)) == "not_renewable"
    cb.send(PLANT, CB.CB_CCER, claim)
    assert cb.account(PLANT)["ccer"] == 3 * 581_000  # at most what was verified
    assert cb.refused(PLANT, CB.CB_CCER, claim) == "ccer_claimed"
    # the GC chain certified 1 MWh of it: the notaries' record deducts it
    issue = {"gen": "pv-1", "periods": [[0, 1_000_000]]}
    cb.attest(NOTARIES[0], "issue/pv-1/0-1000000", issue)
    assert cb.account(PLANT)["ccer"] == 3 * 581_000  # one share: no effect
    cb.attest(NOTARIES[1], "issue/pv-1/0-1000000", issue)
    assert cb.account(PLANT)["ccer"] == 2 * 581_000
    # the same energy again, by a replayed record or a third share: refused, deducted once
    assert cb.refused(NOTARIES[2], CB.ATTEST, CB.attest_body(
        PEER, 7, TX, "issue/pv-1/0-1000000", issue)) == "record_applied"
    assert cb.refused(NOTARIES[0], CB.ATTEST, CB.attest_body(
        PEER, 8, b"\x66" * 32, "issue/pv-1/0-1000000", issue)) == "record_applied"
    cb.anchor((PV_METER, IVL + 1800, 500_000))  # more verified energy: credited up to the claim
    assert cb.account(PLANT)["ccer"] == (3_500_000 - 1_000_000) * 581_000 // 10**6
    assert cb.store.record(K.T_GCWH, K.gkey("pv-1", 0)) == 1_000_000


def test_a_record_takes_effect_only_at_the_threshold_of_distinct_notaries(cb: Carbon) -> None:
    fake = {"gen": "pv-1", "periods": [[0, 9_000_000]]}
    real = {"gen": "pv-1", "periods": [[0, 1_000_000]]}
    subj = "issue/pv-1/0-1000000"
    cb.attest(NOTARIES[0], subj, fake)  # one notary signs a fake issuance
    assert cb.store.record(K.T_GCWH, K.gkey("pv-1", 0)) is None
    assert cb.store.record(N.T_DONE, subj.encode()) is None
    assert cb.refused(NOTARIES[0], CB.ATTEST, CB.attest_body(PEER, 7, TX, subj, fake)) == \
        "attest_repeated"
    assert cb.refused(BUYER, CB.ATTEST, CB.attest_body(PEER, 7, TX, subj, fake)) == \
        "not_permitted"
    assert cb.refused(NOTARIES[1], CB.ATTEST, CB.attest_body(
        b"\x98" * 8, 7, TX, subj, real)) == "unknown_source"
    cb.attest(NOTARIES[1], subj, real)  # the honest ones: a record of their own
    assert cb.store.record(K.T_GCWH, K.gkey("pv-1", 0)) is None
    cb.attest(NOTARIES[2], subj, real)
    assert cb.store.record(K.T_GCWH, K.gkey("pv-1", 0)) == 1_000_000
    # the fake's share never counts now: its subject took effect
    assert cb.refused(NOTARIES[1], CB.ATTEST, CB.attest_body(PEER, 7, TX, subj, fake)) == \
        "record_applied"
    bad = {"gen": "pv-1", "periods": [[1, 5], [1, 5]]}  # a period twice
    cb.attest(NOTARIES[0], "issue/pv-1/1000000-2000000", bad)
    assert cb.refused(NOTARIES[1], CB.ATTEST, CB.attest_body(
        PEER, 7, TX, "issue/pv-1/1000000-2000000", bad)) == "bad_record"


def test_a_lock_is_credited_once_before_its_deadline_and_expires_after_it(cb: Carbon) -> None:
    lock = {"owner": PLANT.id, "wh": 1_000_000, "period": 0, "deadline": START + 100}
    for n in NOTARIES[:2]:
        cb.attest(n, "lock/pv-1/0-1000000", lock, tx=b"\x01" * 32)
    assert cb.account(PLANT)["relief"] == 581_000
    conv = cb.store.record(K.T_CONV, b"pv-1/0-1000000")
    assert (conv["outcome"], conv["grams"], conv["lock"]) == ("credited", 581_000, b"\x01" * 32)
    out = cb.store.records(G.T_OUT)
    assert [v["subject"] for _, v in out] == ["outcome/pv-1/0-1000000"]
    assert out[0][1]["values"] == {"outcome": "credited", "lock": b"\x01" * 32}
    assert cb.refused(NOTARIES[2], CB.ATTEST, CB.attest_body(
        PEER, 7, b"\x01" * 32, "lock/pv-1/0-1000000", lock)) == "record_applied"
    cb.at(START + 101)  # past the next lock's deadline: expired, nothing credited
    late = {**lock, "wh": 2_000_000}
    for n in NOTARIES[1:]:
        cb.attest(n, "lock/pv-1/1000000-3000000", late, tx=b"\x02" * 32)
    assert cb.account(PLANT)["relief"] == 581_000
    assert cb.store.record(K.T_CONV, b"pv-1/1000000-3000000")["outcome"] == "expired"


def test_the_chain_replays_to_the_same_records_and_root(cb: Carbon) -> None:
    cb.anchor((COAL_METER, IVL, 1_000_000), (PV_METER, IVL, 2_000_000))
    cb.send(PLANT, CB.CB_CCER, CB.ccer_body("pv-1", 0, 2_000_000))
    for n in NOTARIES[:2]:
        cb.attest(n, "issue/pv-1/0-1000000", {"gen": "pv-1", "periods": [[0, 1_000_000]]})
    cb.at(START + 4200)
    cb.send(BUYER, CB.CB_SETTLE, CB.settle_body(COAL_CO.id, 0))
    replay = verify_blocks(store_blocks(cb.store))
    check_derived(cb.store, replay)
    assert replay.state.records[(K.T_RESTRICTED, COAL_CO.id)]["deficit_g"] == 811_200


def test_implausible_statements_are_neither_verified_nor_charged(cb: Carbon) -> None:
    # 50 MW registered: at most 12.5 MWh in 15 minutes
    cb.anchor((COAL_METER, IVL, 12_500_001), (PV_METER, IVL, 20_000_000))
    assert cb.account(COAL_CO)["emitted"] == 0
    assert cb.store.record(K.T_OUTPUT, K.gkey("coal-1", 0))["refused"] == 12_500_001
    assert cb.store.record(K.T_OUTPUT, K.gkey("pv-1", 0))["wh"] == 0
    cb.fog.state(COAL_METER, IVL + 900, 1_000_000, dur=300)  # another interval length
    cb.anchor((COAL_METER, IVL + 1800, 1_000_000))
    out = cb.store.record(K.T_OUTPUT, K.gkey("coal-1", 0))
    assert (out["wh"], out["refused"], out["g"]) == (1_000_000, 13_500_001, 811_200)
    assert cb.store.record(K.T_GENDUR, b"coal-1") == 300  # the first counted one's
    assert cb.account(COAL_CO)["emitted"] == 811_200  # the 900 s one was refused


def test_a_factor_change_applies_from_the_next_period_and_periods_stay(cb: Carbon) -> None:
    cb.anchor((COAL_METER, IVL, 1_000_000))
    cb.send(REGULATOR, GC.PARAMS, GC.params_body("carbon", 2, {
        "start": START, "period_s": 3600, "grace_s": 600, "factor_coal": 1_000_000}))
    cb.anchor((COAL_METER, IVL + 900, 1_000_000), (COAL_METER, IVL + 3600, 1_000_000))
    assert cb.account(COAL_CO)["emitted"] == 2 * 811_200  # period 0 keeps its factor
    assert cb.account(COAL_CO, 1)["emitted"] == 1_000_000
    for moved in ({"start": START + 1}, {"period_s": 7200}):
        assert cb.refused(REGULATOR, GC.PARAMS, GC.params_body("carbon", 3, {
            "start": START, "period_s": 3600, "grace_s": 600, **moved})) == "params_frozen"


def test_a_value_beyond_int64_is_refused_and_harms_nobody(cb: Carbon) -> None:
    cb.send(REGULATOR, GC.PARAMS, GC.params_body("carbon", 2, {
        "start": START, "period_s": 3600, "grace_s": 600, "benchmark_coal": 10**7}))
    huge = CB.allocate_body("coal-1", 0, 2**60)  # 2^60 Wh x 10 g/Wh: beyond int64
    assert cb.refused(REGULATOR, CB.CB_ALLOCATE, huge) == "out_of_range"
    cb.send(REGULATOR, CB.CB_ALLOCATE, CB.allocate_body("coal-1", 0, 1_000_000))
    assert cb.account(COAL_CO)["allocated"] == 10**7
    check_derived(cb.store, verify_blocks(store_blocks(cb.store)))


def test_a_lowered_threshold_completes_a_record_with_a_repeated_share(cb: Carbon) -> None:
    lock = {"owner": PLANT.id, "wh": 1_000_000, "period": 0, "deadline": START + 100}
    cb.send(OPERATOR, GC.PARAMS, GC.params_body("notaries", cb.version() + 1, {
        "peer_chain": int.from_bytes(PEER, "big", signed=True), "threshold": 3}))
    for n in NOTARIES[:2]:
        cb.attest(n, "lock/pv-1/0-1000000", lock)
    assert cb.account(PLANT)["relief"] == 0  # 2 of 3
    cb.send(OPERATOR, GC.PARAMS, GC.params_body("notaries", cb.version() + 1, {
        "peer_chain": int.from_bytes(PEER, "big", signed=True), "threshold": 2}))
    cb.attest(NOTARIES[0], "lock/pv-1/0-1000000", lock)  # its share again: now enough
    assert cb.account(PLANT)["relief"] == 581_000


def test_an_older_period_settled_again_never_lifts_a_newer_flag(cb: Carbon) -> None:
    cb.anchor((COAL_METER, IVL, 1_000_000), (COAL_METER, IVL + 3600, 1_000_000))
    cb.at(START + 7200 + 600)
    cb.send(BUYER, CB.CB_SETTLE, CB.settle_body(COAL_CO.id, 1))
    cb.send(BUYER, CB.CB_SETTLE, CB.settle_body(COAL_CO.id, 0))
    assert cb.store.record(K.T_RESTRICTED, COAL_CO.id)["period"] == 1
    assert cb.refused(PLANT, CB.CB_CCER, CB.ccer_body("pv-1", 0, 1)) == "period_closed"
    assert cb.refused(REGULATOR, CB.CB_ALLOCATE, CB.allocate_body("coal-1", 0, 1)) == \
        "period_closed"
