"""Trade bundles (tools/audit_trade.py): on a real aggregator and a real fog node, a PV
prosumer sells to two neighbours in one continuous cycle, the fog states the prosumer's
measured export (it consented: `market_meters`), the cycle settles, and the second contract's
bundle, fetched through both HTTP APIs, proves offline the orders, the match, the three
signatures, the delivery back to the meter's signed readings and the settlement, with the
price and the payments recomputed; every break is rejected naming its check, and input that
is no trade bundle is one line and exit 2."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fog_node.api import FogAPI
from fog_node.chainlink.link import ChainLink
from fog_node.config import FogConfig
from fog_node.node import FogNode, init_data_dir
from meterledger import wire as P
from meterledger.cli import main as meterledger_main
from meterledger.clients.certificate_bundle import embedded_tx
from meterledger.clients.chain import ChainClient, ChainClientError
from meterledger.clients.fog import FogClient
from meterledger.clients.trade_bundle import build_trade_bundle
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import market as MK
from tests.fog_node.test_anchor import Clock
from tests.kit.bundles import assert_input_error, assert_rejected, flip, reseal
from tests.kit.chainkit import Chain, running_chain
from tools import audit
from tools import audit_trade as AT

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000  # a multiple of 900
CYCLE = T0 + 3600
GRID, REGULATOR = P.SigningKey.from_int(0x6E1D), P.SigningKey.from_int(0x7E6)
SELLER, BUYER, FIRST = (P.SigningKey.from_int(0x5100 + i) for i in range(3))
PV_METER, HOME = P.SigningKey.from_int(0x6F0), P.SigningKey.from_int(0x6F1)
NETWORK = [("root", "", 10**8, 0), ("f-east", "root", 10**8, 0)]
PV = {1: "pv", 2: "clean", 3: 5_000, 4: 400, 5: 2, 6: 10_000}


class World:
    """The chain, the fog and the parties, the chain's time moved by the test's clock: a
    transaction's rules read the block before its own."""

    def __init__(self, chain: Chain, node: FogNode, clock: Clock) -> None:
        self.chain, self.node, self.clock = chain, node, clock
        self.seq = {PV_METER: 0, HOME: 0}
        self.access = 0  # the access parameters' version: a block at a time of our choice
        self.prev = {PV_METER: P.ZERO32, HOME: P.ZERO32}

    def send(self, key: P.SigningKey, kind: str, body: dict[int, Any],
             t: int | None = None) -> dict[str, Any]:
        if t is not None:
            self.clock.t = t
        status, doc = self.chain.post(self.chain.sign(key, kind, body))
        assert status == 200, doc
        return doc

    def at(self, t: int) -> None:
        """A block at t (the access parameters again): the next transaction's rules read t."""
        self.access += 1
        self.send(REGULATOR, GC.PARAMS, GC.params_body("access", self.access, {}), t)

    def read(self, t: int, exp: int, imp: int) -> None:
        raws = []
        for key, (i, e) in ((PV_METER, (0, exp)), (HOME, (imp, 0))):
            self.seq[key] += 1
            raws.append(P.sign1(key, P.reading(key.id, self.seq[key], t, 900, i, e, 0,
                                               self.prev[key])))
            self.prev[key] = P.digest(raws[-1])
        outcomes, _ = self.node.ingest.process(raws)
        assert all(o.status == "logged" for o in outcomes), outcomes


ORDERS = ((SELLER, MK.SELL, 600, 300, 0), (FIRST, MK.BUY, 300, 520, 0),
          (BUYER, MK.BUY, 300, 501, 5))
SALT = b"\x5a" * 32


def _certified(w: World, link: ChainLink) -> None:
    """The seller's PV meter is also generator pv-s, the seller's: 1,000 Wh exported in
    the interval ending T0 - 900 become its certificate pv-s/0-1000."""
    registry = w.chain.register("registry")
    w.send(registry, GC.PARAMS, GC.params_body("certificates", 1, {"certificate_wh": 1_000}))
    w.send(registry, GC.GENERATOR, GC.generator_body(
        "pv-s", "pv", 10_000, T0 - 86_400, w.node.key.id, PV_METER.id, "certificates",
        SELLER.id))
    w.read(T0 - 1800, 0, 0)
    w.read(T0 - 900, 1_000, 0)
    _close(w, T0 - 900)
    link.step()


