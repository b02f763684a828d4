"""The notaries between a GC chain and a carbon chain, end to end (docs/PROTOCOL.md section
26): two real chain services over HTTP, three notaries (the relay of aggregator.notary, one
of them as its own process), certificates issued on one chain held against a CCER claim on
the other exactly once, and conversions that are credited and burnt, or expired and
released, never both and never neither, through notaries killed and resumed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aggregator.notary.relay import Notary, Side, periods_of
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.wire import carbon as CB
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from tests.kit.chainkit import T0, Chain, FogSide, running_chain

PV_METER = b"\x01" * 8
START = T0 - T0 % 3600 + 3600
IVL = START + 900
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Pair:
    gc: Chain
    carbon: Chain
    fog_gc: FogSide
    fog_cb: FogSide
    registry: P.SigningKey
    regulator: P.SigningKey
    plant: P.SigningKey
    notaries: list[P.SigningKey]
    now: list[int]
    tmp: Path

    def send(self, chain: Chain, key: P.SigningKey, kind: str, body: dict[int, Any]) -> None:
        status, doc = chain.post(chain.sign(key, kind, body))
        assert status == 200, doc

    def refused(self, chain: Chain, key: P.SigningKey, kind: str, body: dict[int, Any]) -> str:
        status, doc = chain.post(chain.sign(key, kind, body, check=False))
        assert status != 200, doc
        return str(doc["error"])

    def enable_carbon(self) -> None:
        self.send(self.carbon, self.regulator, GC.PARAMS, GC.params_body("carbon", 1, {
            "start": START, "period_s": 3600, "grace_s": 600}))

    def notary(self, i: int) -> Notary:
        return Notary(self.notaries[i], Side.of("gc", ChainClient(self.gc.url)),
                      Side.of("carbon", ChainClient(self.carbon.url)), self.tmp / f"n{i}.db",
                      lambda: float(self.now[0]))

    def cert(self, cid: str) -> dict[str, Any]:
        out: dict[str, Any] = ChainClient(self.gc.url).certificate(cid)["certificate"]
        return out

    def account(self) -> dict[str, Any]:
        status, doc = self.carbon.get(f"/v1/carbon/accounts/{self.plant.id.hex()}")
        assert status == 200, doc
        return dict(doc["periods"][0]) if doc["periods"] else {}


@pytest.fixture
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """Both chains set up; `carbon_enabled` False (indirect parameter) leaves the carbon
    application off until the test enables it."""
    carbon_enabled = getattr(request, "param", True)
    now = [START - 60]
    clock = lambda: float(now[0])  # noqa: E731
    with running_chain(tmp_path / "gc", clock) as gc, \
            running_chain(tmp_path / "carbon", clock) as carbon:
        registry, regulator, plant = (P.SigningKey.generate() for _ in range(3))
        notaries = [P.SigningKey.generate() for _ in range(3)]
        fogs = []
        for chain in (gc, carbon):
            for role, key in (("registry", registry), ("regulator", regulator),
                              ("plant", plant), *(("notary", n) for n in notaries)):
                chain.register(role, key)
            fogs.append(FogSide(tmp_path, chain.register("fog"), name=chain.chain_id.hex()))
        p = Pair(gc, carbon, fogs[0], fogs[1], registry, regulator, plant, notaries, now,
                 tmp_path)
        peer = {gc.chain_id: carbon.chain_id, carbon.chain_id: gc.chain_id}
        for chain in (gc, carbon):
            p.send(chain, chain.key, GC.PARAMS, GC.params_body("notaries", 1, {
                "peer_chain": int.from_bytes(peer[chain.chain_id], "big", signed=True)}))
        p.send(gc, registry, GC.PARAMS, GC.params_body("certificates", 1, {"lock_s": 60}))
        if carbon_enabled:
            p.enable_carbon()
        for chain, fog, support in ((gc, fogs[0], "certificates"), (carbon, fogs[1], "subsidy")):
            p.send(chain, registry, GC.GENERATOR, GC.generator_body(
                "pv-1", "pv", 20_000_000, T0 - 86_400, fog.key.id, PV_METER, support, plant.id))
        # the same metered 2.5 MWh on both chains: two certificates on one, verified on both
        for chain, fog in ((gc, fogs[0]), (carbon, fogs[1])):
            fog.state(PV_METER, IVL, 1_500_000)
            fog.state(PV_METER, IVL + 900, 1_000_000)
            fog.checkpoints.seal(T0, force=True)
            p.send(chain, fog.key, C.ANCHOR, fog.anchor())
        try:
            yield p
        finally:
            for fog in fogs:
                fog.close()


def test_a_certificate_s_energy_is_deducted_from_a_ccer_claim_once(pair: Pair) -> None:
    p = pair
    p.send(p.carbon, p.plant, CB.CB_CCER, CB.ccer_body("pv-1", 0, 3_000_000))
    assert p.account()["ccer"] == 2_500_000 * 581_000 // 10**6  # all it verified
    first = p.notary(0)
    assert first.step() == 2  # its share of both issuances: below the threshold
    assert p.account()["ccer"] == 2_500_000 * 581_000 // 10**6
    # the second notary runs as its own process, one pass
    subprocess.run([sys.executable, "-m", "aggregator.notary", "init", "--data-dir",
                    str(p.tmp / "n2")], check=True, capture_output=True)
    (p.tmp / "n2" / "notary.key").write_text(p.notaries[1].private_bytes().hex())
    run = subprocess.run([sys.executable, "-m", "aggregator.notary", "run", "--data-dir",
                          str(p.tmp / "n2"), "--gc", p.gc.url, "--carbon", p.carbon.url,
                          "--once"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert p.account()["ccer"] == 500_000 * 581_000 // 10**6  # 2 MWh certified, deducted
    status, doc = p.carbon.get("/v1/carbon/generators/pv-1")
    assert status == 200 and doc["certified"] == [{"period": 0, "wh": 2_000_000}]
    assert [(c["period"], c["claimed"], c["wh"]) for c in doc["ccer"]] == \
        [(0, 3_000_000, 500_000)]
    # every notary again, and the third: the records are in effect, nothing moves twice
    assert first.step() == 0 and p.notary(2).step() == 0
    assert p.account()["ccer"] == 500_000 * 581_000 // 10**6
    status, rec = p.carbon.get("/v1/notary/records/issue/pv-1/0-1000000")
    assert rec["applied"] and len(rec["signers"]) == 2


def test_a_conversion_survives_notaries_killed_mid_way_without_loss_or_double_claim(
        pair: Pair) -> None:
    p = pair
    for i in (0, 1):
        p.notary(i).step()  # the issuances, relayed
    p.send(p.gc, p.plant, CB.GC_LOCK, CB.lock_body("pv-1/0-1000000", 0))
    assert p.cert("pv-1/0-1000000")["state"] == "locked"
    assert p.refused(p.gc, p.plant, GC.GC_TRANSFER, GC.transfer_body(
        "pv-1/0-1000000", p.registry.id)) == "certificate_locked"
    n0 = p.notary(0)
    assert n0.step() == 1  # its share of the lock on the carbon chain
    # killed before it wrote its cursor: it will send that share again
    n0.db.execute("UPDATE cursor SET next = 0")
    n0.close()
    n1 = p.notary(1)
    n1.step()  # the lock takes effect on the carbon chain, its outcome goes back: 1 share
    assert p.account()["relief"] == 581_000
    assert p.cert("pv-1/0-1000000")["state"] == "locked"
    n1.close()  # killed too
    n0 = p.notary(0)  # resumed from its (stale) cursor
    n0.step()
    assert p.cert("pv-1/0-1000000")["state"] == "converted"
    assert p.account()["relief"] == 581_000  # credited once
    p.notary(2).step()
    p.notary(1).step()
    assert p.account()["relief"] == 581_000
    assert ChainClient(p.gc.url).balance(p.plant.id.hex())["converted"] == 1_000_000
    lock_tx = p.cert("pv-1/0-1000000")["lock"]["tx"]
    status, rec = p.carbon.get(f"/v1/notary/records/lock/pv-1/0-1000000?tx={lock_tx.upper()}")
    assert status == 200 and rec["applied"] and len(rec["signers"]) == 2
    status, doc = p.carbon.get("/v1/notary/records/lock/pv-1/0-1000000")  # which lock?
    assert status == 400 and "source transaction" in doc["detail"]
    assert p.refused(p.gc, p.plant, GC.GC_TRANSFER, GC.transfer_body(
        "pv-1/0-1000000", p.registry.id)) == "certificate_converted"


def test_a_lock_past_its_deadline_expires_on_the_carbon_chain_and_is_released(
        pair: Pair) -> None:
    p = pair
    p.send(p.gc, p.plant, CB.GC_LOCK, CB.lock_body("pv-1/1000000-2000000", 0))
    deadline = p.cert("pv-1/1000000-2000000")["lock"]["deadline"]
    p.now[0] = deadline + 1  # the notaries were all down until after the deadline
    p.carbon.register("holder")  # a block at the new time: the carbon chain's clock
    for i in (0, 1, 0, 1):
        p.notary(i).step()
    _, conv = p.carbon.get("/v1/carbon/conversions/pv-1/1000000-2000000")
    assert conv["outcome"] == "expired" and conv["grams"] == 0
    assert p.account().get("relief", 0) == 0
    cert = p.cert("pv-1/1000000-2000000")
    assert cert["state"] == "active" and cert["lock"]["outcome"] == "expired"
    # released: it moves again, and may be locked again (a new lock, a new record)
    p.send(p.gc, p.plant, CB.GC_LOCK, CB.lock_body("pv-1/1000000-2000000", 0))
    p.now[0] = START + 120
    p.gc.register("holder")
    assert p.cert("pv-1/1000000-2000000")["state"] == "locked"


def test_periods_of_splits_a_certificate_by_the_carbon_chain_s_periods() -> None:
    statements = [{"lo": 0, "hi": 600, "ivl": 3600}, {"lo": 600, "hi": 1500, "ivl": 3601},
                  {"lo": 1500, "hi": 2000, "ivl": 7300}]
    carbon = {"start": 0, "period_s": 3600}
    assert periods_of(statements, 100, 1800, carbon) == [[0, 500], [1, 900], [2, 300]]
    assert periods_of(statements, 0, 2000, {"start": 4000, "period_s": 3600}) == [[0, 500]]


def test_the_notary_command_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "aggregator.notary", "run", "--data-dir",
                          str(tmp_path), "--gc", "http://127.0.0.1:9", "--carbon",
                          "http://127.0.0.1:9"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "no notary key" in run.stderr


@pytest.mark.parametrize("pair", [False], indirect=True)
def test_an_event_the_peer_cannot_take_yet_waits_without_holding_up_the_rest(
        pair: Pair) -> None:
    p = pair
    n0 = p.notary(0)
    # the carbon chain has no carbon application yet: both issuances wait aside
    assert n0.step() == 0
    assert n0.cursor(n0.gc) == 2
    assert n0.db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 2
    # a later event still goes through: a lock, whose record is shared (1 of 2) at once
    p.send(p.gc, p.plant, CB.GC_LOCK, CB.lock_body("pv-1/0-1000000", 0))
    assert n0.step() == 1 and n0.cursor(n0.gc) == 3
    p.enable_carbon()
    assert n0.step() == 2  # the kept issuances, shared now
    assert n0.db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
    n0.close()
    n1 = p.notary(1)
    n1.step()
    n1.step()
    _, rec = p.carbon.get("/v1/notary/records/issue/pv-1/1000000-2000000")
    assert rec["applied"] and p.account()["relief"] == 581_000
    assert p.cert("pv-1/0-1000000")["state"] == "locked"  # the outcome: 1 share of 2
