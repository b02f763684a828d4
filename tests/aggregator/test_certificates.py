"""Green certificates on the chain (docs/PROTOCOL.md section 25): generators registered by the
registry, certificates issued by the chain's own rule from the energy statements anchors
carry, every Wh in at most one certificate, transfer, split and retirement, with a stable
reason for every refusal; on the SQLite store and its in-memory twin, replayed alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.chain.app import green as G
from aggregator.chain.app.state import MemoryState
from aggregator.chain.store import BlockStore
from aggregator.chain.verify import check_derived, store_blocks, verify_blocks
from meterledger import wire as P
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from tests.kit.appchain import AppChain, open_store
from tests.kit.chainkit import T0, FogSide

OPERATOR = P.SigningKey.from_int(0x0BE)
REGISTRY = P.SigningKey.from_int(0x4E6)
PLANT = P.SigningKey.from_int(0x91A)
BUYER = P.SigningKey.from_int(0xB0B)
PV_METER, COAL_METER, HYDRO_METER = b"\x01" * 8, b"\x02" * 8, b"\x03" * 8
IVL = T0 - T0 % 900 + 900


class Registry(AppChain):
    """A chain with the certificates application: the operator, the registry, a plant that
    owns generators, a buyer, and a fog whose log states its generators' energy."""

    def __init__(self, store: BlockStore, tmp_path: Path) -> None:
        super().__init__(store, tmp_path, OPERATOR, lambda: float(T0 + 5))
        for role, key in (("registry", REGISTRY), ("plant", PLANT), ("holder", BUYER)):
            self.register(role, key)

    def enable(self, **values: int) -> None:
        self.send(REGISTRY, GC.PARAMS, GC.params_body("certificates", 1, values))

    def generator(self, gid: str, tech: str, meter: bytes, support: str = "certificates",
                  commissioned: int = T0 - 86_400) -> None:
        self.send(REGISTRY, GC.GENERATOR, GC.generator_body(
            gid, tech, 10_000_000, commissioned, self.fog.key.id, meter, support, PLANT.id))

    def anchor(self, *stated: tuple[Any, ...]) -> None:
        """Anchor statements (meter, ivl, exp Wh[, est[, dur]]) with a checkpoint over them."""
        for s in stated:
            self.fog.state(s[0], s[1], s[2], est=s[3] if len(s) > 3 else 0,
                           dur=s[4] if len(s) > 4 else 900)
        self.fog.checkpoints.seal(T0, force=True)
        self.send(self.fog.key, C.ANCHOR, self.fog.anchor())

    def cert(self, cid: str) -> dict[str, Any]:
        gid, lo, hi = GC.parse_certificate_id(cid)
        c = self.store.record(G.T_CERT, G.cert_key(gid, lo, hi))
        assert c is not None, cid
        return dict(c)

    def owned(self, key: P.SigningKey) -> list[str]:
        return [self.store.record(G.T_CERT, k[8:])["id"]
                for k, _ in self.store.records(G.T_OWNED, key.id)]

    def balance(self, key: P.SigningKey) -> dict[str, int]:
        return dict(self.store.record(G.T_BALANCE, key.id) or {"active": 0, "retired": 0})

@pytest.fixture(params=["memory", "sqlite"])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    r = Registry(open_store(request.param, tmp_path), tmp_path)
    yield r
    r.close()


def test_every_full_mwh_of_measured_export_becomes_one_certificate(reg: Registry) -> None:
    reg.enable()
    reg.generator("pv-1", "pv", PV_METER)
    reg.anchor((PV_METER, IVL, 400_000), (PV_METER, IVL + 900, 400_000))
    assert reg.owned(PLANT) == []  # 0.8 MWh: nothing yet, the rest carries over
    reg.anchor((PV_METER, IVL + 1800, 1_300_000))
    # 2.1 MWh: two certificates, 0.1 MWh pending
    assert reg.owned(PLANT) == ["pv-1/0-1000000", "pv-1/1000000-2000000"]
    first, second = reg.cert("pv-1/0-1000000"), reg.cert("pv-1/1000000-2000000")
    assert (first["first_ivl"], first["last_ivl"]) == (IVL, IVL + 1800)
    assert (second["first_ivl"], second["last_ivl"]) == (IVL + 1800, IVL + 1800)
    assert first["owner"] == PLANT.id and first["state"] == "active"
    acct = reg.store.record(G.T_ACCOUNT, b"pv-1")
    assert (acct["certified"], acct["issued"]) == (2_100_000, 2_000_000)
    assert reg.balance(PLANT) == {"active": 2_000_000, "retired": 0}
    # every Wh certified is in exactly one statement's segment, tiling [0, certified)
    segs = reg.store.records(G.T_SEGMENT, b"pv-1/")
    assert [(v["lo"], int.from_bytes(k[-8:], "big")) for k, v in segs] == \
        [(0, 400_000), (400_000, 800_000), (800_000, 2_100_000)]


