"""Bill bundles (tools/audit_bill.py): on a real aggregator and a real fog node that anchors
to it, a household's day is billed under a tariff a utility proposed and a regulator
approved; one reading is lost on its way, so two intervals are the fog's estimate. The
bill's bundle, fetched through both HTTP APIs, proves every interval back to the meter's
signed readings or the fog's signed estimate in an anchored checkpoint, the tariff's two
signatures and the receipt, and reruns the bill to the cent; every break is rejected naming
its check, and input that is no bill bundle is one line and exit 2."""

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
from meterledger.clients import billing as B
from meterledger.clients.bill_bundle import build_bill_bundle
from meterledger.clients.bundle import NotAnchored
from meterledger.clients.chain import ChainClient, ChainClientError, Receipt, Sender
from meterledger.clients.fog import FogClient
from meterledger.wire import billing as BL
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import market as MK
from tests.fog_node.test_anchor import Clock
from tests.kit.bundles import assert_input_error, assert_rejected, flip, reseal
from tests.kit.chainkit import Chain, running_chain
from tools import audit
from tools import audit_bill as AB

ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400
START = 1_800_000_000 - 1_800_000_000 % DAY  # a UTC midnight: the billed day
END, T0 = START + DAY, START - 4 * DAY
UTILITY, REGULATOR = P.SigningKey.from_int(0x0717), P.SigningKey.from_int(0x7E6)
HOME = P.SigningKey.from_int(0x6F1)
OTHER = P.SigningKey.from_int(0x6F2).public_key.raw.hex()
ACCOUNT = b"\xac" * 8
# night 10 c/kWh until 07:00, day 25 c/kWh; 2 c per kW of the peak; 1.50 a bill; after half
# an hour's outage, 5.00 per kWh not served, at most 8.00 an outage
PERIODS = [(0, 10_000), (420, 25_000)]
TARIFF = {"demand_rate": 2_000, "fixed": 150_000, "grace_s": 1_800,
          "compensation_rate": 500_000, "compensation_cap": 800_000, "points_rate": 1_000}
GRID, CUSTOMER = P.SigningKey.from_int(0x6E1D), P.SigningKey.from_int(0x5C1)
POINT = 10**6
KEYS = {k.id: k for k in (UTILITY, REGULATOR, CUSTOMER)}
OUTAGE = (START + 8 * 3600, START + 9 * 3600)


def _readings(node: FogNode, clock: Clock) -> bytes:
    """Every 15 minutes from 06:00 to 10:00 on the three days before the billed day and on
    it, 100 Wh each quarter hour (300 Wh in the billed day's last); on the billed day the
    reading at 07:30 is lost on its way and the meter is off from 08:00 to 09:00 (no
    readings, nothing used). The fog estimates what its readings do not bound. Returns the
    lost reading (it arrives after the bill)."""
    prev, register, seq, lost = P.ZERO32, 0, 0, b""
    for day in (START - 3 * DAY, START - 2 * DAY, START - DAY, START):
        for i in range(17):
            t = day + 6 * 3600 + 900 * i
            if day == START and OUTAGE[0] < t < OUTAGE[1]:
                continue  # off: no reading at all
            if i and not (day == START and t == OUTAGE[1]):
                register += 300 if (day, i) == (START, 16) else 100
            seq += 1
            raw = P.sign1(HOME, P.reading(HOME.id, seq, t, 900, register, 0, 0, prev))
            prev = P.digest(raw)
            if (day, i) == (START, 6):
                lost = raw
                continue  # lost on its way
            clock.t = t
            outcomes, _ = node.ingest.process([raw])
            assert outcomes[0].status == "logged", outcomes
    return lost


