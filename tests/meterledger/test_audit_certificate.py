"""Certificate bundles (tools/audit_certificate.py): a real fog node states a real generator
meter's energy, a real aggregator certifies it, the bundle is fetched through both HTTP APIs
and verified offline; every break, by a stranger or by a colluding fog and sealer, is
rejected naming the right check, and input that is no bundle is one line and exit 2."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fog_node.api import FogAPI
from fog_node.chainlink.link import ChainLink
from fog_node.config import FogConfig
from fog_node.node import FogNode, init_data_dir
from meterledger import wire as P
from meterledger.cli import main as meterledger_main
from meterledger.clients.certificate_bundle import NotSupported, build_certificate_bundle
from meterledger.clients.chain import ChainClient
from meterledger.clients.fog import FogClient
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from tests.fog_node.test_anchor import Clock
from tests.kit.bundles import assert_input_error, assert_rejected
from tests.kit.chainkit import running_chain
from tools import audit
from tools import audit_certificate as AC

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000  # a multiple of 900
CID = "pv-1/1000-2000"  # 450 Wh an interval: [900, 1350), [1350, 1800), [1800, 2250)
GEN = P.SigningKey.from_int(0x6E0)
HOMES = [P.SigningKey.from_int(0x6E1 + i) for i in range(5)]


@dataclass
class Meter:
    key: P.SigningKey
    seq: int = 0
    prev: bytes = P.ZERO32
    register: int = 0  # Wh: the generator's export register, a household's import one


class Site:
    """A generator meter exporting 450 Wh an interval and five households, read by a fog."""

    def __init__(self, node: FogNode, clock: Clock) -> None:
        self.node, self.clock = node, clock
        self.meters = [Meter(k) for k in (GEN, *HOMES)]
        for k in (GEN, *HOMES):
            node.ingest.decide(k.public_key.raw, "active", "test")

    def read(self, t: int) -> None:
        raws = []
        for m in self.meters:
            m.seq += 1
            m.register += 450 if m.key is GEN else 100
            imp, exp = (0, m.register) if m.key is GEN else (m.register, 0)
            raws.append(P.sign1(m.key, P.reading(m.key.id, m.seq, t, 900, imp, exp, 0,
                                                 m.prev)))
            m.prev = P.digest(raws[-1])
        outcomes, _ = self.node.ingest.process(raws)
        assert all(o.status == "logged" for o in outcomes), outcomes

    def close(self, ivl: int) -> None:
        """The interval's readings, then its close as the scheduler makes it."""
        self.read(ivl)
        self.clock.t = ivl + 60
        now = int(self.clock.t)
        closed = self.node.cooker.close(ivl, now, lambda: self.node.checkpoints.seal(
            now, force=True))
        assert len(closed.statements) == 1
        self.node.checkpoints.seal(now, ivl=ivl, agg=closed.agg)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Five intervals stated and anchored (the 3rd and 4th in one anchor) on a chain that
    issues a certificate per 1000 Wh; the fog's API, the chain's and a bundle of CID."""
    tmp = tmp_path_factory.mktemp("certificate")
    clock = Clock(T0)
    with running_chain(tmp, clock) as chain:
        init_data_dir(tmp / "fog")
        node = FogNode(FogConfig(data_dir=tmp / "fog", skew_s=10**9,
                                 generators=[GEN.id.hex()]), clock)
        chain.register("fog", key=node.key)
        registry, plant = chain.register("registry"), chain.register("plant")
        for key, kind, body in (
                (registry, GC.PARAMS, GC.params_body("certificates", 1,
                                                     {"certificate_wh": 1000})),
                (registry, GC.GENERATOR, GC.generator_body(
                    "pv-1", "pv", 10_000, T0 - 86_400, node.key.id, GEN.id, "certificates",
                    plant.id))):
            status, doc = chain.post(chain.sign(key, kind, body))
            assert status == 200, doc
        site = Site(node, clock)
        link = ChainLink(node, ChainClient(chain.url), clock)
        site.read(T0)
        for i in (1, 2, 3, 4, 5):
            site.close(T0 + 900 * i)
            if i != 3:
                link.step()
        api = FogAPI(node, clock)
        fog_url = f"http://127.0.0.1:{api.start()}"
        token_file = node.config.data_dir / "auditor.token"
        fog = FogClient(fog_url, token=token_file.read_text().strip())
        bundle = build_certificate_bundle(fog, ChainClient(chain.url), CID)
        yield {"bundle": bundle, "trust": chain.key.public_key, "chain": chain, "node": node,
               "fog": fog, "fog_url": fog_url, "token_file": token_file}
        api.stop()
        link.close()
        node.close()


def test_a_certificate_bundle_verifies_offline_with_the_dispatch_key_alone(world: Any) -> None:
    b, node = world["bundle"], world["node"]
    r = AC.verify_certificate_bundle(b, [world["trust"]])
    assert (r.certificate, r.generator, r.wh) == (CID, "pv-1", 1000)
    assert (r.meter, r.fog) == (GEN.id.hex(), node.key.id.hex())
    assert (r.statements, r.readings, r.anchors) == (3, 6, 2)
    assert (r.first_ivl, r.last_ivl) == (T0 + 2700, T0 + 4500)
    assert r.sealers == [world["trust"].id_hex]
    # the certificate starts inside its first statement's segment and ends inside its last
    assert [(s["lo"], s["hi"]) for s in b["segments"]] == [(900, 1350), (1350, 1800),
                                                            (1800, 2250)]
    assert b["segments"][0]["anchor"] == b["segments"][1]["anchor"]
    # each statement names the meter's readings at the interval's start and end
    for s in b["segments"]:
        seqs = [P.parse(bytes.fromhex(x["entry"])).fields[2] for x in s["readings"]]
        ivl = P.parse(bytes.fromhex(s["statement"])).fields[2]
        assert seqs == [(ivl - T0) // 900, (ivl - T0) // 900 + 1]


def test_cli_fetches_and_verifies_through_the_http_apis(world: Any, tmp_path: Path) -> None:
    out, trust = tmp_path / "cert.json", world["trust"].raw.hex()
    fetch = [sys.executable, "-m", "tools.audit", "certificate-bundle", "--fog",
             world["fog_url"], "--chain", world["chain"].url, "--certificate", CID, "-o",
             str(out)]
    r = subprocess.run([*fetch, "--token-file", str(world["token_file"])], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"bundle of certificate {CID} written to {out}\n"
    ok = subprocess.run([sys.executable, "-m", "tools.audit", "certificate", str(out),
                         "--trust", trust], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"verified: certificate {CID} (1000 Wh of generator pv-1) "
                                "came from 3 measured statements")
    assert ok.stdout.count("\n") == 1
    # the console script forwards to it, and --format json gives the verdict to scripts
    assert meterledger_main(["audit", "certificate", str(out), "--trust", trust]) == 0
    assert audit.main(["certificate", str(out), "--trust", trust, "--format", "json"]) == 0
    # without the fog's auditor token the fog refuses: exit 1, one line with the hint
    r = subprocess.run(fetch, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert r.stderr.endswith("(the fog's auditor token: --token-file)\n")
    # a malformed id is a usage error before any request
    bad = subprocess.run([*fetch[:-3], "pv-1/5-1", "-o", str(out)], cwd=ROOT,
                         capture_output=True, text=True)
    assert (bad.returncode, bad.stderr.count("\n")) == (2, 1)
    assert bad.stderr.startswith("error: --certificate: ")


def test_json_verdicts(world: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "cert.json"
    f.write_text(json.dumps(world["bundle"]))
    other = P.SigningKey.from_int(99).public_key.raw.hex()
    assert audit.main(["certificate", str(f), "--trust", other, "--format", "json"]) == 1
    no = json.loads(capsys.readouterr().out)
    assert (no["verified"], no["check"]) == (False, "block_signature")
    assert audit.main(["certificate", str(f), "--trust", world["trust"].raw.hex(),
                       "--format", "json"]) == 0
    yes = json.loads(capsys.readouterr().out)
    assert yes["verified"] and yes["checks"] == [name for name, _ in AC.CHECKS]
    assert (yes["certificate"], yes["blocks"][0] < yes["blocks"][1]) == (CID, True)


def test_a_consortium_certificate_is_not_supported_yet(world: Any) -> None:
    class Consortium(ChainClient):
        def tx(self, digest_hex: str) -> dict[str, Any]:
            return {**super().tx(digest_hex), "finality": {}}

    with pytest.raises(NotSupported, match=r"consortium .* not supported yet"):
        build_certificate_bundle(world["fog"], Consortium(world["chain"].url), CID)


# --- breaks: each rejected for its own reason ---------------------------------------------------
def _flip(hexstr: str, pos: int = -1) -> str:
    b = bytearray(bytes.fromhex(hexstr))
    b[pos] ^= 0x01
    return b.hex()


def _forge(b: dict[str, Any], w: Any, i: int, st: P.Fields | None = None,
           tx: P.Fields | None = None, body: dict[int, Any] | None = None) -> None:
    """A colluding fog and sealer: segment i's statement signed again by the fog with fields
    `st` changed, its anchor (fields `tx`, body keys `body` changed) likewise, in a block of
    its own that the trusted sealer signs."""
    fog, sealer = w["node"].key, w["chain"].key
    seg = b["segments"][i]
    old_digest, old = seg["anchor"], bytes.fromhex(seg["statement"])
    raw = P.sign1(fog, {**P.parse(old).fields, **(st or {})}, check=False)
    a = b["anchors"].pop(old_digest)
    tf = P.parse(bytes.fromhex(a["transaction"])).fields
    new_body = {**tf[4], 4: [raw if x == old else x for x in tf[4][4]], **(body or {})}
    tx_raw = P.sign1(fog, {**tf, 4: new_body, **(tx or {})}, check=False)
    header = P.sign1(sealer, {**P.parse(bytes.fromhex(a["block_header"])).fields,
                              4: C.tx_root([tx_raw]), 5: 1})
    digest = P.digest(tx_raw).hex()
    b["anchors"][digest] = {**a, "transaction": tx_raw.hex(), "block_header": header.hex(),
                            "sealer_signature": P.parse(header).signature.hex(),
                            "tx_index": 0, "tx_path": []}
    for s in b["segments"]:
        s["anchor"] = digest if s["anchor"] == old_digest else s["anchor"]
    seg["statement"] = raw.hex()


def _reading(w: Any, b: dict[str, Any], i: int, key: P.SigningKey, seq: int) -> dict[str, Any]:
    """Reading `seq` of meter `key` with its real proof against segment i's checkpoint."""
    tf = P.parse(bytes.fromhex(b["anchors"][b["segments"][i]["anchor"]]["transaction"])).fields
    size = P.parse(tf[4][1][-1]).fields[3]
    proof = w["fog"].inclusion(key.id, seq, size)
    return {"entry": proof["entry"], "inclusion_path": proof["path"], "leaf": proof["leaf_index"]}


