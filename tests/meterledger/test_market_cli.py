"""`meterledger market` (meterledger.market_cli) against a real chain service on loopback:
grid access, orders in a continuous market, a sealed call from commit to settlement, the
reads, and what a user gets wrong (one line, exit 2) or the chain refuses (exit 1). The
chain's clock is the test's: a rule reads the time of the newest block before its
transaction, so the test moves the clock and seals a block to pass a gate."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meterledger import wire as P
from meterledger.cli import main
from meterledger.clients.chain import ChainClient
from meterledger.clients.market_agent import market_params, next_cycle
from meterledger.infra import simclock
from meterledger.wire import certificates as GC
from meterledger.wire import market as MK
from tests.kit.chainkit import Chain, running_chain

T0 = 1_800_000_000  # a multiple of the default cycle_s, 900
CYCLE = T0 + 1800  # its gate closes at T0 + 1500 (gate_s 300), its reveal window at + 120
LINE = "feeder-1"
FULL = ["--source", "pv", "--nature", "clean", "--supply-w", "5000", "--price", "100",
        "--safety", "3", "--voltage-v", "400"]


class Clock:
    def __init__(self) -> None:
        self.t = float(T0)

    def __call__(self) -> float:
        return self.t


@dataclass
class Market:
    chain: Chain
    clock: Clock
    tmp: Path
    capsys: pytest.CaptureFixture[str]

    def ok(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> None:
        status, doc = self.chain.post(self.chain.sign(key, kind, body))
        assert status == 200, doc

    def run(self, *argv: str) -> tuple[int, str, str]:
        code = main(["market", *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def cli(self, cmd: str, *argv: str, key: Path | None = None) -> tuple[int, str, str]:
        extra = ["--key", str(key)] if key is not None else []
        return self.run(cmd, *argv, "--chain", self.chain.url, *extra)

    def read(self, cmd: str, *argv: str) -> Any:
        code, out, err = self.cli(cmd, *argv, "--json")
        assert code == 0, err
        return json.loads(out)

    def participant(self, name: str, enrol: bool = True) -> tuple[Path, P.SigningKey]:
        """A key made by `market keygen`, registered with role market, enrolled."""
        path = self.tmp / f"{name}.key"
        code, out, err = self.run("keygen", "--key", str(path))
        assert code == 0, err
        assert out.splitlines()[1] == "pub " + (path.parent / f"{name}.key.pub").read_text().strip()
        key = P.SigningKey.from_bytes(bytes.fromhex(path.read_text().strip()))
        self.chain.register("market", key=key, name=name)
        if enrol:
            fog = self.chain.register("fog")
            self.ok(self.chain.key, MK.MK_ENROLL, MK.enroll_body(key.id, fog.id, key.id, LINE))
        return path, key

    def at(self, t: int) -> None:
        """Move the clock to `t` and seal a block there: chain time is t from then on."""
        self.clock.t = float(t)
        self.chain.register("holder")


@contextmanager
def market(tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int) -> Iterator[Market]:
    """A chain with grid access (a regulator's params) and the market (the dispatch key's
    params: it is the grid operator) enabled, and a network of one line published."""
    clock = Clock()
    with running_chain(tmp_path, clock) as chain:
        m = Market(chain, clock, tmp_path, capsys)
        regulator = chain.register("regulator")
        m.ok(regulator, GC.PARAMS, GC.params_body("access", 1, {}))
        m.ok(chain.key, GC.PARAMS, GC.params_body("market", 1, {"mode": mode}))
        m.ok(chain.key, MK.MK_NETWORK, MK.network_body(1, [(LINE, "", 1_000_000, 10)]))
        yield m


def test_access_orders_and_the_book_of_a_continuous_market(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with market(tmp_path, capsys, MK.CONTINUOUS) as m:
        seller, skey = m.participant("seller")
        code, out, err = m.cli("apply", *FULL, key=seller)
        assert (code, err) == (0, ""), err
        assert "access granted until" in out and "mk_access accepted in block" in out
        dec = m.read("access", "--key", str(seller))["decision"]
        assert dec["granted"] == 1 and dec["reasons"] == [] and dec["attributes"]["safety"] == 3
        # one attribute left out: refused, a reason per failed attribute, exit 1
        code, out, err = m.cli("apply", *FULL[:-2], key=seller)
        assert code == 1 and "access refused: MISSING_ATTRIBUTE" in out, out
        doc = m.read("access", "--participant", skey.id.hex())
        assert doc["decision"]["reasons"] == ["MISSING_ATTRIBUTE"] and doc["enrolled"]
        assert "voltage_v" not in doc["decision"]["attributes"]
        # not enrolled, and coal: both reasons
        loner, _ = m.participant("loner", enrol=False)
        code, out, _ = m.cli("apply", *FULL[2:], "--source", "coal", "--nature", "fossil",
                             key=loner)
        assert code == 1 and "NOT_QUALIFIED, SOURCE_NOT_ALLOWED, NATURE_NOT_ALLOWED" in out
        assert "not enrolled in the market" in m.cli("access", key=loner)[1]

        buyer, bkey = m.participant("buyer")
        code, out, err = m.cli("order", "--cycle", str(CYCLE), "--side", "buy", "--wh", "1000",
                               "--price", "100", "--fee-max", "5", key=buyer)
        assert code == 0 and "mk_order accepted in block" in out, err
        book = m.read("book", str(CYCLE))
        assert book["mode"] == "continuous" and book["next"] is None
        [order] = book["orders"]
        assert (order["side"], order["participant"], order["left"], order["price"],
                order["fee_max"]) == ("buy", bkey.id.hex(), 1000, 100, 5)
        code, out, _ = m.cli("book", str(CYCLE))
        assert code == 0 and f"buy   {bkey.id.hex()}  1000" in out
        # the bid holds its most: (bid + P_T + fee_max) x Wh = (100 + 70 + 5) x 1000 upt
        acct = m.read("account", "--key", str(buyer))
        assert (acct["balance"], acct["held"], acct["owed"]) == (100 * 10**6 - 175_000,
                                                                 175_000, 0)
        assert acct["reputation"] == {"bid": 0, "done": 0, "good": 0, "penalty": 0,
                                      "ppm": 500_000}
        assert "reputation 50.0000 % (500000 ppm)" in m.cli("account", key=buyer)[1]
        # nobody's account: zeros
        nobody = m.read("account", "--participant", "00" * 8)
        assert (nobody["balance"], nobody["held"], nobody["owed"]) == (0, 0, 0)
        # an ask below the bid matches at once: a contract of the cycle
        code, out, err = m.cli("order", "--cycle", str(CYCLE), "--side", "sell", "--wh", "400",
                               "--price", "60", key=seller)
        assert code == 1 and "not_admitted" in err  # its last request was refused
        assert m.cli("apply", *FULL, key=seller)[0] == 0
        # a green ask needs the seller's certificates: it has none
        code, _, err = m.cli("order", "--cycle", str(CYCLE), "--side", "sell", "--wh", "400",
                             "--price", "60", "--green", key=seller)
        assert code == 1 and "green_uncovered" in err and err.count("\n") == 1, err
        code, _, err = m.cli("order", "--cycle", str(CYCLE), "--side", "sell", "--wh", "400",
                             "--price", "60", key=seller)
        assert code == 0, err
        [c] = m.read("contracts", str(CYCLE))["contracts"]
        assert (c["n"], c["wh"], c["state"], c["buyer"], c["seller"]) == (
            0, 400, "matched", bkey.id.hex(), skey.id.hex())
        assert m.read("book", str(CYCLE), "--side", "buy")["orders"][0]["left"] == 600
        code, _, err = m.cli("cancel", "--cycle", str(CYCLE), "--side", "buy", key=buyer)
        assert code == 0, err
        assert m.read("book", str(CYCLE), "--side", "buy")["orders"][0]["left"] == 0
        net = m.read("network")
        assert net["network"]["lines"] == [[LINE, "", 1_000_000, 10]]
        assert net["operator"] == m.chain.key.id.hex()
        assert "feeder-1  (root)  1000000" in m.cli("network")[1]


def test_a_sealed_call_from_commit_to_settlement(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with market(tmp_path, capsys, MK.SEALED) as m:
        seller, skey = m.participant("seller")
        buyer, bkey = m.participant("buyer")
        assert m.cli("apply", *FULL, key=seller)[0] == 0
        for key, side, price in ((seller, "sell", "60"), (buyer, "buy", "100")):
            code, out, err = m.cli("commit", "--cycle", str(CYCLE), "--side", side, "--wh",
                                   "500", "--price", price, key=key)
            assert code == 0 and "sealed order kept in" in out, err
            kept = Path(f"{key}.{CYCLE}.sealed.json")
            assert kept.stat().st_mode & 0o777 == 0o600
        code, _, err = m.cli("commit", "--cycle", str(CYCLE), "--side", "buy", "--wh", "1",
                             "--price", "1", key=buyer)
        assert code == 2 and "exists" in err and len(err.splitlines()) == 1
        book = m.read("book", str(CYCLE))
        assert book["orders"] == [] and book["mode"] == "sealed"
        commits = book["commitments"]["commitments"]
        assert {c["participant"] for c in commits} == {skey.id.hex(), bkey.id.hex()}
        assert all(set(c) == {"participant", "seq", "revealed"} for c in commits)  # no digest
        code, _, err = m.cli("reveal", "--cycle", str(CYCLE), key=buyer)
        assert code == 1 and "gate_open" in err
        m.at(CYCLE - 300)  # the gate
        for key in (seller, buyer):
            code, out, err = m.cli("reveal", "--cycle", str(CYCLE), key=key)
            assert code == 0 and "mk_reveal accepted" in out, err
        assert len(m.read("book", str(CYCLE))["orders"]) == 2
        m.at(CYCLE - 300 + 120)  # the reveal window closed: anyone clears
        assert m.cli("clear", str(CYCLE), key=seller)[0] == 0
        cyc = m.read("cycle", str(CYCLE))
        assert (cyc["state"], cyc["contracts"], cyc["low"], cyc["cep"]) == ("closed", 1, 80, 80)
        assert cyc["floor"] == {"cycle": CYCLE, "floor": 80}
        code, out, _ = m.cli("cycle", str(CYCLE))
        assert "CEP 80 mpt/kWh" in out and "bid floor 80 mpt/kWh" in out
        for key in (buyer, seller):
            assert m.cli("sign", str(CYCLE), "0", key=key)[0] == 0
        c0 = m.read("contracts", str(CYCLE))["contracts"][0]
        m.ok(m.chain.key, MK.MK_SIGN, MK.sign_body(CYCLE, 0, MK.contract_terms(CYCLE, 0, c0)))
        c = m.read("contracts", str(CYCLE))["contracts"][0]
        assert (c["state"], c["signed"], c["pf"]) == ("effective", 7, 150)
        assert "buyer+seller+grid" in m.cli("contracts", str(CYCLE))[1]
        # no delivery statements: after settle_s the seller delivered nothing
        m.at(CYCLE + 900 + 3600)
        assert m.cli("settle", str(CYCLE), key=buyer)[0] == 0
        assert m.read("cycle", str(CYCLE))["state"] == "settled"
        code, _, err = m.cli("review", str(CYCLE), "0", "--good", key=buyer)
        assert code == 1 and "not_delivered" in err and len(err.splitlines()) == 1
        # the points come back to the buyer, the seller owes the imbalance
        assert m.read("account", "--key", str(buyer))["held"] == 0
        assert m.read("account", "--key", str(seller))["balance"] == 100 * 10**6 - 600 * 500
        code, _, err = m.cli("transfer", "--to", bkey.id.hex(), "--upt", "1000", key=seller)
        assert code == 0, err


@pytest.mark.parametrize("argv,says", [
    (["order", "--cycle", "1", "--side", "hold", "--wh", "1", "--price", "1"], "--side"),
    (["order", "--cycle", "1", "--side", "buy", "--wh", "-5", "--price", "1"], "--wh"),
    (["order", "--cycle", "1", "--side", "buy", "--wh", "1"], "--price"),
    (["apply", "--safety", "9"], "--safety"),
    (["apply", "--source", "sun"], "--source"),
    (["transfer", "--to", "xyz", "--upt", "1"], "--to"),
    (["sign", "900"], "n"),
    (["review", "900", "0"], "--good"),
])
def test_a_bad_flag_is_one_line_and_exit_2(argv: list[str], says: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["market", *argv, "--chain", "127.0.0.1:9", "--key", str(tmp_path / "k")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: meterledger market"), err
    assert says in lines[0]


def test_what_the_user_or_the_chain_gets_wrong(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with market(tmp_path, capsys, MK.CONTINUOUS) as m:
        code, _, err = m.cli("apply", *FULL, key=tmp_path / "none.key")
        assert code == 2 and "market keygen" in err and len(err.splitlines()) == 1
        stranger = tmp_path / "stranger.key"
        assert m.run("keygen", "--key", str(stranger))[0] == 0
        code, _, err = m.run("keygen", "--key", str(stranger))
        assert code == 2 and "exists already" in err
        code, _, err = m.cli("apply", *FULL, key=stranger)
        assert code == 2 and "no participant of the chain" in err
        code, _, err = m.cli("account")
        assert code == 2 and "--participant" in err
        buyer, _ = m.participant("buyer")
        code, _, err = m.cli("order", "--cycle", str(CYCLE + 1), "--side", "buy", "--wh", "1",
                             "--price", "100", key=buyer)
        assert code == 1 and "bad_cycle" in err and len(err.splitlines()) == 1
        code, _, err = m.cli("cycle", str(CYCLE + 1))
        assert code == 1 and "not a cycle start" in err
        code, _, err = m.cli("reveal", "--cycle", str(CYCLE), key=buyer)
        assert code == 2 and "no sealed order" in err
        # a commitment the chain refuses keeps no sealed order behind
        code, _, err = m.cli("commit", "--cycle", str(CYCLE), "--side", "buy", "--wh", "1",
                             "--price", "100", key=buyer)
        assert code == 1 and "market_mode" in err
        assert not Path(f"{buyer}.{CYCLE}.sealed.json").exists()
        code, _, err = m.run("book", str(CYCLE), "--chain", "127.0.0.1:9")
        assert code == 1 and err.startswith("error: meterledger market book: ")
        # the API's own checks
        for path in (f"/v1/market/cycles/{CYCLE}/book?after=sell:zz",
                     f"/v1/market/cycles/{CYCLE}/book?side=both",
                     f"/v1/market/cycles/{CYCLE}/contracts?after=x",
                     "/v1/market/accounts/00"):
            status, doc = m.chain.get(path)
            assert (status, doc["error"]) == (400, "bad_request"), path
        assert m.chain.get(f"/v1/market/cycles/{CYCLE}/contracts/0")[0] == 404
        assert m.chain.get("/v1/market/enrolments/" + "00" * 8)[1]["enrolment"] is None
        assert m.chain.get("/v1/market/floor")[1] == {"cycle": None, "floor": None}


def test_an_agent_orders_its_forecast_for_the_next_open_cycle(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`market agent`: a seller's agent on a simulated clock orders its forecast (no stated
    cycle yet: --default-wh) for the first cycle whose gate is ahead, and stops after one."""
    with market(tmp_path, capsys, MK.CONTINUOUS) as m:
        seller, skey = m.participant("seller")
        assert m.cli("apply", *FULL, key=seller)[0] == 0
        # (a thousand times slower than real time: the test has all the time it needs)
        clock = simclock.SimClock(0.001, T0 + 100, time.time()).write(tmp_path)
        code, out, err = m.cli("agent", "--side", "sell", "--price", "90", "--default-wh",
                               "700", "--cycles", "1", "--period-s", "0.05", "--sim-clock",
                               str(clock), key=seller)
        assert code == 0, err
        cycle = next_cycle(T0 + 100, market_params(ChainClient(m.chain.url)))
        assert f"{skey.id.hex()} sells 700 Wh at 90 mpt/kWh for cycle {cycle}" in out
        [order] = m.read("book", str(cycle))["orders"]
        assert (order["side"], order["left"], order["price"]) == ("sell", 700, 90)
        code, _, err = m.cli("agent", "--side", "buy", "--price", "0", key=seller)
        assert code == 2 and "--price must be 1 to" in err and len(err.splitlines()) == 1