def _points(chain: Chain, node: FogNode) -> None:
    """The market's grid operator enrols the customer: its grant is 100 points."""
    chain.register("dispatch", GRID)
    chain.register("market", CUSTOMER)
    for body in (GC.params_body("market", 1, {}),):
        status, doc = chain.post(chain.sign(GRID, GC.PARAMS, body))
        assert status == 200, doc
    for kind, body in ((MK.MK_NETWORK, MK.network_body(1, [("root", "", 10**8, 0)])),
                       (MK.MK_ENROLL, MK.enroll_body(CUSTOMER.id, node.key.id, HOME.id,
                                                     "root"))):
        status, doc = chain.post(chain.sign(GRID, kind, body))
        assert status == 200, doc


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("bill")
    clock = Clock(T0)
    with running_chain(tmp, clock) as chain:
        init_data_dir(tmp / "fog")
        node = FogNode(FogConfig(data_dir=tmp / "fog", skew_s=10**9), clock)
        chain.register("fog", key=node.key)
        chain.register("utility", UTILITY)
        chain.register("regulator", REGULATOR)
        status, doc = chain.post(chain.sign(UTILITY, BL.BL_TARIFF, BL.tariff_body(
            "residential", 1, START, PERIODS, **TARIFF)))
        assert status == 200, doc
        status, doc = chain.post(chain.sign(REGULATOR, BL.BL_APPROVE, BL.approve_body(
            "residential", 1, bytes.fromhex(doc["digest"]))))
        assert status == 200, doc
        node.ingest.decide(HOME.public_key.raw, "active", "test")
        link = ChainLink(node, ChainClient(chain.url), clock)
        _points(chain, node)
        lost = _readings(node, clock)
        clock.t = START + DAY // 2
        chain.register("holder")  # a block in the period: the redemption falls in it
        status, redeemed = chain.post(chain.sign(CUSTOMER, BL.BL_REDEEM, BL.redeem_body(
            "residential", ACCOUNT, 30 * POINT)))
        assert status == 200, redeemed
        clock.t = END + 3600
        now = int(clock.t)
        chain.register("holder")  # a block after the period: the chain's time moves on
        # the fog's closed outage record (fog_node.cooking.outages sends it once a feeder's
        # supply is back; signed here with the fog's own key)
        status, fault = chain.post(chain.sign(node.key, C.FAULT, C.fault_body(
            "outage", "feeder f1 restored after 3600 s: 1 meter(s)", OUTAGE[1], "none", [],
            meters=[HOME.id], start=OUTAGE[0], end=OUTAGE[1])))
        assert status == 200, fault
        node.cooker.close(START + 10 * 3600, now,
                          lambda: node.checkpoints.seal(now, force=True))
        node.checkpoints.seal(now, force=True)
        api = FogAPI(node, clock)
        fog = FogClient(f"http://127.0.0.1:{api.start()}",
                        token=(node.config.data_dir / "auditor.token").read_text().strip())
        client = ChainClient(chain.url)
        sender = Sender(client, UTILITY, bytes.fromhex(client.head()["chain"]))
        t = B.tariff_in_force(client, "residential", START, END)
        credits = B.outage_credits(fog, client, sender, t, HOME.id, START, END, now)
        points = B.redemptions(client, t, ACCOUNT, START, END)
        billed = B.bill(fog, t, ACCOUNT, HOME.id, START, END, 900, credits, points)
        B.receipt(sender, billed, now)
        # the lost reading arrives after the bill: the fog supersedes its estimate (both
        # stay in its log), the bill stands as it was computed
        outcomes, _ = node.ingest.process([lost])
        assert outcomes[0].status == "logged", outcomes
        node.cooker.tick(now, lambda: node.checkpoints.seal(now, force=True))
        node.checkpoints.seal(now, force=True)
        with pytest.raises(NotAnchored):  # the fog has not anchored yet
            build_bill_bundle(fog, client, billed.doc)
        link.step()
        bundle = build_bill_bundle(fog, client, billed.doc)
        yield {"bundle": bundle, "bill": billed.doc, "trust": chain.key.public_key,
               "chain": chain, "node": node, "fog": fog, "clock": clock, "tariff": t,
               "sender": sender, "fault": fault["digest"], "redeemed": redeemed["digest"],
               "token_file": node.config.data_dir / "auditor.token"}
        api.stop()
        link.close()
        node.close()


