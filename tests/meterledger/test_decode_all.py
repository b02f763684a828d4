"""Every message type decoded by name with its units and UTC times (issue 14, docs/DATA.md):
`tools.reading decode|verify` for the meter's types (1-6, 8: the golden vectors), the fog's
cooked data (10, 11) and the dispatch chain's (12, every kind, and 13), as JSON and as text;
`tools.audit decode` for every message of a proof bundle, and `verify --format json`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meterledger import wire as P
from meterledger.wire import chain as C
from meterledger.wire import merkle
from tests import reference
from tools import audit, reading

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads(reference.VECTORS.read_text())
FOG = P.SigningKey.from_int(0xF0C)
METER = P.SigningKey.from_int(0x3E7E)
DISPATCH = P.SigningKey.from_int(0xD15)
CHAIN = bytes(range(8))
T = 1_800_000_900  # 2027-01-15T08:15:00Z
D1, D2 = bytes([1]) * 32, bytes([2]) * 32


def signed(key: P.SigningKey, fields: P.Fields) -> bytes:
    return P.sign1(key, fields)


def messages() -> dict[str, bytes]:
    """One message of every type the meter does not send (10-13), each kind of each."""
    dev = METER.id
    estimate = {0: P.ESTIMATE, 1: dev, 2: "estimate", 3: T + 5, 4: "linear", 5: D1, 6: 1,
                7: D2, 8: 4, 9: T - 900, 10: [[T, 400, 0], [T + 900, 500, 3]], 17: FOG.id}
    supersede = {0: P.ESTIMATE, 1: dev, 2: "supersede", 3: T + 9, 11: D1, 12: D2, 13: 2,
                 17: FOG.id}
    aggregate = {0: P.AGGREGATE, 1: "feeder-7", 2: T, 3: 900, 4: 12_000, 5: 300, 6: 6, 7: 5,
                 8: 1, 9: 1_900, 10: -250, 11: 2291, 12: 2402, 13: ["voltage_low"], 14: 42,
                 15: P.ZERO32, 16: 0, 17: FOG.id, 19: D1}
    cp = signed(FOG, P.checkpoint(FOG.id, 3, 42, D1, D2, T + 60, ivl=T, agg=D2))
    agg = signed(FOG, aggregate)
    bodies = {
        C.REGISTER: C.register_body("fog", FOG.public_key.raw, "fog one"),
        C.ANCHOR: C.anchor_body([cp], [D1], [agg]),
        C.INSTRUCTION: C.instruction_body(FOG.id, "limit", {1: 4600}, T + 3600, [dev], "peak"),
        C.REPORT: C.report_body(D1, 1, 0, 0, [40, 41], "done"),
        C.FAULT: C.fault_body("outage", "feeder-7 dark", T, "report", [40]),
        C.RULES: C.rules_body("peak", 1, "limit 4600 W when loss > 8 %"),
    }
    out = {"estimate": signed(FOG, estimate), "supersede": signed(FOG, supersede),
           "aggregate": agg}
    for i, (kind, body) in enumerate(bodies.items()):
        key = DISPATCH if kind in (C.INSTRUCTION, C.RULES) else FOG
        out[f"tx_{kind}"] = signed(key, C.tx(key.id, i + 1, kind, body, T + i, CHAIN))
    out["block"] = signed(DISPATCH, C.block_header(DISPATCH.id, 7, D1, D2, 3, T + 30, CHAIN))
    return out


def run(module: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], input=stdin, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def decoded(capsys: pytest.CaptureFixture[str], raw: bytes, fmt: str = "json") -> Any:
    import io

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdin", io.StringIO(raw.hex()))
        assert reading.main(["decode", "--format", fmt]) == 0
    out = capsys.readouterr().out
    return json.loads(out) if fmt == "json" else out


def no_numbered_keys(fields: dict[str, Any], where: str) -> None:
    for k, v in fields.items():
        assert not k.isdigit(), f"{where}: field {k} has no name"
        if isinstance(v, dict) and k not in ("q", "args"):  # q and args: SPEC's own numbers
            no_numbered_keys(v, f"{where}.{k}")


@pytest.mark.parametrize("case", GOLDEN["valid"], ids=lambda c: c["name"])
def test_the_meters_types_by_name_with_units(capsys, case: dict[str, Any]) -> None:
    d = decoded(capsys, bytes.fromhex(case["message"]))
    assert d["digest"] == case["digest"] and d["type"] in (1, 2, 3, 4, 5, 6, 8)
    no_numbered_keys(d["fields"], case["name"])
    f = d["fields"]
    for name, unit in d["units"].items():
        assert unit and (name in f or name.split(".")[0] in f), name
    for name, when in d["utc"].items():
        assert d["units"][name] == "unix s" and when.endswith("Z")
    if d["type"] == 1:
        assert (d["units"]["imp"], d["units"]["dur"], d["units"]["t"]) == ("Wh", "s", "unix s")
        if "q" in f:
            assert f["q_names"]["v_min"] == f["q"]["1"] and d["units"]["q.1"] == "0.1 V"
            assert d["units"]["q_names.p_imp_max"] == "W"
    text = decoded(capsys, bytes.fromhex(case["message"]), "text")
    assert text.startswith(f"type {d['type']} ({d['type_name']}), signed by {d['kid']}")
    if d["type"] == 1:
        assert re.search(r"\n  imp +[0-9]+ Wh\n", text) and "Z)" in text
    if case["name"] == "reading_q_flags":
        assert "q.v_min" in text and "2281 x 0.1 V" in text and "(POWER_FAIL, PARTIAL)" in text


def test_cooked_and_chain_types_by_name_with_units_and_times(capsys) -> None:
    msgs = messages()
    seen = set()
    for name, raw in msgs.items():
        d = decoded(capsys, raw)
        seen.add(d["type"])
        assert d["digest"] == P.digest(raw).hex() and d["kid"] == P.parse(raw).kid.hex()
        no_numbered_keys(d["fields"], name)
        text = decoded(capsys, raw, "text")
        assert text.splitlines()[0].startswith(f"type {d['type']} ({d['type_name']})")
        for when in d["utc"].values():
            assert (when if isinstance(when, str) else when[0]) in text
    assert seen == {10, 11, 12, 13}
    e = decoded(capsys, msgs["estimate"])
    assert e["type_name"] == "estimate" and e["fields"]["kind"] == "estimate"
    assert (e["fields"]["from_seq"], e["fields"]["to_seq"], e["fields"]["method"]) == \
        (1, 4, "linear")
    assert e["utc"]["start"] == "2027-01-15T08:00:00Z"
    assert e["utc"]["ivls"] == ["2027-01-15T08:15:00Z", "2027-01-15T08:30:00Z"]
    assert e["units"]["ivls"] == "[end unix s, import Wh, export Wh]"
    s = decoded(capsys, msgs["supersede"])["fields"]
    assert (s["kind"], s["est"], s["by"], s["seq"]) == ("supersede", D1.hex(), D2.hex(), 2)
    a = decoded(capsys, msgs["aggregate"])
    assert a["type_name"] == "aggregate" and a["fields"]["feeder"] == "feeder-7"
    assert (a["fields"]["imp"], a["fields"]["loss"], a["fields"]["alerts"]) == \
        (12_000, -250, ["voltage_low"])
    assert (a["units"]["imp"], a["units"]["loss"], a["units"]["v_min"], a["units"]["dur"]) == \
        ("Wh", "Wh", "0.1 V", "s")
    assert a["utc"]["ivl"] == "2027-01-15T08:15:00Z"
    assert re.search(r"\n  imp +12000 Wh\n", decoded(capsys, msgs["aggregate"], "text"))
    anchor = decoded(capsys, msgs["tx_anchor"])
    assert anchor["type_name"] == "transaction" and anchor["fields"]["kind"] == "anchor"
    body = anchor["fields"]["body"]
    assert [c["type_name"] for c in body["checkpoints"]] == ["checkpoint"]
    assert body["checkpoints"][0]["fields"]["size"] == 42
    assert body["aggregates"][0]["fields"]["feeder"] == "feeder-7"
    assert body["proof"] == [D1.hex()]
    text = decoded(capsys, msgs["tx_anchor"], "text")
    assert "body.checkpoints:" in text and "\n    type 6 (checkpoint)" in text
    instr = decoded(capsys, msgs["tx_instruction"])
    assert instr["fields"]["body"]["op"] == "limit" and instr["units"]["body.args.1"] == "W"
    assert instr["utc"]["body.not_after"] == "2027-01-15T09:15:00Z"
    fault = decoded(capsys, msgs["tx_fault"])
    assert fault["fields"]["body"]["kind"] == "outage" and fault["utc"]["body.t"].endswith("Z")
    assert decoded(capsys, msgs["tx_rules"])["fields"]["body"]["version"] == 1
    assert decoded(capsys, msgs["tx_register"])["fields"]["body"]["role"] == "fog"
    assert decoded(capsys, msgs["tx_report"])["fields"]["body"]["entries"] == [40, 41]
    b = decoded(capsys, msgs["block"])
    assert (b["type_name"], b["fields"]["height"], b["fields"]["ntx"]) == ("block", 7, 3)
    assert b["utc"]["t"] == "2027-01-15T08:15:30Z"


def test_verify_reads_the_fogs_and_the_chains_messages_too() -> None:
    msgs = messages()
    ok = run("tools.reading", "verify", "--pub", FOG.public_key.raw.hex(),
             stdin=msgs["aggregate"].hex())
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["fields"]["feeder"] == "feeder-7"
    text = run("tools.reading", "verify", "--format", "text", "--pub",
               DISPATCH.public_key.raw.hex(), stdin=msgs["block"].hex())
    assert text.returncode == 0 and text.stdout.startswith("type 13 (block)")
    wrong = run("tools.reading", "verify", "--pub", METER.public_key.raw.hex(),
                stdin=msgs["tx_anchor"].hex())
    assert wrong.returncode == 1 and wrong.stderr.startswith("rejected: kid_mismatch: ")
    meter = next(c for c in GOLDEN["valid"] if c["name"] == "reading_q_flags")
    same = run("tools.reading", "decode", stdin=meter["message"])  # the default: JSON
    assert json.loads(same.stdout)["fields"]["flag_names"] == ["POWER_FAIL", "PARTIAL"]


# -- the audit tool ------------------------------------------------------------------------------
def bundle() -> dict[str, Any]:
    """A version-1 proof bundle made offline: a two-entry log (enrollment, reading), its
    checkpoint, an anchor carrying it and an aggregate, sealed alone in block 7."""
    enr = signed(FOG, P.enrollment(METER.id, METER.public_key.raw, "active", "ok", T - 60,
                                   FOG.id))
    rd = signed(METER, P.reading(METER.id, 1, T, 900, 5_000, 0, 0, P.ZERO32, {1: 2300}))
    hashes = [merkle.leaf_hash(x) for x in (enr, rd)]

    def subtree(lo: int, hi: int) -> bytes:
        return merkle.root_from_leaf_hashes(hashes[lo:hi])

    cp = signed(FOG, P.checkpoint(FOG.id, 1, 2, subtree(0, 2), P.ZERO32, T + 5))
    agg = messages()["aggregate"]
    tx = signed(FOG, C.tx(FOG.id, 1, C.ANCHOR, C.anchor_body([cp], [], [agg]), T + 6, CHAIN))
    header = signed(DISPATCH, C.block_header(DISPATCH.id, 7, D1, C.tx_root([tx]), 1, T + 7,
                                             CHAIN))
    return {"version": 1, "reading": rd.hex(), "device_pub": METER.public_key.raw.hex(),
            "enrollment": {"entry": enr.hex(), "leaf_index": 0,
                           "inclusion_path": [h.hex() for h in merkle.inclusion_path(0, 2,
                                                                                   subtree)]},
            "leaf_index": 1, "tree_size": 2,
            "inclusion_path": [h.hex() for h in merkle.inclusion_path(1, 2, subtree)],
            "checkpoint": cp.hex(), "fog_pub": FOG.public_key.raw.hex(),
            "anchor": {"block_height": 7, "block_header": header.hex(),
                       "sealer_signature": P.parse(header).signature.hex(),
                       "transaction": tx.hex(), "tx_index": 0,
                       "tx_path": [h.hex() for h in C.tx_path([tx], 0)]}}


def test_audit_decodes_every_message_of_a_bundle(tmp_path: Path) -> None:
    f = tmp_path / "bundle.json"
    f.write_text(json.dumps(bundle()))
    out = run("tools.audit", "decode", str(f), "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert list(doc) == list(audit.BUNDLE_MESSAGES)
    assert [d["type_name"] for d in doc.values()] == ["reading", "enrollment", "checkpoint",
                                                      "transaction", "block"]
    assert doc["reading"]["fields"]["q_names"] == {"v_min": 2300}
    assert doc["reading"]["utc"]["t"] == "2027-01-15T08:15:00Z"
    carried = doc["anchor.transaction"]["fields"]["body"]
    assert carried["checkpoints"][0]["digest"] == doc["checkpoint"]["digest"]
    assert carried["aggregates"][0]["fields"]["feeder"] == "feeder-7"
    text = run("tools.audit", "decode", str(f))
    assert text.returncode == 0 and text.stdout.startswith("reading:\n  type 1 (reading)")
    assert "anchor.block_header:\n  type 13 (block)" in text.stdout
    assert re.search(r"\n    imp +5000 Wh\n", text.stdout)
    f.write_text("{}")
    bad = run("tools.audit", "decode", str(f))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "missing version" in bad.stderr


def test_audit_verify_speaks_json_for_scripts(tmp_path: Path) -> None:
    f = tmp_path / "bundle.json"
    b = bundle()
    f.write_text(json.dumps(b))
    trust = DISPATCH.public_key.raw.hex()
    ok = run("tools.audit", "verify", str(f), "--trust", trust, "--format", "json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    v = json.loads(ok.stdout)
    assert v["verified"] and (v["dev"], v["seq"], v["imp"]) == (METER.id.hex(), 1, 5_000)
    assert v["t_utc"] == "2027-01-15T08:15:00Z" and v["block_height"] == 7
    assert v["checks"] == [name for name, _ in audit.CHECKS]
    assert run("tools.audit", "verify", str(f), "--trust", trust).stdout.startswith("verified:")
    b["anchor"]["block_height"] = 8
    f.write_text(json.dumps(b))
    no = run("tools.audit", "verify", str(f), "--trust", trust, "--format", "json")
    assert no.returncode == 1
    assert json.loads(no.stdout) == {"verified": False, "check": "block_height",
                                     "detail": "header is block 7, bundle says 8"}