def _restated(b: dict[str, Any], w: Any) -> None:
    """Segment 1's statement signed again by the fog with 1 Wh more; its anchor unchanged."""
    seg = b["segments"][1]
    f = P.parse(bytes.fromhex(seg["statement"])).fields
    seg["statement"] = P.sign1(w["node"].key, {**f, 5: f[5] + 1}).hex()


def _two_intervals(b: dict[str, Any], w: Any) -> None:
    """Segment 0 (interval 3) restated over readings 2 and 4: not consecutive, 900 Wh."""
    r2, r4 = _reading(w, b, 0, GEN, 2), _reading(w, b, 0, GEN, 4)
    _forge(b, w, 0, {5: 900, 7: [r2.pop("leaf"), r4.pop("leaf")]})
    b["segments"][0].update(lo=450, readings=[r2, r4])


def _more_energy(b: dict[str, Any], w: Any) -> None:
    """Segment 0 restated with 50 Wh more export than its registers show (still tiling)."""
    _forge(b, w, 0, {5: 500})
    b["segments"][0]["lo"] = 850


def _household_reading(b: dict[str, Any], w: Any) -> None:
    r = _reading(w, b, 0, HOMES[0], 3)
    del r["leaf"]
    b["segments"][0]["readings"][0] = r


def _drop(b: dict[str, Any], i: int) -> None:
    gone = b["segments"].pop(i)
    if all(s["anchor"] != gone["anchor"] for s in b["segments"]):
        del b["anchors"][gone["anchor"]]