def test_a_bill_bundle_verifies_offline_and_reruns_the_bill_to_the_cent(world: Any) -> None:
    r = AB.verify_bill_bundle(world["bundle"], [world["trust"]])
    doc = world["bill"]
    assert (r.account, r.meter, r.tariff, r.version) == (ACCOUNT.hex(), HOME.id.hex(),
                                                         "residential", 1)
    # the billed day: 00:00-06:00 estimated (the night's gap, nothing used), 06:00-10:00
    # measured but for 07:15-07:45 (the lost reading) and 08:00-09:00 (the outage)
    assert (r.intervals, r.estimated, r.held_wh) == (40, 30, 0)
    # night 06:00-07:00 400 Wh; day 07:00-10:00 100 + 200 + 100 + 0 + 300 + 300 Wh; the
    # peak 300 Wh in a quarter hour is 1,200 W; the outage after its half hour's grace
    # (08:30-09:00) did not serve the 200 Wh the three days before used then: 1.00
    # the customer redeemed 30 points at a cent each
    assert r.lines == [["energy P0", 400, 10_000, 4], ["energy P1", 1_000, 25_000, 25],
                       ["demand", 1_200, 2_000, 2], ["fixed", 1, 150_000, 150],
                       ["compensation", 200, 500_000, -100],
                       ["points", 30 * POINT, 1_000, -30]]
    assert r.total == 51 == doc["total"]
    assert doc["points"] == [{"redeem": world["redeemed"], "upt": 30 * POINT, "cents": 30}]
    [c] = doc["compensation"]
    assert (c["fault"], c["days"], c["baseline"], c["served"], c["wh"], c["cents"]) == (
        world["fault"], 3, 200, 0, 200, 100)
    assert (r.utility, r.regulator, r.fog) == (UTILITY.id.hex(), REGULATOR.id.hex(),
                                               world["node"].key.id.hex())
    assert r.sealers == [world["trust"].id_hex]
    # the chain holds the digest and the total, never the intervals; and the credit
    client = ChainClient(world["chain"].url)
    [receipt] = client.billing_receipts(ACCOUNT.hex())["receipts"]
    assert (receipt["bill"], receipt["total"], receipt["tx"]) == (
        BL.bill_digest(doc).hex(), 51, r.receipt)
    [credit] = client.billing_credits(HOME.id.hex())["credits"]
    assert (credit["fault"], credit["tx"], credit["wh"], credit["cents"]) == (
        world["fault"], c["credit"], 200, 100)


def test_a_rerun_finds_the_credit_on_the_chain_and_sends_none(world: Any) -> None:
    client = ChainClient(world["chain"].url)
    again = B.outage_credits(world["fog"], client, world["sender"], world["tariff"],
                             HOME.id, START, END, int(world["clock"].t))
    assert [c.credit.hex() for c in again] == [world["bill"]["compensation"][0]["credit"]]
    assert len(client.billing_credits(HOME.id.hex())["credits"]) == 1
    # an outage ending in another period is another bill's
    assert B.outage_credits(world["fog"], client, world["sender"], world["tariff"], HOME.id,
                            END, END + DAY, int(world["clock"].t)) == []


def test_a_corrected_bill_has_a_bundle_and_the_old_one_is_refused(world: Any) -> None:
    """A dispute on a second account of the meter: its bill re-run without the estimated
    intervals; the correction's receipt names the old one, and only the correction's bundle
    can be built."""
    client, account = ChainClient(world["chain"].url), b"\xad" * 8
    t = B.tariff_in_force(client, "residential", START, END)
    sender = Sender(client, UTILITY, bytes.fromhex(client.head()["chain"]))
    docs: list[dict[str, Any]] = []
    receipts: list[Receipt] = []
    for usage in ([BL.Usage(*u) for u in world["bill"]["usage"]],
                  [BL.Usage(*u) for u in world["bill"]["usage"] if not u[3]]):
        bill = BL.compute_bill(t, usage)
        docs.append(BL.bill_document(account, HOME.id, START, END, t, bill, usage))
        receipts.append(sender.send(BL.BL_RECEIPT, BL.receipt_body(
            account, START, END, "residential", 1, BL.bill_digest(docs[-1]), bill.total,
            receipts[0].digest if receipts else None), int(world["clock"].t)))
    r = AB.verify_bill_bundle(build_bill_bundle(world["fog"], client, docs[1]),
                              [world["trust"]])
    assert (r.intervals, r.estimated, r.total, r.receipt) == (
        10, 0, docs[1]["total"], receipts[1].digest.hex())
    with pytest.raises(ChainClientError, match="a correction replaced it"):
        build_bill_bundle(world["fog"], client, docs[0])