def _close(w: World, ivl: int) -> None:
    w.clock.t = ivl + 60
    now = int(w.clock.t)
    closed = w.node.cooker.close(ivl, now, lambda: w.node.checkpoints.seal(now, force=True))
    assert len(closed.statements) == 1  # the consenting prosumer's, not the household's
    w.node.checkpoints.seal(now, ivl=ivl, agg=closed.agg)


def _sealed(w: World) -> None:
    """The same orders, green (with the seller's certificates), committed before the gate,
    revealed in the window, cleared after."""
    for i, (key, side, wh, price, fee_max) in enumerate(ORDERS):
        digest = MK.commit_digest(key.id, CYCLE, side, wh, price, fee_max, SALT, 1)
        w.send(key, MK.MK_COMMIT, MK.commit_body(CYCLE, digest), T0 + 60 * (i + 1))
    w.at(CYCLE - 300)
    for key, side, wh, price, fee_max in ORDERS:
        w.send(key, MK.MK_REVEAL, MK.reveal_body(CYCLE, side, wh, price, fee_max, SALT,
                                                 green=True))
    w.at(CYCLE - 180)
    w.send(GRID, MK.MK_CLEAR, MK.cycle_body(CYCLE))


def _trade(w: World, link: ChainLink, mode: int) -> None:
    """Two contracts of one cycle with the same seller: 300 Wh to FIRST (contract 0), then
    300 Wh to BUYER (contract 1); the meter exports 450 Wh, so contract 1 gets 150. The
    sealed call's are green."""
    if mode == MK.SEALED:
        _certified(w, link)
    w.at(T0)
    w.send(GRID, GC.PARAMS, GC.params_body("market", 1, {"mode": mode}))
    w.send(GRID, MK.MK_NETWORK, MK.network_body(1, NETWORK))
    fog = w.node.key.id
    for key, meter in ((SELLER, PV_METER.id), (BUYER, HOME.id), (FIRST, b"\x77" * 8)):
        w.send(GRID, MK.MK_ENROLL, MK.enroll_body(key.id, fog, meter, "f-east"))
    w.send(SELLER, MK.MK_ACCESS, PV)
    if mode == MK.SEALED:
        _sealed(w)
    else:
        for i, (key, side, wh, price, fee_max) in enumerate(ORDERS):
            w.send(key, MK.MK_ORDER, MK.order_body(CYCLE, side, wh, price, fee_max),
                   T0 + 60 * (i + 1))
    for n, buyer in ((0, FIRST), (1, BUYER)):
        for key in (buyer, SELLER, GRID):
            c = ChainClient(w.chain.url).market_contract(CYCLE, n)
            w.send(key, MK.MK_SIGN, MK.sign_body(CYCLE, n, MK.contract_terms(CYCLE, n, c)),
                   CYCLE - 150)
    if mode == MK.CONTINUOUS:
        w.at(CYCLE - 120)
        w.send(GRID, MK.MK_CLEAR, MK.cycle_body(CYCLE))
    base = 1_000 if mode == MK.SEALED else 0  # the export register so far
    w.read(CYCLE, base, 0)
    w.read(CYCLE + 900, base + 450, 300)
    _close(w, CYCLE + 900)
    link.step()
    w.send(BUYER, MK.MK_SETTLE, MK.cycle_body(CYCLE), CYCLE + 1000)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield from _world(tmp_path_factory.mktemp("trade"), MK.CONTINUOUS)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield from _world(tmp_path_factory.mktemp("sealed"), MK.SEALED)