def _anchor(b: dict[str, Any], i: int = 2) -> dict[str, Any]:
    a: dict[str, Any] = b["anchors"][b["segments"][i]["anchor"]]
    return a


def _refile(b: dict[str, Any], w: Any) -> None:
    """The last anchor filed under another digest."""
    seg = b["segments"][2]
    b["anchors"]["00" * 32] = b["anchors"].pop(seg["anchor"])
    seg["anchor"] = "00" * 32


def _rogue_header(b: dict[str, Any], w: Any) -> None:
    a, rogue = _anchor(b), P.SigningKey.from_int(4243)
    raw = P.sign1(rogue, {**P.parse(bytes.fromhex(a["block_header"])).fields, 1: rogue.id})
    a.update(block_header=raw.hex(), sealer_signature=P.parse(raw).signature.hex())


def _rogue_checkpoint(b: dict[str, Any], w: Any) -> None:
    tf = P.parse(bytes.fromhex(_anchor(b, 0)["transaction"])).fields
    cps = list(tf[4][1])
    rogue = P.SigningKey.from_int(4244)
    cps[-1] = P.sign1(rogue, {**P.parse(cps[-1]).fields, 17: rogue.id})
    _forge(b, w, 0, body={1: cps})


def _revoked(b: dict[str, Any], w: Any) -> None:
    fog = w["node"].key
    b["segments"][1]["enrollment"]["entry"] = P.sign1(fog, P.enrollment(
        GEN.id, GEN.public_key.raw, "revoked", "x", T0, fog.id)).hex()