def test_cli_fetches_and_verifies_through_the_http_apis(world: Any, tmp_path: Path) -> None:
    bill, out = tmp_path / "bill.json", tmp_path / "bundle.json"
    bill.write_text(json.dumps(world["bundle"]["bill"]))
    trust = world["trust"].raw.hex()
    fetch = [sys.executable, "-m", "tools.audit", "bill-bundle", "--fog",
             world["fog"].base_url, "--chain", world["chain"].url, "--bill", str(bill), "-o",
             str(out)]
    r = subprocess.run([*fetch, "--token-file", str(world["token_file"])], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"bundle of the bill of {ACCOUNT.hex()} from {START} written to {out}\n"
    ok = subprocess.run([sys.executable, "-m", "tools.audit", "bill", str(out), "--trust",
                         trust], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"verified: the bill of account {ACCOUNT.hex()} (meter "
                                f"{HOME.id.hex()}) from {START} to {END} under tariff "
                                "'residential' version 1")
    assert (f"40 intervals from {len(world['bundle']['readings'])} signed readings of the "
            "meter and 30 estimated") in ok.stdout
    assert meterledger_main(["audit", "bill", str(out), "--trust", trust]) == 0
    # the fog's auditor tier: without its token, the fog's refusal in one line, exit 1
    denied = subprocess.run(fetch, cwd=ROOT, capture_output=True, text=True)
    assert (denied.returncode, denied.stderr.count("\n")) == (1, 1), denied.stderr
    # a bill file that is no bill: one line, exit 2, before any request
    bill.write_text('{"version": 1}')
    bad = subprocess.run(fetch, cwd=ROOT, capture_output=True, text=True)
    assert (bad.returncode, bad.stderr.count("\n")) == (2, 1), bad.stderr
    assert "bill must be a bill document" in bad.stderr


def test_json_verdict_names_every_check(world: Any, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bill.json"
    f.write_text(json.dumps(world["bundle"]))
    assert audit.main(["bill", str(f), "--trust", world["trust"].raw.hex(), "--format",
                       "json"]) == 0
    yes = json.loads(capsys.readouterr().out)
    assert yes["verified"] and yes["checks"] == [name for name, _ in AB.CHECKS]
    assert yes["total"] == 51


# --- breaks: each rejected for its own reason ---------------------------------------------------
Tamper = Callable[[dict[str, Any], Any], None]


def _forge(b: dict[str, Any], w: Any, digest: str, body: dict[int, Any] | None = None,
           prev_t: int | None = None, key: P.SigningKey | None = None,
           fields: dict[int, Any] | None = None, drop: tuple[int, ...] = ()) -> str:
    """A colluding sealer: the bundle's transaction `digest` signed again by its sender (or
    `key`) with body keys `body` (and `fields`) changed and `drop` dropped, in a block of
    its own the trusted sealer signs, after a block at `prev_t` if given; the new digest."""
    keys = {**KEYS, w["node"].key.id: w["node"].key}
    return reseal(b, digest, w["chain"].key, keys, body, prev_t, key, fields, drop)


def _forge_tx(b: dict[str, Any], w: Any, name: str, **kw: Any) -> None:
    """_forge of the bundle's transaction `name` (receipt, tariff, approval)."""
    b[name] = _forge(b, w, b[name], **kw)


def _tx(name: str, **kw: Any) -> Tamper:
    return lambda b, w: _forge_tx(b, w, name, **kw)


def _rebill(change: Callable[[dict[str, Any]], None]) -> Tamper:
    """The utility's bill changed by `change` and receipted so (a new digest and total):
    what only the rerun can catch."""
    def tamper(b: dict[str, Any], w: Any) -> None:
        change(b["bill"])
        _forge_tx(b, w, "receipt", body={6: BL.bill_digest(b["bill"]), 7: b["bill"]["total"]})
    return tamper


def _credit_tx(which: str, **kw: Any) -> Tamper:
    """The outage credit's `which` transaction (credit, fault) forged, the bill naming the
    forgery and receipted so."""
    def tamper(b: dict[str, Any], w: Any) -> None:
        c = b["bill"]["compensation"][0]
        c[which] = _forge(b, w, c[which], **kw)
        _forge_tx(b, w, "receipt", body={6: BL.bill_digest(b["bill"])})
    return tamper


def _points_tx(**kw: Any) -> Tamper:
    """The redemption forged, the bill naming the forgery and receipted so."""
    def tamper(b: dict[str, Any], w: Any) -> None:
        r = b["bill"]["points"][0]
        r["redeem"] = _forge(b, w, r["redeem"], **kw)
        _forge_tx(b, w, "receipt", body={6: BL.bill_digest(b["bill"])})
    return tamper


def _superseded_twice(b: dict[str, Any], w: Any) -> None:
    """The utility bills 07:15-07:30 from the late reading and 07:30-07:45 from the
    estimate that reading superseded: the estimate's difference counts the first interval's
    energy again (each row proven on its own)."""
    usage = b["bill"]["usage"]
    i = next(k for k, u in enumerate(usage) if u[3] and u[0] > START + 7 * 3600)
    est = next(e for e in b["estimates"] if e["leaf_index"] == usage[i][4])
    seq = P.parse(bytes.fromhex(est["entry"])).fields[6] + 1  # the lost reading's
    head = P.parse(bytes.fromhex(_anchor(b)["transaction"])).fields[4][1][-1]
    late = w["fog"].inclusion(HOME.id, seq, int(P.parse(head).fields[3]))
    b["readings"].append({"entry": late["entry"], "leaf_index": int(late["leaf_index"]),
                          "inclusion_path": late["path"]})
    usage[i] = [usage[i][0], 900, 100, 0, seq]
    _forge_tx(b, w, "receipt", body={6: BL.bill_digest(b["bill"])})


def _points_worth_more(b: dict[str, Any]) -> None:
    b["points"][0]["cents"] += 10
    b["lines"][-1][3] -= 10
    b["total"] -= 10


def _baseline_inflated(b: dict[str, Any]) -> None:
    c = b["compensation"][0]
    c.update(baseline=c["baseline"] + 100, wh=c["wh"] + 100, cents=c["cents"] + 50)
    b["lines"][-2] = ["compensation", c["wh"], 500_000, -c["cents"]]
    b["total"] -= 50


def _sec(b: dict[str, Any], name: str = "receipt") -> dict[str, Any]:
    s: dict[str, Any] = b["transactions"][b[name]]
    return s


def _anchor(b: dict[str, Any]) -> dict[str, Any]:
    a: dict[str, Any] = next(iter(b["anchors"].values()))
    return a


def _rogue_prev(b: dict[str, Any], w: Any) -> None:
    s, rogue = _sec(b), P.SigningKey.from_int(4243)
    s["prev_header"] = P.sign1(rogue, {**P.parse(bytes.fromhex(s["prev_header"])).fields,
                                       1: rogue.id}).hex()


def _rogue_checkpoint(b: dict[str, Any], w: Any) -> None:
    """A colluding sealer carries an anchor whose newest checkpoint the fog did not sign."""
    d, a = next(iter(b["anchors"].items()))
    tf = P.parse(bytes.fromhex(a["transaction"])).fields
    cps, rogue = list(tf[4][1]), P.SigningKey.from_int(4244)
    cps[-1] = P.sign1(rogue, {**P.parse(cps[-1]).fields, 17: rogue.id})
    tx_raw = P.sign1(w["node"].key, {**tf, 4: {**tf[4], 1: cps}})
    header = P.sign1(w["chain"].key, {**P.parse(bytes.fromhex(a["block_header"])).fields,
                                      4: C.tx_root([tx_raw]), 5: 1})
    del b["anchors"][d]
    b["anchors"][P.digest(tx_raw).hex()] = {
        **a, "transaction": tx_raw.hex(), "block_header": header.hex(),
        "sealer_signature": P.parse(header).signature.hex(), "tx_index": 0, "tx_path": []}


def _swap_paths(b: dict[str, Any], w: Any) -> None:
    r = b["readings"]
    r[0]["inclusion_path"], r[1]["inclusion_path"] = r[1]["inclusion_path"], r[0][
        "inclusion_path"]


def _usage_wh(b: dict[str, Any]) -> None:
    b["usage"][0][2] += 10
    b["lines"][0][1] += 10


def _a_cent_more(b: dict[str, Any]) -> None:
    b["lines"][1][3] += 1
    b["total"] += 1


def _measured_said_estimated(b: dict[str, Any]) -> None:
    next(u for u in b["usage"] if not u[3])[3] = 1


TAMPERS: list[tuple[str, Tamper, str]] = [
    ("bill without usage", lambda b, w: b["bill"].pop("usage"), "format"),
    ("block before sealed by a stranger", _rogue_prev, "block_signature"),
    ("block_height", lambda b, w: _sec(b).update(block_height=1), "block_height"),
    ("receipt flipped", lambda b, w: _sec(b).update(transaction=flip(
        _sec(b)["transaction"])), "tx_signature"),
    ("the utility's key withheld", lambda b, w: b["keys"].pop(UTILITY.id.hex()),
     "tx_signature"),
    ("anchor flipped", lambda b, w: _anchor(b).update(transaction=flip(
        _anchor(b)["transaction"])), "anchor_signature"),
    ("receipt of another chain", _tx("receipt", fields={6: b"\x01" * 8}), "chain_id"),
    ("tx_index", lambda b, w: _sec(b).update(tx_index=_sec(b)["tx_index"] + 1),
     "tx_inclusion"),
    ("approval of another proposal", _tx("approval", body={3: b"\x00" * 32}), "tariff"),
    ("approved by its own utility", _tx("approval", key=UTILITY), "tariff"),
    ("approved after it started", _tx("approval", prev_t=START), "tariff"),
    ("another tariff version", _tx("tariff", body={2: 2}), "tariff"),
    ("receipt of another total", _tx("receipt", body={7: 170}), "receipt"),
    ("bill's total changed", lambda b, w: b["bill"].update(total=170), "receipt"),
    ("receipted by the regulator", _tx("receipt", key=REGULATOR), "receipt"),
    ("receipted before the period ended", _tx("receipt", prev_t=START + 86_000), "receipt"),
    ("a checkpoint the fog did not sign", _rogue_checkpoint, "checkpoint_signature"),
    ("the meter's key is another's", lambda b, w: b["devices"].update(
        {HOME.id.hex(): OTHER}), "device_id"),
    ("reading flipped", lambda b, w: b["readings"][1].update(
        entry=flip(b["readings"][1]["entry"])), "reading_signature"),
    ("readings' paths swapped", _swap_paths, "reading_inclusion"),
    ("estimate flipped", lambda b, w: b["estimates"][0].update(
        entry=flip(b["estimates"][0]["entry"])), "estimate_signature"),
    ("estimate path", lambda b, w: b["estimates"][0]["inclusion_path"].pop(),
     "estimate_inclusion"),
    ("enrollment flipped", lambda b, w: b["enrollment"].update(
        entry=flip(b["enrollment"]["entry"])), "enrollment"),
    ("enrollment after the readings", lambda b, w: b["enrollment"].update(
        leaf_index=10**6), "enrollment_order"),
    ("enrollment path", lambda b, w: b["enrollment"]["inclusion_path"].pop(),
     "enrollment_inclusion"),
    ("a reading withheld", lambda b, w: b["readings"].pop(), "usage"),
    ("an interval's Wh raised", _rebill(_usage_wh), "usage"),
    ("a measured interval said estimated", _rebill(_measured_said_estimated), "usage"),
    ("compensation without an outage record", _credit_tx("fault", drop=(6, 7, 8)),
     "compensation"),
    ("an outage record of another outage", _credit_tx("fault", body={7: OUTAGE[0] - 900}),
     "compensation"),
    ("an outage record of another meter", _credit_tx("fault", body={6: [b"\x01" * 8]}),
     "compensation"),
    ("a credit of another meter", _credit_tx("credit", body={2: b"\x01" * 8}),
     "compensation"),
    ("a credit by the regulator", _credit_tx("credit", key=REGULATOR), "compensation"),
    ("a credit before the outage record", _credit_tx("credit", prev_t=T0), "compensation"),
    ("a baseline inflated", _rebill(_baseline_inflated), "compensation"),
    ("points of another account", _points_tx(body={2: b"\x01" * 8}), "points"),
    ("points redeemed after the period", _points_tx(prev_t=END), "points"),
    ("points worth more", _rebill(_points_worth_more), "points"),
    ("an estimate billed with the reading that superseded it", _superseded_twice, "usage"),
    ("a cent more", _rebill(_a_cent_more), "bill"),
]


def test_an_estimate_and_the_reading_that_superseded_it_are_not_both_billed(
        world: Any) -> None:
    b = copy.deepcopy(world["bundle"])
    _superseded_twice(b, world)
    with pytest.raises(audit.BundleError, match="one energy billed twice"):
        AB.verify_bill_bundle(b, [world["trust"]])


@pytest.mark.parametrize("name,tamper,check", TAMPERS, ids=[t[0] for t in TAMPERS])
def test_a_broken_bundle_is_rejected_naming_the_check(world: Any, name: str, tamper: Tamper,
                                                      check: str) -> None:
    assert_rejected(lambda b: AB.verify_bill_bundle(b, [world["trust"]]), world["bundle"],
                    tamper, world, check)


def test_every_check_is_exercised_by_a_break() -> None:
    assert {c for c, _ in AB.CHECKS} == {t[2] for t in TAMPERS}


# --- input that is no bill bundle: exit 2, one line -----------------------------------------
MALFORMED: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("a list", lambda b: [b], "not a version-1 bill bundle"),
    ("a trade bundle", lambda b: {"version": 1, "contract": {}},
     "not a version-1 bill bundle"),
    ("an unknown key", lambda b: {**b, "extra": 1}, "'extra': unknown key in the bundle"),
    ("two anchors", lambda b: {**b, "anchors": {**b["anchors"], "00" * 32: _anchor(b)}},
     "anchors one anchor"),
    ("a usage row short", lambda b: {**b, "bill": {**b["bill"], "usage": [[1, 2, 3]]}},
     "bill.usage must be a list"),
    ("a negative Wh", lambda b: {**b, "bill": {**b["bill"], "usage": [[1, 2, -3, 0, 1]]}},
     "bill.usage[0][2] must be an integer"),
    ("estimated 2", lambda b: {**b, "bill": {**b["bill"], "usage": [[1, 2, 3, 2, 1]]}},
     "(estimated) must be 0 or 1"),
    ("a line's cents a string", lambda b: {**b, "bill": {**b["bill"],
                                                         "lines": [["fixed", 1, 1, "1"]]}},
     "bill.lines[0][3] must be an integer"),
    ("receipt missing from transactions", lambda b: {**b, "receipt": "00" * 32},
     "transactions has no"),
]


@pytest.mark.parametrize("make,message", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_cli_exits_2_with_one_line_for_input_that_is_no_bill_bundle(
        world: Any, tmp_path: Path, make: Callable[[dict[str, Any]], Any],
        message: str) -> None:
    assert_input_error("bill", tmp_path / "in.json", make(copy.deepcopy(world["bundle"])),
                       world["trust"].raw.hex(), message)