def test_a_statement_is_never_repeated_so_energy_is_never_certified_twice(
        reg: Registry) -> None:
    reg.enable()
    reg.generator("pv-1", "pv", PV_METER)
    reg.anchor((PV_METER, IVL, 1_000_000))
    fog = reg.fog
    fog.state(PV_METER, IVL, 1_000_000)  # the same interval again, in a later anchor
    fog.checkpoints.seal(T0, force=True)
    assert reg.refused(fog.key, C.ANCHOR, fog.anchor()) == "anchor_statement_repeated"
    assert reg.owned(PLANT) == ["pv-1/0-1000000"]


def test_only_measured_export_of_eligible_generators_is_certified(reg: Registry) -> None:
    reg.enable()
    reg.generator("coal-1", "coal", COAL_METER)
    reg.generator("hydro-1", "hydro", HYDRO_METER)
    reg.generator("pv-sub", "pv", b"\x04" * 8, support="subsidy")
    reg.generator("pv-new", "pv", b"\x05" * 8, commissioned=IVL + 900)
    reg.generator("pv-1", "pv", PV_METER)
    reg.anchor((COAL_METER, IVL, 5_000_000), (HYDRO_METER, IVL, 5_000_000),
               (b"\x04" * 8, IVL, 5_000_000), (b"\x05" * 8, IVL, 5_000_000),
               (PV_METER, IVL, 5_000_000, 1), (b"\x06" * 8, IVL, 5_000_000))
    assert reg.owned(PLANT) == []
    assert reg.store.record(G.T_ACCOUNT, b"pv-1")["estimated"] == 5_000_000
    assert reg.store.record(G.T_ACCOUNT, b"coal-1")["certified"] == 0


def test_implausible_or_differently_timed_statements_are_counted_not_certified(
        reg: Registry) -> None:
    reg.enable()
    reg.generator("pv-1", "pv", PV_METER)  # 10 MW: at most 2.5 MWh in 15 minutes
    reg.anchor((PV_METER, IVL, 2_500_001), (PV_METER, IVL + 900, 2_500_000))
    # a fog whose interval became an hour: its statement overlaps intervals counted before
    reg.anchor((PV_METER, IVL - IVL % 3600 + 7200, 1_000_000, 0, 3600))
    acct = reg.store.record(G.T_ACCOUNT, b"pv-1")
    assert (acct["certified"], acct["refused"], acct["dur"]) == (2_500_000, 3_500_001, 900)
    assert reg.owned(PLANT) == ["pv-1/0-1000000", "pv-1/1000000-2000000"]


def test_certificate_intervals_follow_the_wh_they_hold(reg: Registry) -> None:
    reg.enable(certificate_wh=500_000)
    reg.generator("pv-1", "pv", PV_METER)
    reg.anchor((PV_METER, IVL, 250_000))
    # a smaller certificate size: the pending Wh lie in the earlier statement alone
    reg.send(REGISTRY, GC.PARAMS, GC.params_body("certificates", 2, {"certificate_wh": 100_000}))
    reg.anchor((PV_METER, IVL + 900, 1_000))
    c = reg.cert("pv-1/0-100000")
    assert (c["first_ivl"], c["last_ivl"]) == (IVL, IVL)
    c = reg.cert("pv-1/100000-200000")
    assert (c["first_ivl"], c["last_ivl"]) == (IVL, IVL)
    # a split on a statement's boundary: the first part ends in the earlier interval
    reg.anchor((PV_METER, IVL + 1800, 200_000))
    reg.send(PLANT, GC.GC_SPLIT, GC.split_body("pv-1/200000-300000", 51_000))
    a, b = reg.cert("pv-1/200000-251000"), reg.cert("pv-1/251000-300000")
    assert (a["first_ivl"], a["last_ivl"], b["first_ivl"], b["last_ivl"]) == \
        (IVL, IVL + 900, IVL + 1800, IVL + 1800)