def _seg(i: int, **changes: Any) -> Callable[[dict[str, Any], Any], None]:
    return lambda b, w: b["segments"][i].update(changes)


Tamper = Callable[[dict[str, Any], Any], None]
OTHER = P.SigningKey.from_int(4242).public_key.raw.hex()
TAMPERS: list[tuple[str, Tamper, str]] = [
    ("version 2", lambda b, w: b.update(version=2), "format"),
    ("segments empty", lambda b, w: b.update(segments=[]), "format"),
    ("certificate's lo", lambda b, w: b["certificate"].update(lo=999), "certificate"),
    ("generator of another fog", lambda b, w: b["generator"].update(fog="11" * 8),
     "certificate"),
    ("block sealed by an untrusted key", _rogue_header, "block_signature"),
    ("block header flipped", lambda b, w: _anchor(b).update(
        block_header=_flip(_anchor(b)["block_header"])), "block_signature"),
    ("block_height", lambda b, w: _anchor(b).update(block_height=1), "block_height"),
    ("anchor flipped", lambda b, w: _anchor(b).update(
        transaction=_flip(_anchor(b)["transaction"])), "anchor_signature"),
    ("anchor filed under another digest", _refile, "anchor_signature"),
    ("anchor of another chain", lambda b, w: _forge(b, w, 2, tx={6: b"\x01" * 8}), "chain_id"),
    ("tx_index", lambda b, w: _anchor(b).update(tx_index=_anchor(b)["tx_index"] + 1),
     "tx_inclusion"),
    ("statement's exp tampered", _restated, "statement_anchored"),
    ("statement flipped", lambda b, w: b["segments"][1].update(
        statement=_flip(b["segments"][1]["statement"])), "statement_anchored"),
    ("statement of another meter", lambda b, w: _forge(b, w, 1, {1: HOMES[0].id}),
     "statement_signature"),
    ("a missing segment", lambda b, w: _drop(b, 1), "tiling"),
    ("the last segment missing", lambda b, w: _drop(b, 2), "tiling"),
    ("a segment's range", _seg(1, lo=1300, hi=1750), "tiling"),
    ("first_ivl", lambda b, w: b["certificate"].update(first_ivl=T0), "tiling"),
    ("an estimated statement", lambda b, w: _forge(b, w, 1, {6: 1}), "measured"),
    ("a checkpoint the fog did not sign", _rogue_checkpoint, "checkpoint_signature"),
    ("the meter's key is another's", lambda b, w: b["devices"].update(
        {GEN.id.hex(): OTHER}), "device_id"),
    ("a household's reading", _household_reading, "device_id"),
    ("reading flipped", lambda b, w: b["segments"][0]["readings"][1].update(
        entry=_flip(b["segments"][0]["readings"][1]["entry"])), "reading_signature"),
    ("readings swapped", lambda b, w: b["segments"][0]["readings"].reverse(),
     "reading_inclusion"),
    ("a reading swapped for the next segment's", lambda b, w: b["segments"][0][
        "readings"].__setitem__(0, b["segments"][1]["readings"][0]), "reading_inclusion"),
    ("a reading left out", lambda b, w: b["segments"][2]["readings"].pop(),
     "reading_inclusion"),
    ("inclusion path hash", lambda b, w: b["segments"][2]["readings"][0][
        "inclusion_path"].__setitem__(0, "00" * 32), "reading_inclusion"),
    ("enrollment flipped", lambda b, w: b["segments"][1]["enrollment"].update(
        entry=_flip(b["segments"][1]["enrollment"]["entry"])), "enrollment"),
    ("enrollment says revoked", _revoked, "enrollment"),
    ("enrollment after the readings", lambda b, w: b["segments"][1]["enrollment"].update(
        leaf_index=10**6), "enrollment_order"),
    ("enrollment path", lambda b, w: b["segments"][1]["enrollment"]["inclusion_path"].pop(),
     "enrollment_inclusion"),
    ("readings two intervals apart", _two_intervals, "consecutive"),
    ("more energy than the registers", _more_energy, "energy"),
]


