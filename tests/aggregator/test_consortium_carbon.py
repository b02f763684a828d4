"""The notaries between a GC chain and a carbon chain, each a real CometBFT network on
loopback (marker `consortium`; docs/PROTOCOL.md sections 23, 25 and 26): what
tests/aggregator/test_notaries.py shows of two embedded chains, with every block ordered by
CometBFT. A fog anchors a PV generator's statements to both chains (two certificates on the
GC chain), three notaries (the relay of aggregator.notary, over each validator's HTTP API)
hold them against a CCER claim exactly once and carry a conversion across (lock, credit,
burn) through notaries killed mid-way, or let a lock expire and be released; the rules' clock
is CometBFT's header time (the lock's deadline, the conversion's time), and verify-chain
replays both chains."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aggregator.__main__ import main
from aggregator.chain.backends.cometbft.app import BlockRecord
from aggregator.chain.backends.cometbft.network import PARTIES
from aggregator.notary.relay import Notary, Side
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.wire import carbon as CB
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from tests.kit.chainkit import FogSide, http
from tests.kit.consortium import T0, LocalNet, local_net, post
from tests.kit.fogkit import wait

pytestmark = [pytest.mark.consortium, pytest.mark.timeout(600)]

PV_METER = b"\x01" * 8
START = T0 - T0 % 3600 + 3600
IVL = START + 900
# the rules' clock is CometBFT's block time, the wall clock's: a compliance period as long
# as the parameters allow keeps period 0 open (its conversions credited) whenever this runs
PERIOD_S = 100 * 366 * 86_400
VALIDATOR = PARTIES[0][0]  # each network's one validator
CCER_G = 581_000  # the default ccer_factor and convert_per_mwh: grams per MWh
SLOW = 180.0  # a condition's timeout: generous, on a loaded 2-core machine


@dataclass
class Net:
    """One chain: a one-validator CometBFT network, its fog."""

    name: str
    t: LocalNet
    fog: FogSide

    @property
    def url(self) -> str:
        return self.t.api(VALIDATOR)

    @property
    def chain_id(self) -> bytes:
        return self.t.key.id

    def client(self) -> ChainClient:
        return ChainClient(self.url, timeout_s=SLOW)

    def register(self, role: str, key: P.SigningKey) -> None:
        """Registered by the dispatch key (the kit counts its nonces)."""
        status, doc = post(self.url, self.t.register_tx(role, key))
        assert status == 200, doc

    def dispatch(self, kind: str, body: dict[int, Any]) -> None:
        """A transaction of the dispatch key, its next nonce as the kit counts them."""
        self.t.nonce += 1
        status, doc = post(self.url, P.sign1(self.t.key, C.tx(
            self.t.key.id, self.t.nonce, kind, body, T0, self.chain_id)))
        assert status == 200, doc

    def sign(self, key: P.SigningKey, kind: str, body: dict[int, Any],
             check: bool = True) -> bytes:
        """With the sender's next nonce as the chain's committed state knows it."""
        nonce = next(int(p["nonce"]) for p in self.client().participants()
                     if p["id"] == key.id_hex) + 1
        return P.sign1(key, C.tx(key.id, nonce, kind, body, T0, self.chain_id), check=check)

    def send(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> dict[str, Any]:
        status, doc = post(self.url, self.sign(key, kind, body))
        assert status == 200, doc
        return doc

    def refused(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> str:
        status, doc = post(self.url, self.sign(key, kind, body, check=False))
        assert status != 200, doc
        return str(doc["error"])

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return http(self.url + path)

    def head_time(self) -> int:
        """The rules' clock: the newest committed block's time."""
        return BlockRecord.decode(bytes.fromhex(self.client().head()["header"])).time_s

    def block_time(self, height: int) -> int:
        """Block `height`'s time as the app stored it (CometBFT's header time, seconds)."""
        header = bytes.fromhex(self.client().block(height)["header"])
        return BlockRecord.decode(header).time_s


@dataclass
class Pair:
    gc: Net
    carbon: Net
    registry: P.SigningKey
    regulator: P.SigningKey
    plant: P.SigningKey
    notaries: list[P.SigningKey]
    tmp: Path

    def notary(self, i: int) -> Notary:
        return Notary(self.notaries[i], Side.of("gc", self.gc.client()),
                      Side.of("carbon", self.carbon.client()), self.tmp / f"n{i}.db",
                      lambda: float(T0))

    def cert(self, cid: str) -> dict[str, Any]:
        out: dict[str, Any] = self.gc.client().certificate(cid)["certificate"]
        return out

    def account(self) -> dict[str, Any]:
        status, doc = self.carbon.get(f"/v1/carbon/accounts/{self.plant.id.hex()}")
        assert status == 200, doc
        return dict(doc["periods"][0]) if doc["periods"] else {}


def relay_until(n: Notary, done: Callable[[], bool], what: str) -> int:
    """Step the notary until `done()`: a step pauses where a chain cannot answer yet (a
    validator's API serves a transaction once CometBFT has indexed its block); the shares it
    posted."""
    sent = [0]

    def step() -> bool:
        sent[0] += n.step()
        return done()

    wait(step, timeout=SLOW, every=0.2, what=what)
    return sent[0]


def at(n: Notary, gc: int, carbon: int) -> Callable[[], bool]:
    """Whether the notary's cursors passed `gc` events of the GC chain's outbox and `carbon`
    of the carbon chain's."""
    return lambda: n.cursor(n.gc) >= gc and n.cursor(n.carbon) >= carbon


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with local_net(1) as gc_net, local_net(1) as cb_net:
        for t in (gc_net, cb_net):
            t.start()
        for t in (gc_net, cb_net):
            t.wait_api()
        assert gc_net.key.id != cb_net.key.id  # two chains, two chain ids
        for t in (gc_net, cb_net):
            assert ChainClient(t.api(VALIDATOR)).head()["engine"] == "cometbft"
        registry, regulator, plant = (P.SigningKey.generate() for _ in range(3))
        notaries = [P.SigningKey.generate() for _ in range(3)]
        nets = []
        for name, t in (("gc", gc_net), ("carbon", cb_net)):
            net = Net(name, t, FogSide(tmp_path, name=name))
            nets.append(net)
            for role, key in (("registry", registry), ("regulator", regulator),
                              ("plant", plant), *(("notary", n) for n in notaries),
                              ("fog", net.fog.key)):
                net.register(role, key)
        gc, carbon = nets
        p = Pair(gc, carbon, registry, regulator, plant, notaries, tmp_path)
        try:
            for net, peer in ((gc, carbon), (carbon, gc)):
                net.dispatch(GC.PARAMS, GC.params_body("notaries", 1, {
                    "peer_chain": int.from_bytes(peer.chain_id, "big", signed=True)}))
            # a lock waits a day for the carbon chain's credit (the default, said here)
            gc.send(registry, GC.PARAMS, GC.params_body("certificates", 1, {"lock_s": 86_400}))
            carbon.send(regulator, GC.PARAMS, GC.params_body("carbon", 1, {
                "start": START, "period_s": PERIOD_S, "grace_s": 600}))
            for net, support in ((gc, "certificates"), (carbon, "subsidy")):
                net.send(registry, GC.GENERATOR, GC.generator_body(
                    "pv-1", "pv", 20_000_000, T0 - 86_400, net.fog.key.id, PV_METER, support,
                    plant.id))
            # the same metered 2.5 MWh on both chains: two certificates on one, verified on both
            for net in (gc, carbon):
                net.fog.state(PV_METER, IVL, 1_500_000)
                net.fog.state(PV_METER, IVL + 900, 1_000_000)
                net.fog.checkpoints.seal(T0, force=True)
                net.send(net.fog.key, C.ANCHOR, net.fog.anchor())
            yield p
        finally:
            for net in nets:
                net.fog.close()


def verify_chain(net: Net, capsys: pytest.CaptureFixture[str]) -> str:
    """verify-chain on the stopped validator's data dir: replayed from the network's genesis,
    every state root and the derived state (the applications' records too) checked."""
    capsys.readouterr()
    code = main(["verify-chain", "--data-dir", str(net.t.net.validator(VALIDATOR).app_dir(
        net.t.net.root))])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith(f"consortium chain {net.chain_id.hex()} ({net.t.net.chain_name}) "
                          "ok: "), out
    assert "(trusted key)" in out and "every state root and the derived state checked" in out
    return out


def test_certificates_cross_consortium_chains_once_deducted_and_converted_once(
        pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    p = pair
    gc, carbon = p.gc, p.carbon
    full, rest = 2_500_000 * CCER_G // 10**6, 500_000 * CCER_G // 10**6
    carbon.send(p.plant, CB.CB_CCER, CB.ccer_body("pv-1", 0, 3_000_000))
    assert p.account()["ccer"] == full  # all it verified
    # the first notary's shares of both issuances: below the threshold, nothing moves
    first = p.notary(0)
    assert relay_until(first, at(first, 2, 0), "the first notary past both issuances") == 2
    assert p.account()["ccer"] == full
    second = p.notary(1)
    assert relay_until(second, at(second, 2, 0), "the second notary past both issuances") == 2
    assert p.account()["ccer"] == rest  # 2 MWh certified, deducted
    status, doc = carbon.get("/v1/carbon/generators/pv-1")
    assert status == 200 and doc["certified"] == [{"period": 0, "wh": 2_000_000}]
    assert [(c["period"], c["claimed"], c["wh"]) for c in doc["ccer"]] == \
        [(0, 3_000_000, 500_000)]
    # every notary again, and the third: the records are in effect, nothing moves twice
    third = p.notary(2)
    assert first.step() == 0 and second.step() == 0
    assert relay_until(third, at(third, 2, 0), "the third notary past both issuances") == 0
    assert p.account()["ccer"] == rest
    for cid in ("pv-1/0-1000000", "pv-1/1000000-2000000"):
        status, rec = carbon.get(f"/v1/notary/records/issue/{cid}")
        assert status == 200 and rec["applied"] and len(rec["signers"]) == 2, rec
    third.close()

    # a conversion, through notaries killed mid-way
    cid = "pv-1/0-1000000"
    lock = gc.send(p.plant, CB.GC_LOCK, CB.lock_body(cid, 0))
    cert = p.cert(cid)
    assert cert["state"] == "locked"
    # the rules' clock: the time of the block before the lock's (CometBFT's header time)
    deadline = cert["lock"]["deadline"]
    assert deadline == gc.block_time(lock["height"] - 1) + 86_400
    assert gc.refused(p.plant, GC.GC_TRANSFER, GC.transfer_body(
        cid, p.registry.id)) == "certificate_locked"
    assert relay_until(first, at(first, 3, 0), "the first notary past the lock") == 1
    assert carbon.get(f"/v1/carbon/conversions/{cid}")[0] == 404  # 1 share of 2
    # killed before it wrote its cursors: it will send its shares again
    first.db.execute("UPDATE cursor SET next = 0")
    first.close()
    # the lock takes effect on the carbon chain and its outcome goes back: 1 share each way
    assert relay_until(second, at(second, 3, 1), "the second notary past the outcome") == 2
    second.close()  # killed too
    assert p.account()["relief"] == CCER_G
    status, conv = carbon.get(f"/v1/carbon/conversions/{cid}")
    assert status == 200 and (conv["outcome"], conv["grams"]) == ("credited", CCER_G), conv
    # decided at the carbon chain's time: the block before the one that applied the record
    outcome = outbox_event(carbon, CB.subject(CB.OUTCOME, cid))
    assert conv["at"] == carbon.block_time(outcome["height"] - 1) <= deadline
    assert p.cert(cid)["state"] == "locked"  # 1 share of the outcome, of 2
    first = p.notary(0)  # resumed from its (stale) cursors: only the outcome's share counts
    assert relay_until(first, lambda: at(first, 3, 1)() and p.cert(cid)["state"] == "converted",
                       "the certificate burnt on the GC chain") == 1
    first.close()
    assert p.account()["relief"] == CCER_G  # credited once
    for i in (2, 1):
        n = p.notary(i)
        assert relay_until(n, at(n, 3, 1), f"notary {i} past every event") == 0
        n.close()
    assert p.account()["relief"] == CCER_G
    assert gc.client().balance(p.plant.id.hex())["converted"] == 1_000_000
    assert gc.refused(p.plant, GC.GC_TRANSFER, GC.transfer_body(
        cid, p.registry.id)) == "certificate_converted"
    status, rec = gc.get(f"/v1/notary/records/outcome/{cid}?tx={outcome['tx']}")
    assert status == 200 and rec["applied"] and len(rec["signers"]) == 2, rec
    status, rec = carbon.get(f"/v1/notary/records/lock/{cid}?tx={lock['digest']}")
    assert status == 200 and rec["applied"] and len(rec["signers"]) == 2, rec

    # both chains replay from their genesis, stopped: every root and record checked
    for net in (gc, carbon):
        net.t.stop()
        verify_chain(net, capsys)


def test_a_lock_past_its_deadline_by_the_carbon_chain_s_block_time_expires_and_is_released(
        pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    p = pair
    gc, carbon = p.gc, p.carbon
    gc.send(p.registry, GC.PARAMS, GC.params_body("certificates", 2, {"lock_s": 60}))
    cid = "pv-1/1000000-2000000"
    lock = gc.send(p.plant, CB.GC_LOCK, CB.lock_body(cid, 0))
    deadline = p.cert(cid)["lock"]["deadline"]
    assert deadline == gc.block_time(lock["height"] - 1) + 60
    # the notaries are all down until the carbon chain's clock, its newest block's time, is
    # past the deadline. CometBFT's block time is the median time of the previous block's
    # commit votes: the first block after an idle spell carries the time before it, the next
    # one (the empty block CometBFT makes for the new app hash) the time after. Blocks are
    # asked for only once this machine's clock, the validator's, is past the deadline
    holders: list[P.SigningKey] = []

    def poke() -> None:
        if time.time() > deadline:
            holders.append(P.SigningKey.generate())
            carbon.register("holder", holders[-1])

    wait(lambda: carbon.head_time() > deadline, timeout=SLOW, tick=poke, every=1.0,
         what="the carbon chain's block time past the lock's deadline")
    n0, n1 = p.notary(0), p.notary(1)
    relay_until(n0, at(n0, 3, 0), "the first notary past the lock")
    relay_until(n1, at(n1, 3, 1), "the second notary past the outcome")
    assert relay_until(n0, at(n0, 3, 1), "the first notary past the outcome") == 1
    n0.close()
    n1.close()
    status, conv = carbon.get(f"/v1/carbon/conversions/{cid}")
    assert status == 200 and (conv["outcome"], conv["grams"]) == ("expired", 0), conv
    outcome = outbox_event(carbon, CB.subject(CB.OUTCOME, cid))
    assert conv["at"] == carbon.block_time(outcome["height"] - 1) > deadline
    assert p.account().get("relief", 0) == 0
    cert = p.cert(cid)
    assert cert["state"] == "active" and cert["lock"]["outcome"] == "expired"
    # released: it moves again, and may be locked again (a new lock, a new record)
    gc.send(p.plant, CB.GC_LOCK, CB.lock_body(cid, 0))
    assert p.cert(cid)["state"] == "locked"
    for net in (gc, carbon):
        net.t.stop()
        verify_chain(net, capsys)


def outbox_event(net: Net, subject: str) -> dict[str, Any]:
    """The one event of `subject` in the chain's outbox (its source transaction, height)."""
    events = net.client().get("/v1/notary/outbox")["events"]
    found = [e for e in events if e["subject"] == subject]
    assert len(found) == 1, events
    return dict(found[0])