def test_transfer_split_and_retire(reg: Registry) -> None:
    reg.enable()
    reg.generator("pv-1", "pv", PV_METER)
    reg.anchor((PV_METER, IVL, 600_000), (PV_METER, IVL + 900, 600_000))
    cid = "pv-1/0-1000000"
    assert reg.refused(BUYER, GC.GC_TRANSFER, GC.transfer_body(cid, BUYER.id)) == "not_owner"
    assert reg.refused(PLANT, GC.GC_TRANSFER, GC.transfer_body(cid, b"\x09" * 8)) == \
        "unknown_participant"
    assert reg.refused(PLANT, GC.GC_SPLIT, GC.split_body(cid, 1_000_000)) == \
        "split_out_of_range"
    reg.send(PLANT, GC.GC_SPLIT, GC.split_body(cid, 700_000))
    assert reg.cert(cid)["state"] == "split"
    assert reg.owned(PLANT) == ["pv-1/0-700000", "pv-1/700000-1000000"]
    # the split falls in the second statement: the parts' intervals say so
    assert (reg.cert("pv-1/0-700000")["last_ivl"], reg.cert("pv-1/700000-1000000")["first_ivl"]) \
        == (IVL + 900, IVL + 900)
    assert reg.refused(PLANT, GC.GC_TRANSFER, GC.transfer_body(cid, BUYER.id)) == \
        "certificate_spent"
    reg.send(PLANT, GC.GC_TRANSFER, GC.transfer_body("pv-1/0-700000", BUYER.id))
    assert reg.owned(BUYER) == ["pv-1/0-700000"]
    assert reg.balance(BUYER) == {"active": 700_000, "retired": 0}
    assert reg.balance(PLANT) == {"active": 300_000, "retired": 0}
    reg.send(BUYER, GC.GC_RETIRE, GC.retire_body("pv-1/0-700000", "Acme retail", "quota",
                                                 2027))
    retired = reg.cert("pv-1/0-700000")
    assert retired["state"] == "retired" and retired["retired"]["purpose"] == "quota"
    assert reg.balance(BUYER) == {"active": 0, "retired": 700_000}
    for kind, body in ((GC.GC_TRANSFER, GC.transfer_body("pv-1/0-700000", PLANT.id)),
                       (GC.GC_SPLIT, GC.split_body("pv-1/0-700000", 1)),
                       (GC.GC_RETIRE, GC.retire_body("pv-1/0-700000", "x", "voluntary", 2027))):
        assert reg.refused(BUYER, kind, body) == "certificate_retired"
    assert reg.refused(PLANT, GC.GC_TRANSFER, GC.transfer_body("pv-1/5-6", BUYER.id)) == \
        "unknown_certificate"


def test_the_replay_rebuilds_the_same_certificates_and_roots(reg: Registry) -> None:
    reg.enable(certificate_wh=250_000)
    reg.generator("pv-1", "pv", PV_METER)
    reg.anchor((PV_METER, IVL, 600_000))
    reg.send(PLANT, GC.GC_SPLIT, GC.split_body("pv-1/0-250000", 100_000))
    reg.send(PLANT, GC.GC_TRANSFER, GC.transfer_body("pv-1/250000-500000", BUYER.id))
    assert len(reg.owned(PLANT)) == 2 and reg.owned(BUYER) == ["pv-1/250000-500000"]
    replay = verify_blocks(store_blocks(reg.store), OPERATOR.public_key)
    check_derived(reg.store, replay)
    assert replay.state_root == reg.ledger.head().state_root


def test_refusals_of_params_and_generators(reg: Registry) -> None:
    cid = "pv-1/0-1000000"
    assert reg.refused(PLANT, GC.GC_TRANSFER, GC.transfer_body(cid, BUYER.id)) == \
        "application_disabled"
    assert reg.refused(PLANT, GC.PARAMS, GC.params_body("certificates", 1, {"period_s": 900})) \
        == "not_permitted"
    assert reg.refused(REGISTRY, GC.PARAMS, GC.params_body("certificates", 2,
                                                           {"period_s": 900})) == "params_version"
    assert reg.refused(REGISTRY, GC.PARAMS, GC.params_body("certificates", 1, {"mwh": 1})) == \
        "bad_params"
    assert reg.refused(REGISTRY, GC.PARAMS, GC.params_body("certificates", 1,
                                                           {"certificate_wh": 5})) == "bad_params"
    reg.enable(period_s=86_400)
    reg.generator("pv-1", "pv", PV_METER)
    assert reg.refused(PLANT, GC.GENERATOR, GC.generator_body(
        "pv-2", "pv", 1, 0, reg.fog.key.id, b"\x07" * 8, "certificates", PLANT.id)) == \
        "not_permitted"
    fog, owner = reg.fog.key.id, PLANT.id
    for body, reason in (
            (GC.generator_body("pv-1", "pv", 1, 0, fog, b"\x07" * 8, "certificates", owner),
             "generator_exists"),
            (GC.generator_body("pv-2", "pv", 1, 0, fog, PV_METER, "certificates", owner),
             "meter_taken"),
            (GC.generator_body("pv-2", "pv", 1, 0, PLANT.id, b"\x07" * 8, "certificates",
                               owner), "unknown_fog"),
            (GC.generator_body("pv-2", "pv", 1, 0, fog, b"\x07" * 8, "certificates",
                               b"\x09" * 8), "unknown_participant"),
            (GC.generator_body("PV 2", "pv", 1, 0, fog, b"\x07" * 8, "certificates", owner),
             "bad_fields"),
            (GC.generator_body("pv-2", "solar", 1, 0, fog, b"\x07" * 8, "certificates",
                               owner), "bad_fields"),
            (GC.generator_body("pv-2", "pv", 1, 0, fog, b"\x07" * 8, "both", owner),
             "bad_fields")):
        assert reg.refused(REGISTRY, GC.GENERATOR, body) == reason, body
    bad_ids = ("pv-1", "pv-1/2-1", "pv-1/01-5", "Pv/0-1", "pv-1/0-4611686018427387905")
    for bad in bad_ids:
        assert reg.refused(PLANT, GC.GC_TRANSFER, GC.transfer_body(bad, BUYER.id)) == \
            "bad_fields", bad