def _world(tmp: Path, mode: int) -> Iterator[dict[str, Any]]:
    clock = Clock(T0 - 3600)
    with running_chain(tmp, clock) as chain:
        init_data_dir(tmp / "fog")
        node = FogNode(FogConfig(data_dir=tmp / "fog", skew_s=10**9,
                                 market_meters=[PV_METER.id.hex()]), clock)
        chain.register("fog", key=node.key)
        chain.register("dispatch", GRID)
        chain.register("regulator", REGULATOR)
        for key in (SELLER, BUYER, FIRST):
            chain.register("market", key)
        for key in (PV_METER, HOME):
            node.ingest.decide(key.public_key.raw, "active", "test")
        w = World(chain, node, clock)
        link = ChainLink(node, ChainClient(chain.url), clock)
        _trade(w, link, mode)
        api = FogAPI(node, clock)
        fog_url = f"http://127.0.0.1:{api.start()}"
        token_file = node.config.data_dir / "auditor.token"
        fog = FogClient(fog_url, token=token_file.read_text().strip())
        client = ChainClient(chain.url)
        bundle = build_trade_bundle(fog, client, CYCLE, 1)
        # market parameters set after the trade, for a proof that names them instead
        late = w.send(GRID, GC.PARAMS, GC.params_body("market", 2, {"mode": mode, "c1": 0}),
                      CYCLE + 1100)["digest"]
        section = embedded_tx(client.tx(late))
        section["prev_header"] = client.block(section["block_height"] - 1)["header"]
        yield {"bundle": bundle, "trust": chain.key.public_key, "chain": chain, "node": node,
               "fog": fog, "fog_url": fog_url, "token_file": token_file,
               "late_params": (late, section)}
        api.stop()
        link.close()
        node.close()


def test_a_trade_bundle_verifies_offline_and_recomputes_the_settlement(world: Any) -> None:
    r = AT.verify_trade_bundle(world["bundle"], [world["trust"]])
    assert (r.contract, r.buyer, r.seller, r.operator) == (
        f"{CYCLE}/1", BUYER.id.hex(), SELLER.id.hex(), GRID.id.hex())
    # P_T 70 (the default c1 + c2 + c3), midpoint of 501 and 300 rounded half up
    assert r.price == {"bid": 501, "ask": 300, "mid": 401, "pt": 70, "fee": 0, "pf": 471}
    # 450 Wh exported, contract 0 took 300 first
    assert (r.wh, r.delivered, r.measured) == (300, 150, True)
    assert (r.meter, r.fog, r.statements, r.estimated, r.readings) == (
        PV_METER.id.hex(), world["node"].key.id.hex(), 1, 0, 2)
    assert r.payments == {"seller": 401 * 150, "grid": 70 * 150, "buyer_refund": 471 * 150,
                          "imbalance": 600 * 150, "clean_each": 0}
    assert world["bundle"]["earlier"] == [{"n": 0, "wh": 300, "delivered": 300}]
    assert r.sealers == [world["trust"].id_hex]
    # the chain's own accounts agree with what the bundle recomputes
    c = ChainClient(world["chain"].url)
    assert c.market_contract(CYCLE, 1)["delivered"] == 150
    buyer = c.market_account(BUYER.id.hex())
    assert (buyer["held"], buyer["balance"]) == (0, 100 * 10**6 - 471 * 150)