@pytest.mark.parametrize("name,tamper,check", TAMPERS, ids=[t[0] for t in TAMPERS])
def test_a_broken_bundle_is_rejected_naming_the_check(world: Any, name: str, tamper: Tamper,
                                                      check: str) -> None:
    assert_rejected(lambda b: AC.verify_certificate_bundle(b, [world["trust"]]), world["bundle"], tamper,
                    world, check)


def test_a_key_nobody_trusts_fails_block_signature(world: Any) -> None:
    with pytest.raises(audit.BundleError) as e:
        AC.verify_certificate_bundle(world["bundle"], [P.PublicKey(bytes.fromhex(OTHER))])
    assert e.value.check == "block_signature"


def test_every_check_is_exercised_by_a_break() -> None:
    assert {c for c, _ in AC.CHECKS} == {t[2] for t in TAMPERS}


# --- input that is no certificate bundle: exit 2, one line --------------------------------------
MALFORMED: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("not JSON", lambda b: b"version: 1", "not JSON: Expecting value"),
    ("a list", lambda b: [b], "not a version-1 certificate bundle"),
    ("a reading's bundle", lambda b: {"version": 1, "reading": "00"},
     "this is a reading's proof bundle: check it with `verify`"),
    ("segments not a list", lambda b: {**b, "segments": {}}, "segments must be a list of 1"),
    ("a path of lists", lambda b: {**b, "segments": [{**b["segments"][0], "readings": [
        {"entry": "00", "inclusion_path": [["00" * 32]]}]}]},
     "segments[0].readings[0].inclusion_path[0] must be a 32-byte hash"),
    ("an unknown key", lambda b: {**b, "extra": 1}, "'extra': unknown key in the bundle"),
    ("an anchor no segment uses", lambda b: {**b, "anchors": {
        **b["anchors"], "00" * 32: next(iter(b["anchors"].values()))}}, "is no segment's"),
    ("a device key not a point", lambda b: {**b, "devices": {GEN.id.hex(): "04" + "00" * 64}},
     "is not a P-256 point"),
    ("certificate without lo", lambda b: {**b, "certificate": {"id": CID}},
     "missing certificate.generator"),
]


@pytest.mark.parametrize("make,message", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_cli_exits_2_with_one_line_for_input_that_is_no_certificate_bundle(
        world: Any, tmp_path: Path, make: Callable[[dict[str, Any]], Any],
        message: str) -> None:
    assert_input_error("certificate", tmp_path / "in.json", make(copy.deepcopy(
        world["bundle"])), world["trust"].raw.hex(), message)
