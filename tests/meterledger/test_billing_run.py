"""The utility's billing run (meterledger.clients.billing, docs/PROTOCOL.md section 28) on a
real aggregator and a real fog node: a household's verified intervals of a period come from
the fog's curve over HTTP (auditor tier), the bill is computed under the approved tariff in
force read from the chain's API, and its receipt lands on the chain with the bill's digest
and total only; a customer recomputes the same total from the same intervals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fog_node.api import FogAPI
from fog_node.config import FogConfig
from fog_node.node import FogNode, init_data_dir
from meterledger import wire as P
from meterledger.bill_cli import main as bill_main
from meterledger.clients import billing as B
from meterledger.clients.chain import ChainClient, ChainClientError, Sender
from meterledger.clients.fog import FogClient
from meterledger.wire import billing as BL
from tests.fog_node.test_anchor import Clock
from tests.kit.chainkit import running_chain

T0 = 1_800_000_000 - 1_800_000_000 % 86_400  # a UTC midnight
START = T0 + 86_400
UTILITY, REGULATOR = P.SigningKey.from_int(0x0717), P.SigningKey.from_int(0x7E6)
HOME = P.SigningKey.from_int(0x6F1)
ACCOUNT = b"\xac" * 8
# night 10 c/kWh until 07:00, day 25 c/kWh; 1.50 a bill
PERIODS = [(0, 10_000), (420, 25_000)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("billing")
    clock = Clock(T0)
    with running_chain(tmp, clock) as chain:
        init_data_dir(tmp / "fog")
        node = FogNode(FogConfig(data_dir=tmp / "fog", skew_s=10**9), clock)
        chain.register("utility", UTILITY)
        chain.register("regulator", REGULATOR)
        status, doc = chain.post(chain.sign(UTILITY, BL.BL_TARIFF, BL.tariff_body(
            "residential", 1, START, PERIODS, fixed=150_000)))
        assert status == 200, doc
        status, doc = chain.post(chain.sign(REGULATOR, BL.BL_APPROVE, BL.approve_body(
            "residential", 1, bytes.fromhex(doc["digest"]))))
        assert status == 200, doc
        node.ingest.decide(HOME.public_key.raw, "active", "test")
        prev, register = P.ZERO32, 0
        # readings every 15 minutes from 06:00 to 08:00 of the billed day: 8 intervals of
        # 100 Wh, but the reading at 07:30 is lost (the fog estimates two intervals)
        for i in range(9):
            t = START + 6 * 3600 + 900 * i
            register += 100 if i else 0
            raw = P.sign1(HOME, P.reading(HOME.id, i + 1, t, 900, register, 0, 0, prev))
            prev = P.digest(raw)
            if i == 6:
                continue  # lost on its way
            clock.t = t
            outcomes, _ = node.ingest.process([raw])
            assert outcomes[0].status == "logged", outcomes
        clock.t = START + 86_400 + 3600
        chain.register("holder")  # a block after the period: the chain's time moves on
        node.cooker.close(START + 8 * 3600, int(clock.t), None)
        api = FogAPI(node, clock)
        fog_url = f"http://127.0.0.1:{api.start()}"
        fog = FogClient(fog_url, token=(node.config.data_dir / "auditor.token").read_text()
                        .strip())
        yield {"chain": chain, "fog": fog, "node": node, "clock": clock}
        api.stop()
        node.close()


def test_a_billing_run_bills_the_fogs_intervals_and_receipts_the_total(world: Any) -> None:
    chain, fog = ChainClient(world["chain"].url), world["fog"]
    t = B.tariff_in_force(chain, "residential", START, START + 86_400)
    assert (t.version, t.periods, t.fixed) == (1, tuple(PERIODS), 150_000)
    billed = B.bill(fog, t, ACCOUNT, HOME.id, START, START + 86_400, 900)
    points = fog.curve(HOME.id, START, 2880)["points"]
    measured = [p for p in points if not p["estimated"]]
    assert len(measured) == 6 and all(p["imp"] == 100 for p in measured)
    doc = billed.doc
    assert doc["intervals"] == len([p for p in points if p["imp"] is not None])
    # 06:00-07:00 at night, the rest by day, each 100 Wh measured; the fixed charge
    night = sum(p["imp"] for p in points if p["imp"] is not None and p["start"] < START + 25_200)
    day = sum(p["imp"] for p in points if p["imp"] is not None) - night
    assert night == 400 and doc["lines"][0] == ["energy P0", 400, 10_000, 4]
    assert doc["lines"][1] == ["energy P1", day, 25_000, (25_000 * day + 500_000) // 10**6]
    assert doc["lines"][-1] == ["fixed", 1, 150_000, 150]
    assert billed.missing == 96 - doc["intervals"]
    # the receipt: the bill's digest and total, under the tariff's utility key
    sender = Sender(chain, UTILITY, bytes.fromhex(chain.head()["chain"]))
    B.receipt(sender, billed, int(world["clock"].t))
    [r] = chain.billing_receipts(ACCOUNT.hex())["receipts"]
    assert (r["start"], r["bill"], r["total"], r["n"]) == (
        START, BL.bill_digest(doc).hex(), doc["total"], 1)
    assert "meter" not in r  # the chain never sees which meter, nor an interval
    # the customer's recomputation from the same intervals gives the same total
    again = BL.compute_bill(t, B.period_usage(fog, HOME.id, START, START + 86_400))
    assert again.total == doc["total"]


def test_a_period_spanning_two_versions_or_none_is_refused(world: Any) -> None:
    chain = ChainClient(world["chain"].url)
    with pytest.raises(ChainClientError, match="no one approved version"):
        B.tariff_in_force(chain, "residential", START - 86_400, START + 86_400)
    versions = chain.billing_tariff("residential")["versions"]
    assert [v["approved"] for v in versions] == [True] and versions[0]["periods"] == [
        list(p) for p in PERIODS]


def test_the_bill_cli_proposes_approves_runs_and_reads(world: Any, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    url, node = world["chain"].url, world["node"]
    keys = {}
    for name, key in (("utility", UTILITY), ("regulator", REGULATOR)):
        keys[name] = tmp_path / f"{name}.key"
        keys[name].write_text(key.private_bytes().hex() + "\n")
        keys[name].chmod(0o600)

    def cli(*argv: str) -> tuple[int, str, str]:
        code = bill_main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    later = START + 30 * 86_400
    code, out, err = cli("propose", "--chain", url, "--key", str(keys["utility"]), "--name",
                         "residential", "--version", "2", "--start", str(later), "--period",
                         "0:12000", "--period", "420:26000", "--fixed", "150000")
    assert code == 0 and "bl_tariff accepted in block" in out, err
    code, out, err = cli("tariff", "residential", "--chain", url, "--json")
    proposal = json.loads(out)["versions"][1]
    assert (proposal["version"], proposal["approved"]) == (2, False)
    code, _, err = cli("approve", "--chain", url, "--key", str(keys["regulator"]), "--name",
                       "residential", "--version", "2", "--tx", "00" * 32)
    assert code == 1 and "tariff_mismatch" in err and err.count("\n") == 1, err
    code, _, err = cli("approve", "--chain", url, "--key", str(keys["regulator"]), "--name",
                       "residential", "--version", "2", "--tx", proposal["tx"])
    assert code == 0, err
    # a usage error: one line, exit 2
    with pytest.raises(SystemExit) as e:
        bill_main(["propose", "--chain", url, "--key", str(keys["utility"]), "--name", "r",
                   "--version", "1", "--start", "1", "--period", "noon"])
    assert e.value.code == 2 and "MINUTE:RATE" in capsys.readouterr().err
    # the run: a second account of the same meter, its bill written, its receipt sent
    people = tmp_path / "customers.csv"
    people.write_text(f"# account,meter\n{'ad' * 8},{HOME.id.hex()}\n")
    code, out, err = cli("run", "--chain", url, "--key", str(keys["utility"]), "--fog",
                         world["fog"].base_url, "--fog-token-file",
                         str(node.config.data_dir / "auditor.token"), "--tariff",
                         "residential", "--start", str(START), "--end", str(START + 86_400),
                         "--customers", str(people), "--out", str(tmp_path / "bills"))
    assert code == 0 and out.startswith("adadadadadadadad: "), err
    doc = json.loads((tmp_path / "bills" / f"{'ad' * 8}-{START}.json").read_text())
    code, out, err = cli("receipts", "ad" * 8, "--chain", url, "--json")
    [r] = json.loads(out)["receipts"]
    assert (r["bill"], r["total"]) == (BL.bill_digest(doc).hex(), doc["total"])
    # a second run: that customer's receipt is refused (billed already) and its bill file
    # stays the receipted one; a new customer in the list is billed all the same
    people.write_text(f"{'ad' * 8},{HOME.id.hex()}\n{'ae' * 8},{HOME.id.hex()}\n")
    written = (tmp_path / "bills" / f"{'ad' * 8}-{START}.json").read_bytes()
    code, out, err = cli("run", "--chain", url, "--key", str(keys["utility"]), "--fog",
                         world["fog"].base_url, "--fog-token-file",
                         str(node.config.data_dir / "auditor.token"), "--tariff",
                         "residential", "--start", str(START), "--end", str(START + 86_400),
                         "--customers", str(people), "--out", str(tmp_path / "bills"))
    assert code == 1 and out.startswith("aeaeaeaeaeaeaeae: "), out + err
    assert err.startswith("adadadadadadadad: not billed: receipt_repeated") and \
        err.count("\n") == 1, err
    assert (tmp_path / "bills" / f"{'ad' * 8}-{START}.json").read_bytes() == written