def test_the_api_answers_ownership_balances_and_a_certificate_s_statements(
        tmp_path: Path) -> None:
    from meterledger.clients.chain import ChainClient, ChainClientError
    from tests.kit.chainkit import running_chain

    with running_chain(tmp_path) as chain:
        registry, plant, buyer = (chain.register(r) for r in ("registry", "plant", "holder"))
        fog = FogSide(tmp_path, chain.register("fog"))
        client = ChainClient(chain.url)

        def send(key: P.SigningKey, kind: str, body: dict[int, Any]) -> None:
            status, doc = chain.post(chain.sign(key, kind, body))
            assert status == 200, doc

        send(registry, GC.PARAMS, GC.params_body("certificates", 1, {"period_s": 86_400}))
        send(registry, GC.GENERATOR, GC.generator_body(
            "wind-7", "wind", 2_000_000, T0 - 86_400, fog.key.id, PV_METER, "certificates",
            plant.id))
        statements = [fog.state(PV_METER, IVL + 900 * i, 450_000) for i in range(5)]
        fog.checkpoints.seal(T0, force=True)
        send(fog.key, C.ANCHOR, fog.anchor())
        send(plant, GC.GC_TRANSFER, GC.transfer_body("wind-7/1000000-2000000", buyer.id))

        assert client.params()["certificates"]["values"] == {"period_s": 86_400}
        gens = client.generators()["generators"]
        assert [(g["id"], g["tech"], g["account"]["certified"]) for g in gens] == \
            [("wind-7", "wind", 2_250_000)]
        mine = client.certificates(owner_hex=plant.id.hex())["certificates"]
        assert [c["id"] for c in mine] == ["wind-7/0-1000000"]
        assert [c["id"] for c in client.certificates(generator="wind-7")["certificates"]] == \
            ["wind-7/0-1000000", "wind-7/1000000-2000000"]
        page = client.certificates(generator="wind-7", limit=1)
        assert [c["id"] for c in page["certificates"]] == ["wind-7/0-1000000"]
        assert [c["id"] for c in client.certificates(generator="wind-7", after=page["next"])[
            "certificates"]] == ["wind-7/1000000-2000000"]
        assert client.balance(buyer.id.hex())["active"] == 1_000_000
        one = client.certificate("wind-7/1000000-2000000")
        # Wh 1,000,000-1,999,999 lie in the 3rd (900,000-1,350,000) to 5th statements
        assert [s["digest"] for s in one["statements"]] == \
            [P.digest(s).hex() for s in statements[2:5]]
        assert one["certificate"]["owner"] == buyer.id.hex() and not one["truncated"]
        assert one["certificate"]["wh"] == 1_000_000
        for bad_path in ("/v1/certificates/wind-7%2F5-1", "/v1/certificates?owner=xyz",
                         "/v1/balances/12", "/v1/certificates?limit=0"):
            status, doc = chain.get(bad_path)
            assert status == 400 and doc["error"] == "bad_request", (bad_path, doc)
        with pytest.raises(ChainClientError, match="404"):
            client.certificate("wind-7/5-6")
        fog.close()


@given(stored=st.dictionaries(st.binary(min_size=1, max_size=3), st.integers(0, 9),
                              max_size=12),
       mine=st.dictionaries(st.binary(min_size=1, max_size=3),
                            st.one_of(st.none(), st.integers(10, 19)), max_size=12),
       prefix=st.binary(max_size=1))
def test_walk_reads_what_scan_reads_lazily(stored: dict[bytes, int],
                                           mine: dict[bytes, int | None],
                                           prefix: bytes) -> None:
    """Staged.walk (a green settlement's lazy read of a seller's certificates) yields what
    Staged.scan lists: stored records under this transaction's own writes and deletions,
    in key order."""
    state = MemoryState()
    for k, v in stored.items():
        state.put_record("t", k, v)
        state.put_record("other", k, v)
    staged = G.Staged(state)
    for k, w in mine.items():
        staged.put("t", k, w)
    assert list(staged.walk("t", prefix)) == staged.scan("t", prefix)
    walk = staged.walk("t", prefix)
    if staged.scan("t", prefix):
        assert next(walk) == staged.scan("t", prefix)[0]