def test_a_sealed_calls_trade_is_proven_from_its_commitments(sealed: Any) -> None:
    b = sealed["bundle"]
    r = AT.verify_trade_bundle(b, [sealed["trust"]])
    assert (r.contract, r.buyer, r.delivered) == (f"{CYCLE}/1", BUYER.id.hex(), 150)
    assert len(b["contract"]["commits"]) == 2 and b["contract"]["green"] == 1
    # the seller's certificate followed its energy: 300 Wh, then 150 of the next part
    assert (b["contract"]["green_moved"], b["contract"]["green_short"]) == (
        ["pv-s/300-450"], 0)
    first = ChainClient(sealed["chain"].url).market_contract(CYCLE, 0)
    assert first["green_moved"] == ["pv-s/0-300"]
    kinds = {P.parse(bytes.fromhex(t["transaction"])).fields[3]
             for t in b["transactions"].values()}
    assert {MK.MK_COMMIT, MK.MK_REVEAL, MK.MK_CLEAR} <= kinds
    for tamper in (lambda x: x["contract"]["commits"].reverse(),  # each other's commitment
                   lambda x: x["contract"].update(tx=x["contract"]["orders"][0])):
        broken = copy.deepcopy(b)
        tamper(broken)
        with pytest.raises(audit.BundleError) as e:
            AT.verify_trade_bundle(broken, [sealed["trust"]])
        assert e.value.check == "auction", str(e.value)
    # points for clean energy: 150 certified Wh earn each party 150,000 upt (1 point a kWh)
    assert r.payments["clean_each"] == b["contract"]["clean_upt"] == 150_000
    broken = copy.deepcopy(b)
    broken["contract"]["clean_upt"] += 1
    with pytest.raises(audit.BundleError) as e:
        AT.verify_trade_bundle(broken, [sealed["trust"]])
    assert e.value.check == "settlement" and "clean_upt" in str(e.value), str(e.value)


def test_cli_fetches_and_verifies_through_the_http_apis(world: Any, tmp_path: Path) -> None:
    out, trust = tmp_path / "trade.json", world["trust"].raw.hex()
    fetch = [sys.executable, "-m", "tools.audit", "trade-bundle", "--fog", world["fog_url"],
             "--chain", world["chain"].url, "--cycle", str(CYCLE), "--contract", "0", "-o",
             str(out)]
    r = subprocess.run([*fetch, "--token-file", str(world["token_file"])], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"bundle of contract {CYCLE}/0 written to {out}\n"
    ok = subprocess.run([sys.executable, "-m", "tools.audit", "trade", str(out), "--trust",
                         trust], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"verified: contract {CYCLE}/0: {FIRST.id.hex()} bought "
                                f"300 Wh from {SELLER.id.hex()} at P_F 480 mpt/kWh")
    assert "delivered 300 Wh, measured in 1 statements" in ok.stdout
    assert meterledger_main(["audit", "trade", str(out), "--trust", trust]) == 0
    # a cycle out of range is a usage error before any request
    bad = subprocess.run([*fetch[:9], "-1", *fetch[10:]], cwd=ROOT, capture_output=True,
                         text=True)
    assert (bad.returncode, bad.stderr.count("\n")) == (2, 1), bad.stderr
    # a contract that does not exist: the chain's refusal, one line, exit 1
    none = subprocess.run([*fetch[:11], "7", *fetch[12:], "--token-file",
                           str(world["token_file"])], cwd=ROOT, capture_output=True, text=True)
    assert (none.returncode, none.stderr.count("\n")) == (1, 1), none.stderr
    assert "has no contract 7" in none.stderr


def test_json_verdict_names_every_check(world: Any, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "trade.json"
    f.write_text(json.dumps(world["bundle"]))
    assert audit.main(["trade", str(f), "--trust", world["trust"].raw.hex(), "--format",
                       "json"]) == 0
    yes = json.loads(capsys.readouterr().out)
    assert yes["verified"] and yes["checks"] == [name for name, _ in AT.CHECKS]
    assert yes["payments"]["seller"] == 401 * 150


def test_an_unsettled_contract_has_no_bundle_yet(world: Any) -> None:
    class Unsettled(ChainClient):
        def market_contract(self, cycle: int, n: int) -> dict[str, Any]:
            return {**super().market_contract(cycle, n), "state": "effective"}

    with pytest.raises(ChainClientError, match="only a settled contract"):
        build_trade_bundle(world["fog"], Unsettled(world["chain"].url), CYCLE, 1)


# --- breaks: each rejected for its own reason ---------------------------------------------------
Tamper = Callable[[dict[str, Any], Any], None]
KEYS = {k.id: k for k in (GRID, REGULATOR, SELLER, BUYER, FIRST)}


def _refs(c: dict[str, Any], old: str, new: str) -> None:
    for k, v in list(c.items()):
        if v == old:
            c[k] = new
        elif isinstance(v, list):
            c[k] = [new if x == old else x for x in v]


def _forge_tx(b: dict[str, Any], w: Any, digest: str, body: dict[int, Any] | None = None,
              prev_t: int | None = None, key: P.SigningKey | None = None,
              fields: dict[int, Any] | None = None) -> str:
    """A colluding sealer: transaction `digest` signed again by its sender (or `key`, whose
    public key the bundle then gives) with body keys `body` (and `fields`) changed, in a
    block of its own the trusted sealer signs, after a block at `prev_t` if given; the
    bundle's references follow it."""
    new = reseal(b, digest, w["chain"].key, KEYS, body, prev_t, key, fields)
    _refs(b["contract"], digest, new)
    b["enrolment"] = new if b["enrolment"] == digest else b["enrolment"]
    return new


def _c(name: str, i: int | None = None) -> Callable[[dict[str, Any]], str]:
    return lambda b: b["contract"][name] if i is None else b["contract"][name][i]


def _tx(which: Callable[[dict[str, Any]], str], **kw: Any) -> Tamper:
    def tamper(b: dict[str, Any], w: Any) -> None:
        _forge_tx(b, w, which(b), **kw)
    return tamper


def _sec(b: dict[str, Any], which: str = "tx") -> dict[str, Any]:
    s: dict[str, Any] = b["transactions"][b["contract"][which]]
    return s


def _rogue_prev(b: dict[str, Any], w: Any) -> None:
    s, rogue = _sec(b), P.SigningKey.from_int(4243)
    s["prev_header"] = P.sign1(rogue, {**P.parse(bytes.fromhex(s["prev_header"])).fields,
                                       1: rogue.id}).hex()


def _refile(b: dict[str, Any], w: Any) -> None:
    old = b["contract"]["tx"]
    b["transactions"]["00" * 32] = b["transactions"].pop(old)
    _refs(b["contract"], old, "00" * 32)


def _anchor(b: dict[str, Any]) -> dict[str, Any]:
    a: dict[str, Any] = b["anchors"][b["statements"][0]["anchor"]]
    return a


def _restated(b: dict[str, Any], w: Any) -> None:
    s = b["statements"][0]
    f = P.parse(bytes.fromhex(s["statement"])).fields
    s["statement"] = P.sign1(w["node"].key, {**f, 5: f[5] + 1}).hex()


def _forge_statement(b: dict[str, Any], w: Any, st: dict[int, Any],
                     body: dict[int, Any] | None = None) -> None:
    """A colluding fog and sealer: the statement signed again with fields `st` changed and
    its anchor (body keys `body` changed) in a block of its own."""
    fog, sealer = w["node"].key, w["chain"].key
    s = b["statements"][0]
    old = bytes.fromhex(s["statement"])
    raw = P.sign1(fog, {**P.parse(old).fields, **st}, check=False)
    a = b["anchors"].pop(s["anchor"])
    tf = P.parse(bytes.fromhex(a["transaction"])).fields
    tx_raw = P.sign1(fog, {**tf, 4: {**tf[4], 4: [raw if x == old else x for x in tf[4][4]],
                                     **(body or {})}})
    header = P.sign1(sealer, {**P.parse(bytes.fromhex(a["block_header"])).fields,
                              4: C.tx_root([tx_raw]), 5: 1})
    s["anchor"] = P.digest(tx_raw).hex()
    b["anchors"][s["anchor"]] = {**a, "transaction": tx_raw.hex(), "block_header": header.hex(),
                                 "sealer_signature": P.parse(header).signature.hex(),
                                 "tx_index": 0, "tx_path": []}
    s["statement"] = raw.hex()


def _rogue_checkpoint(b: dict[str, Any], w: Any) -> None:
    tf = P.parse(bytes.fromhex(_anchor(b)["transaction"])).fields
    cps, rogue = list(tf[4][1]), P.SigningKey.from_int(4244)
    cps[-1] = P.sign1(rogue, {**P.parse(cps[-1]).fields, 17: rogue.id})
    _forge_statement(b, w, {}, {1: cps})


def _st(**changes: Any) -> Tamper:
    keys = {"ivl": 2, "dur": 3, "est": 6, "exp": 5, "meter": 1}
    return lambda b, w: _forge_statement(b, w, {keys[k]: v for k, v in changes.items()})


def _no_statements(b: dict[str, Any], w: Any) -> None:
    b["statements"], b["anchors"] = [], {}


def _second_signature_by_buyer(b: dict[str, Any], w: Any) -> None:
    signs = b["contract"]["signs"]
    grid = next(d for d in signs if P.parse(bytes.fromhex(
        b["transactions"][d]["transaction"])).fields[1] == GRID.id)
    _forge_tx(b, w, grid, key=BUYER)


def _household_reading(b: dict[str, Any], w: Any) -> None:
    s = b["statements"][0]
    tf = P.parse(bytes.fromhex(b["anchors"][s["anchor"]]["transaction"])).fields
    proof = w["fog"].inclusion(HOME.id, 2, P.parse(tf[4][1][-1]).fields[3])
    s["readings"][1] = {"entry": proof["entry"], "inclusion_path": proof["path"]}


def _late_params(b: dict[str, Any], w: Any) -> None:
    digest, section = w["late_params"]
    b["transactions"][digest] = section
    b["contract"]["params"] = digest


OTHER = P.SigningKey.from_int(4242).public_key.raw.hex()
TAMPERS: list[tuple[str, Tamper, str]] = [
    ("version 2", lambda b, w: b.update(version=2), "format"),
    ("contract without pf", lambda b, w: b["contract"].pop("pf"), "format"),
    ("block before sealed by a stranger", _rogue_prev, "block_signature"),
    ("block before is another", lambda b, w: _sec(b).update(prev_header=_sec(
        b, "settled")["prev_header"]), "block_signature"),
    ("block_height", lambda b, w: _sec(b).update(block_height=1), "block_height"),
    ("order flipped", lambda b, w: _sec(b).update(transaction=flip(_sec(b)["transaction"])),
     "tx_signature"),
    ("match filed under another digest", _refile, "tx_signature"),
    ("a key withheld", lambda b, w: b["keys"].pop(GRID.id.hex()), "tx_signature"),
    ("anchor flipped", lambda b, w: _anchor(b).update(transaction=flip(
        _anchor(b)["transaction"])), "anchor_signature"),
    ("order of another chain", _tx(_c("tx"), fields={6: b"\x01" * 8}), "chain_id"),
    ("tx_index", lambda b, w: _sec(b).update(tx_index=_sec(b)["tx_index"] + 1),
     "tx_inclusion"),
    ("params of another application", _tx(_c("params"), body={1: "access"}), "params"),
    ("params set after the bid", _late_params, "params"),
    ("enrolled to another meter", _tx(lambda b: b["enrolment"], body={3: HOME.id}),
     "enrolment"),
    ("the bid's price", lambda b, w: b["contract"].update(bid=502), "orders"),
    ("ask above bid", lambda b, w: b["contract"].update(ask=600), "orders"),
    ("a plain trade said green", lambda b, w: b["contract"].update(green=1), "orders"),
    ("the bid from a stranger", _tx(_c("orders", 0), key=FIRST), "orders"),
    ("order after the gate", _tx(_c("tx"), prev_t=CYCLE - 300), "auction"),
    ("match is the earlier order", lambda b, w: b["contract"].update(
        tx=b["contract"]["orders"][1]), "auction"),
    ("midpoint", lambda b, w: b["contract"].update(mid=400), "price"),
    ("P_F", lambda b, w: b["contract"].update(pf=470, escrow=470 * 300), "price"),
    ("escrow", lambda b, w: b["contract"].update(escrow=1), "price"),
    ("a shortfall hidden: Wh said 150", lambda b, w: b["contract"].update(
        wh=150, escrow=471 * 150), "signatures"),
    ("a signature missing", lambda b, w: b["contract"]["signs"].pop(), "signatures"),
    ("the grid's signature by the buyer", _second_signature_by_buyer, "signatures"),
    ("signed after delivery started", _tx(_c("signs", 2), prev_t=CYCLE), "signatures"),
    ("statement restated", _restated, "statement_anchored"),
    ("statement of another meter", _st(meter=HOME.id), "statement_signature"),
    ("statement of another cycle", _st(ivl=CYCLE), "cycle"),
    ("another fog's key", lambda b, w: b.update(fog_pub=OTHER), "anchor_signature"),
    ("a checkpoint the fog did not sign", _rogue_checkpoint, "checkpoint_signature"),
    ("the meter's key is another's", lambda b, w: b["devices"].update(
        {PV_METER.id.hex(): OTHER}), "device_id"),
    ("a household's reading", _household_reading, "device_id"),
    ("reading flipped", lambda b, w: b["statements"][0]["readings"][1].update(
        entry=flip(b["statements"][0]["readings"][1]["entry"])), "reading_signature"),
    ("readings swapped", lambda b, w: b["statements"][0]["readings"].reverse(),
     "reading_inclusion"),
    ("enrollment flipped", lambda b, w: b["statements"][0]["enrollment"].update(
        entry=flip(b["statements"][0]["enrollment"]["entry"])), "enrollment"),
    ("enrollment after the readings", lambda b, w: b["statements"][0]["enrollment"].update(
        leaf_index=10**6), "enrollment_order"),
    ("enrollment path", lambda b, w: b["statements"][0]["enrollment"]["inclusion_path"].pop(),
     "enrollment_inclusion"),
    ("the last 300 s stated over the whole interval's readings", _st(dur=300),
     "consecutive"),
    ("more energy than the registers", _st(exp=451), "energy"),
    ("the statements withheld", _no_statements, "settlement"),
    ("an earlier contract took less", lambda b, w: b["earlier"][0].update(delivered=200),
     "settlement"),
    ("settled before the delivery ended", _tx(_c("settled"), prev_t=CYCLE + 800),
     "settlement"),
]


@pytest.mark.parametrize("name,tamper,check", TAMPERS, ids=[t[0] for t in TAMPERS])
def test_a_broken_bundle_is_rejected_naming_the_check(world: Any, name: str, tamper: Tamper,
                                                      check: str) -> None:
    assert_rejected(lambda b: AT.verify_trade_bundle(b, [world["trust"]]), world["bundle"], tamper,
                    world, check)


def test_every_check_is_exercised_by_a_break() -> None:
    assert {c for c, _ in AT.CHECKS} == {t[2] for t in TAMPERS}


# --- input that is no trade bundle: exit 2, one line ----------------------------------------
MALFORMED: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("a list", lambda b: [b], "not a version-1 trade bundle"),
    ("a certificate bundle", lambda b: {"version": 1, "certificate": {}},
     "not a version-1 trade bundle"),
    ("statements not a list", lambda b: {**b, "statements": {}},
     "statements must be a list of 0"),
    ("an unknown key", lambda b: {**b, "extra": 1}, "'extra': unknown key in the bundle"),
    ("a key filed under another id", lambda b: {**b, "keys": {"00" * 8: OTHER}},
     "is the key of"),
    ("two meters", lambda b: {**b, "devices": {**b["devices"], "00" * 8: OTHER}},
     "devices must give the key of one meter"),
    ("a transaction without its block before", lambda b: {**b, "transactions": {
        d: {k: v for k, v in t.items() if k != "prev_header"}
        for d, t in b["transactions"].items()}}, "prev_header"),
    ("contract's cycle a string", lambda b: {**b, "contract": {**b["contract"],
                                                                "cycle": "1"}},
     "contract.cycle must be an integer"),
]


@pytest.mark.parametrize("make,message", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_cli_exits_2_with_one_line_for_input_that_is_no_trade_bundle(
        world: Any, tmp_path: Path, make: Callable[[dict[str, Any]], Any],
        message: str) -> None:
    assert_input_error("trade", tmp_path / "in.json", make(copy.deepcopy(world["bundle"])),
                       world["trust"].raw.hex(), message)
