"""Rule sets and suggestions (docs/PROTOCOL.md section 19): the strict TOML parser, the pure `suggest`,
the suggestion store's policy, the chain's `rules` transactions and `unknown_rules`, and the
whole path through a real running aggregator: register rules, anchor aggregates, list the
suggestion, approve it (API with its token, and the CLI) into an instruction on the chain."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.ledger import Receipt, RuleSetView
from aggregator.chain.rulesets import nesting
from aggregator.chain.service.node import open_ledger
from aggregator.dispatch.rules import RulesError, metric, newest_revisions, parse_rules, suggest
from aggregator.dispatch.suggestions import (
    APPROVED,
    DISMISSED,
    KEPT_IVLS,
    OPEN,
    Dispatcher,
    SuggestionStore,
)
from meterledger import wire as P
from meterledger.wire import chain as C
from tests.kit.chainkit import T0, Chain, FogSide, aggregate_fields, http, running_chain

ROOT = Path(__file__).resolve().parents[2]
IVL = T0 - T0 % 900
FOG = bytes.fromhex("0102030405060708")
DEV = "0011223344556677"

EXAMPLE = f'''
name = "district-7"
version = 1
[[rule]]
id = "curtail-evening-peak"
feeder = "feeder-a"          # a feeder name or "*"
metric = "import_kw"
above = 40.0
for_intervals = 2
op = "limit"
args = {{ max_w = 1500 }}
devs = ["{DEV}"]
valid_s = 1800
why = "evening peak on feeder-a: curtail flexible loads"
'''


# --- the parser -------------------------------------------------------------------------------
def test_the_example_parses() -> None:
    rs = parse_rules(EXAMPLE, "d7.toml")
    assert (rs.name, rs.version, rs.digest) == ("district-7", 1, C.rules_digest(EXAMPLE))
    (r,) = rs.rules
    assert (r.id, r.feeder, r.fog, r.metric, r.above, r.below, r.for_intervals) == (
        "curtail-evening-peak", "feeder-a", None, "import_kw", 40.0, None, 2)
    assert (r.op, r.args, r.devs, r.valid_s) == ("limit", {1: 1500}, (bytes.fromhex(DEV),),
                                                 1800)
    assert r.why.startswith("evening peak")


def test_defaults_and_the_other_ops() -> None:
    rs = parse_rules('name = "n"\nversion = 2\n'
                     '[[rule]]\nid = "trip"\nfeeder = "*"\nfog = "0102030405060708"\n'
                     'metric = "v_max_v"\nabove = 253\nop = "relay"\nargs = { on = false }\n'
                     '[[rule]]\nid = "slow"\nfeeder = "f"\nmetric = "coverage_pct"\n'
                     'below = 50\nop = "interval"\nargs = { seconds = 300 }\n')
    trip, slow = rs.rules
    assert (trip.fog, trip.args, trip.for_intervals, trip.devs, trip.valid_s, trip.why) == (
        FOG, {1: False}, 1, (), 900, "")
    assert (slow.below, slow.above, slow.op, slow.args) == (50.0, None, "interval", {1: 300})


def rule_file(**changes: Any) -> str:
    """The example with keys of its rule replaced (None: removed), as TOML."""
    rule: dict[str, Any] = {"id": "r1", "feeder": "feeder-a", "metric": "import_kw",
                            "above": 40.0, "op": "limit", "args": {"max_w": 1500}}
    rule.update(changes)
    lines = ['name = "n"', "version = 1", "[[rule]]"]
    for k, v in rule.items():
        if v is None:
            continue
        if isinstance(v, dict):
            inner = ", ".join(f"{ik} = {json.dumps(iv)}" for ik, iv in v.items())
            lines.append(f"{k} = {{ {inner} }}")
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


BAD = [
    ("unknown-top-key", 'name = "n"\nversion = 1\nowner = "x"\n', "f.toml: owner: unknown key"),
    ("missing-name", "version = 1\n[[rule]]\n", "f.toml: name: missing"),
    ("version-0", 'name = "n"\nversion = 0\n[[rule]]\n', "f.toml: version: must be >= 1"),
    ("version-text", 'name = "n"\nversion = "1"\n[[rule]]\nid="a"\nfeeder="f"\nmetric="net_kw"\n'
     'above=1\nop="limit"\nargs={max_w=1}\n', "f.toml: version: must be an integer"),
    ("no-rules", 'name = "n"\nversion = 1\n', "f.toml: rule: a rule file needs at least one"),
    ("not-toml", "name = \n", "f.toml: not TOML"),
    ("unknown-rule-key", rule_file(colour="red"), "f.toml: rule 'r1': colour: unknown key"),
    ("missing-id", rule_file(id=None), "f.toml: rule '#1': id: missing"),
    ("missing-feeder", rule_file(feeder=None), "rule 'r1': feeder: missing"),
    ("missing-threshold", rule_file(above=None), "rule 'r1': above: a rule needs exactly one"),
    ("two-thresholds", rule_file(below=3), "rule 'r1': above: a rule needs exactly one"),
    ("threshold-text", rule_file(above="40"), "rule 'r1': above: must be a finite number"),
    ("threshold-bool", rule_file(above=True), "rule 'r1': above: must be a finite number"),
    ("unknown-metric", rule_file(metric="power"), "rule 'r1': metric: 'power' is not one of"),
    ("unknown-op", rule_file(op="reboot"), "rule 'r1': op: 'reboot' is not one of"),
    ("args-wrong-key", rule_file(args={"max": 5}), "rule 'r1': args: op 'limit' takes args"),
    ("args-negative", rule_file(args={"max_w": -1}), "rule 'r1': args: max_w = -1: limit"),
    ("args-bool-for-int", rule_file(args={"max_w": True}), "rule 'r1': args: max_w must be"),
    ("relay-int", rule_file(op="relay", args={"on": 1}), "rule 'r1': args: on must be a bool"),
    ("interval-17", rule_file(op="interval", args={"seconds": 17}),
     "rule 'r1': args: seconds = 17: interval takes"),
    ("for-0", rule_file(for_intervals=0), "rule 'r1': for_intervals: must be >= 1"),
    ("for-float", rule_file(for_intervals=2.0), "rule 'r1': for_intervals: must be an integer"),
    ("valid-0", rule_file(valid_s=0), "rule 'r1': valid_s: must be >= 1"),
    ("dev-short", rule_file(devs=["0011"]), "rule 'r1': devs: must be an 8-byte id"),
    ("dev-not-hex", rule_file(devs=["zz11223344556677"]), "rule 'r1': devs: must be an 8-byte"),
    ("devs-text", rule_file(devs=DEV), "rule 'r1': devs: must be a list"),
    ("fog-bad", rule_file(fog="x"), "rule 'r1': fog: must be an 8-byte id"),
    ("why-int", rule_file(why=5), "rule 'r1': why: must be a string"),
    ("empty-id", rule_file(id=""), "rule '#1': id: must be a non-empty string"),
    ("duplicate-id", rule_file() + '[[rule]]\nid = "r1"\nfeeder = "f"\nmetric = "net_kw"\n'
     'above = 1\nop = "limit"\nargs = { max_w = 1 }\n', "rule 'r1': id: used by two rules"),
    # wrong kinds anywhere, and every range (issue 13: a wrong kind used to raise TypeError)
    ("op-list", rule_file(op=["limit"]), "rule 'r1': op: ['limit'] is not one of"),
    ("op-table", rule_file(op={"a": 1}), "rule 'r1': op: {'a': 1} is not one of"),
    ("metric-list", rule_file(metric=["net_kw"]), "rule 'r1': metric: ['net_kw'] is not one"),
    ("id-list", rule_file(id=["r1"]), "rule '#1': id: must be a non-empty string, not ['r1']"),
    ("feeder-int", rule_file(feeder=5), "rule 'r1': feeder: must be a non-empty string"),
    ("name-list", 'name = ["n"]\nversion = 1\n', "f.toml: name: must be a non-empty string"),
    ("name-long", 'name = "' + "n" * 129 + '"\nversion = 1\n', "name: must be 1..128 bytes"),
    ("version-bool", 'name = "n"\nversion = true\n', "version: must be an integer, not bool"),
    ("version-int64", 'name = "n"\nversion = 9223372036854775808\n',
     "version: must be <= 9223372036854775807"),
    ("rule-table", 'name = "n"\nversion = 1\nrule = { id = "a" }\n',
     "f.toml: rule: a rule file needs at least one [[rule]] table"),
    ("rule-not-table", 'name = "n"\nversion = 1\nrule = [1]\n', "rule '#1': rule: each"),
    ("for-huge", rule_file(for_intervals=10001), "for_intervals: must be <= 10000"),
    ("valid-huge", rule_file(valid_s=2**70), "valid_s: must be <= 31622400"),
    ("max-w-int64", rule_file(args={"max_w": 2**63}), "args: max_w = 9223372036854775808: "),
    ("args-list", rule_file(args=[1]), "rule 'r1': args: op 'limit' takes args"),
    ("threshold-huge-int", rule_file(above=10**400), "above: must be a finite number"),
    ("threshold-inf", rule_file().replace("above = 40.0", "above = inf"),
     "above: must be a finite number, not inf"),
    ("devs-many", rule_file(devs=[DEV] * 129), "devs: at most 128 meter ids"),
    ("dev-int", rule_file(devs=[5]), "rule 'r1': devs: must be an 8-byte id"),
    ("dev-spaced", rule_file(devs=["00 112233445566"]), "devs: must be an 8-byte id"),
    ("fog-list", rule_file(fog=[DEV]), "rule 'r1': fog: must be an 8-byte id"),
    ("why-long", rule_file(why="w" * 1025), "why: must be 0..1024 bytes"),
    ("too-many-rules", 'name = "n"\nversion = 1\n' + '[[rule]]\n' * 65,
     "f.toml: rule: at most 64 rules, not 65"),
    ("nested-deep", 'name = "n"\nversion = 1\nx = ' + "[" * 100000 + "]" * 100000,
     "f.toml: not a rule file: arrays or tables nested deeper than 8"),
    ("digits", 'name = "n"\nversion = 1' + "0" * 5000 + "\n", "f.toml: not TOML: Exceeds"),
]


@pytest.mark.parametrize("text,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_rule_files_are_refused_naming_file_rule_and_key(text: str, message: str) -> None:
    with pytest.raises(RulesError, match=re.escape(message)) as e:
        parse_rules(text, "f.toml")
    assert "\n" not in str(e.value)  # one line, whatever the file held


def test_brackets_in_strings_and_comments_are_not_nesting() -> None:
    deep = "[{" * 20
    text = rule_file(why=deep + "'\"") + f"# {deep}\n"
    assert nesting(text) == 2  # [[rule]]; args = { ... } is closed before
    assert parse_rules(text).rules[0].why == deep + "'\""
    assert nesting('a = """x\\"""" b = [[1]]\n') == 2
    assert nesting("a = '''[[[''' # [[[\nb = ['[']\n") == 1


def test_the_ranges_limits_are_accepted() -> None:
    text = rule_file(for_intervals=10000, valid_s=366 * 86400, devs=[DEV] * 128,
                     why="w" * 1024)
    rs = parse_rules(text.replace("version = 1", f"version = {2**63 - 1}"))
    (r,) = rs.rules
    assert (rs.version, r.for_intervals, r.valid_s, len(r.devs), r.args) == (
        2**63 - 1, 10000, 366 * 86400, 128, {1: 1500})


# --- metrics and suggest() --------------------------------------------------------------------
def agg(ivl: int, imp: int, rev: int = 0, feeder: str = "feeder-a", **kw: Any) -> P.Fields:
    return aggregate_fields(FOG, feeder, ivl, imp, rev=rev,
                            replaces=b"\x01" * 32 if rev else None, **kw)


KW = 250  # Wh per 15-minute interval per kW: 12500 Wh = 50 kW


def test_metrics_of_an_aggregate() -> None:
    f = agg(IVL, 50 * KW, exp=10 * KW, meters=4, measured=3,
            extra={10: 10 * KW, 11: 2251, 12: 2409})
    assert metric("import_kw", f) == 50 and metric("export_kw", f) == 10
    assert metric("net_kw", f) == 40
    assert metric("loss_pct", f) == pytest.approx(100 * 10 / 50)  # loss / head net import
    assert metric("coverage_pct", f) == 75
    assert (metric("v_min_v", f), metric("v_max_v", f)) == (225.1, 240.9)
    bare = agg(IVL, 0, meters=0, measured=0)
    assert [metric(m, bare) for m in ("loss_pct", "coverage_pct", "v_min_v")] == [None] * 3


def series(*imps_kw: float | None, start: int = IVL) -> list[P.Fields]:
    """Consecutive intervals (None: not anchored) with import in kW."""
    return [agg(start + 900 * i, int(kw * KW)) for i, kw in enumerate(imps_kw)
            if kw is not None]


RS = parse_rules(EXAMPLE)


def fired(aggs: list[P.Fields], now: int = T0) -> list[Any]:
    return suggest([RS], {(FOG, "feeder-a"): aggs}, now)


def test_suggest_fires_at_n_consecutive_intervals_only() -> None:
    assert fired(series(50)) == []  # N-1
    (s,) = fired(series(20, 50, 60))
    assert (s.fog, s.feeder, s.rule, s.rules_digest, s.rules_name) == (
        FOG, "feeder-a", "curtail-evening-peak", RS.digest, "district-7")
    assert s.ivls == (IVL + 900, IVL + 1800) and s.values == (50.0, 60.0)
    assert s.instruction_body(T0 + 5) == C.instruction_body(
        FOG, "limit", {1: 1500}, T0 + 5 + 1800, [bytes.fromhex(DEV)],
        "evening peak on feeder-a: curtail flexible loads", RS.digest)
    assert fired(series(20, 50, 60), now=T0 + 99)[0].id == s.id  # stable
    assert fired(series(50, 50, 20)) == []  # the run ended: nothing fires afterwards
    assert fired(series(50, 30, 50)) == []  # interrupted
    assert fired(series(50, None, 50)) == []  # a gap: an interval not anchored
    assert fired(series(40, 40)) == []  # "above" is strict
    # only the named feeder; "*" takes any
    assert suggest([RS], {(FOG, "feeder-b"): series(50, 50)}, T0) == []
    star = parse_rules(EXAMPLE.replace('"feeder-a"  ', '"*"  '))
    assert len(suggest([star], {(FOG, "feeder-b"): series(50, 50)}, T0)) == 1


def test_suggest_uses_the_newest_revision_of_each_interval() -> None:
    base = series(50, 50)
    lowered = [*base, agg(IVL + 900, 30 * KW, rev=1)]
    assert fired(lowered) == []
    raised = [*series(50, 30), agg(IVL + 900, 45 * KW, rev=1)]
    (s,) = fired(raised)
    assert s.values == (50.0, 45.0)
    # an older revision anchored late does not win over a newer one
    assert fired([*lowered, agg(IVL + 900, 50 * KW, rev=0)]) == []
    assert [f[16] for f in newest_revisions(lowered)] == [0, 1]


def test_the_store_records_one_open_suggestion_per_rule_and_feeder(tmp_path: Path) -> None:
    store = SuggestionStore(tmp_path / "s.db")
    try:
        (first,) = fired(series(50, 50))
        assert [s.suggestion.id for s in store.record([first], T0)] == [first.id]
        assert store.record([first], T0) == []  # the same again
        later = fired(series(50, 50, 50, 50))
        assert store.record(later, T0) == []  # still open
        store.dismissed(first.id, T0)
        assert store.record(fired(series(50, 50, 50)), T0) == []  # overlaps the dismissed
        (s2,) = store.record(later, T0)  # a run after the dismissed one
        assert s2.state == OPEN and s2.suggestion.ivls == (IVL + 1800, IVL + 2700)
        store.approved(s2.suggestion.id, Receipt(b"\x09" * 32, 7, 0), T0 + 1800, T0)
        after = fired(series(50, 50, 50, 50, 50, 50))
        assert store.record(after, T0 + 1799) == []  # the approved instruction is in force
        assert len(store.record(after, T0 + 1800)) == 1
        states = [(s.state, s.instruction) for s in store.list()]
        assert states == [(DISMISSED, None), (APPROVED, b"\x09" * 32), (OPEN, None)]
        assert [s.suggestion.id for s in store.list(OPEN)] == [after[0].id]
    finally:
        store.close()


def test_the_store_pages_the_newest_suggestions(tmp_path: Path) -> None:
    store = SuggestionStore(tmp_path / "s.db")
    try:
        ids = []
        for k in range(5):  # five suggestions for five feeders
            (s,) = fired(series(50, 50))
            s = replace(s, id=f"{k:064x}", feeder=f"feeder-{k}")
            store.record([s], T0 + k)
            ids.append(s.id)
        page, nxt = store.page(None, None, 2)
        assert [s.suggestion.id for s in page] == ids[3:] and nxt is not None  # oldest first
        page, nxt = store.page(None, nxt, 2)
        assert [s.suggestion.id for s in page] == ids[1:3] and nxt is not None
        page, nxt = store.page(None, nxt, 2)
        assert [s.suggestion.id for s in page] == ids[:1] and nxt is None
        assert [s.suggestion.id for s in store.page(None, None, 100)[0]] == ids  # as list()
        store.dismissed(ids[4], T0)
        assert [s.suggestion.id for s in store.page(OPEN, None, 1)[0]] == ids[3:4]
    finally:
        store.close()


def test_the_dispatcher_keeps_a_bounded_number_of_intervals() -> None:
    views = {ivl: object() for ivl in range(10)}
    Dispatcher._prune(views, 3)  # type: ignore[arg-type]
    assert sorted(views) == [7, 8, 9]
    assert KEPT_IVLS == 10_000  # the most intervals one rule's run can span


# --- on the chain ------------------------------------------------------------------------------
@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    with running_chain(tmp_path) as c:
        yield c


def post_rules(chain: Chain, text: str, name: str = "district-7", version: int = 1,
               key: P.SigningKey | None = None) -> tuple[int, dict[str, Any]]:
    return chain.post(chain.sign(key or chain.key, C.RULES, C.rules_body(name, version, text),
                                 check=False))


def test_rules_transactions_and_their_refusals(chain: Chain) -> None:
    status, r1 = post_rules(chain, EXAMPLE)
    assert status == 200, r1
    status, doc = chain.get("/v1/rules")
    assert doc == {"rules": [{"name": "district-7", "version": 1,
                              "digest": C.rules_digest(EXAMPLE).hex(), "height": r1["height"],
                              "index": r1["index"], "text": EXAMPLE}]}
    v2 = EXAMPLE.replace("version = 1", "version = 2")
    for version, reason in ((1, "rules_version"), (0, "bad_fields")):
        status, doc = post_rules(chain, v2, version=version)
        assert (status, doc["error"]) == (400, reason), doc
    assert "at version 1; version 1 is not newer" in post_rules(chain, v2)[1]["detail"]
    status, doc = post_rules(chain, EXAMPLE, name="other", version=5)
    assert (status, doc["error"]) == (400, "rules_registered"), doc
    fog = chain.register("fog")
    status, doc = post_rules(chain, v2, version=2, key=fog)
    assert (status, doc["error"]) == (400, "not_permitted"), doc
    assert post_rules(chain, v2, version=3)[0] == 200  # versions may skip ahead
    assert [r["version"] for r in chain.get("/v1/rules")[1]["rules"]] == [1, 3]
    # instructions may cite a registered rule set, and no other
    cite = C.instruction_body(fog.id, "limit", {1: 100}, T0, rule=C.rules_digest(EXAMPLE))
    assert chain.post(chain.sign(chain.key, C.INSTRUCTION, cite))[0] == 200
    status, doc = chain.post(chain.sign(chain.key, C.INSTRUCTION, {**cite, 7: b"\x05" * 32}))
    assert (status, doc["error"]) == (400, "unknown_rules"), doc


def anchor_peak(chain: Chain, fs: FogSide, ivls: list[int], kw: float = 50) -> None:
    for ivl in ivls:
        fs.close_interval(ivl, [{"feeder": "feeder-a", "imp": int(kw * KW)},
                                {"feeder": "feeder-b", "imp": KW}])
    status, doc = chain.post(chain.sign(fs.key, C.ANCHOR, fs.anchor()))
    assert status == 200, doc


def test_rules_to_an_approved_instruction_through_the_api(chain: Chain, tmp_path: Path) -> None:
    assert post_rules(chain, EXAMPLE)[0] == 200
    fs = FogSide(tmp_path)
    try:
        chain.register("fog", fs.key, name="fog-1")
        fs.grow(3, IVL - 60)
        anchor_peak(chain, fs, [IVL])
        assert chain.get("/v1/suggestions")[1] == {"suggestions": [], "next": None}  # N-1
        anchor_peak(chain, fs, [IVL + 900])
        status, doc = chain.get("/v1/suggestions?state=open")
        assert status == 200
        (s,) = doc["suggestions"]
        assert (s["fog"], s["feeder"], s["rule"], s["rules_digest"], s["ivls"], s["values"],
                s["op"], s["args"], s["devs"], s["state"]) == (
            fs.key.id_hex, "feeder-a", "curtail-evening-peak", RS.digest.hex(),
            [IVL, IVL + 900], [50.0, 50.0], "limit", {"max_w": 1500}, [DEV], "open")
        path = f"/v1/suggestions/{s['id']}/approve"
        for token in (None, "wrong", "Bearer"):
            status, doc = chain.post_auth(path, token)
            assert (status, doc["error"]) == (401, "unauthorized"), doc
        status, doc = chain.post_auth(path)
        assert status == 200, doc
        assert set(doc) == {"instruction", "height", "index"}
        tx = chain.ledger.tx(bytes.fromhex(doc["instruction"]))
        body = P.parse(tx.tx).fields[4]
        assert body[1] == fs.key.id and body[7] == RS.digest and body[3] == {1: 1500}
        assert body[5] == [bytes.fromhex(DEV)] and body[2] == "limit"
        status, listed = chain.get(f"/v1/instructions?fog={fs.key.id_hex}")
        assert [i["digest"] for i in listed["instructions"]] == [doc["instruction"]]
        (s,) = chain.get("/v1/suggestions")[1]["suggestions"]
        assert (s["state"], s["instruction"]) == ("approved", doc["instruction"])
        assert s["not_after"] == body[4]
        status, again = chain.post_auth(path)
        assert (status, again["error"]) == (409, "not_open"), again
        status, gone = chain.post_auth(f"/v1/suggestions/{'ab' * 32}/dismiss")
        assert (status, gone["error"]) == (404, "not_found")
        assert chain.get("/v1/suggestions?state=maybe")[0] == 400
    finally:
        fs.close()


def test_the_chain_refuses_a_rule_set_that_does_not_validate(chain: Chain) -> None:
    for text, key in ((rule_file(op=["limit"]), "op"), (rule_file(valid_s=2**62), "valid_s"),
                      ("name = \n", "not TOML"), ("x = " + "[" * 3000, "nested deeper")):
        status, doc = post_rules(chain, text, name="n")
        assert (status, doc["error"]) == (400, "rules_invalid"), doc
        assert key in doc["detail"] and "rule set 'n' v1" in doc["detail"]
    assert chain.get("/v1/rules")[1] == {"rules": []}
    assert post_rules(chain, rule_file(), name="n")[0] == 200


def test_a_stored_rule_set_that_does_not_parse_is_skipped_never_a_500(
        chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A chain from before `rules_invalid` may hold any text: the dispatcher logs, counts and
    skips it, and serves the other rule sets (suggestions and approval answer 200)."""
    assert post_rules(chain, EXAMPLE)[0] == 200
    stored = chain.ledger.rules
    bad = [RuleSetView(1, 0, "old", 1, C.rules_digest(t), t)
           for t in (rule_file(op=["limit"]), "x = " + "[" * 5000, rule_file(valid_s=2**70))]
    monkeypatch.setattr(chain.ledger, "rules", lambda: [*bad, *stored()])
    fs = FogSide(tmp_path)
    try:
        chain.register("fog", fs.key, name="fog-1")
        fs.grow(3, IVL - 60)
        anchor_peak(chain, fs, [IVL, IVL + 900])
        with caplog.at_level("WARNING", "aggregator.dispatch.suggestions"):
            status, doc = chain.get("/v1/suggestions")
        assert status == 200, doc
        (s,) = doc["suggestions"]
        assert s["rules_name"] == "district-7"
        # the newest version of "old" (v1) is skipped: bad[0] is the one named, counted once
        assert chain.dispatcher.counters["rules_skipped"] == 1
        assert "skipping registered rule set old" in caplog.text and "op:" in caplog.text
        assert chain.get("/v1/suggestions")[0] == 200
        assert chain.dispatcher.counters["rules_skipped"] == 1  # parsed once per digest
        status, done = chain.post_auth(f"/v1/suggestions/{s['id']}/approve")
        assert status == 200, done
    finally:
        fs.close()


def test_every_stored_text_is_skipped_or_parsed(chain: Chain,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [rule_file(op=["limit"]), "x = " + "[" * 5000, rule_file(valid_s=2**70),
             'name = "n"\nversion = 1' + "0" * 5000 + "\n", "\x00", EXAMPLE]
    views = [RuleSetView(1, i, f"old-{i}", 1, C.rules_digest(t), t) for i, t in enumerate(texts)]
    monkeypatch.setattr(chain.ledger, "rules", lambda: views)
    assert chain.get("/v1/suggestions") == (200, {"suggestions": [], "next": None})
    assert chain.dispatcher.counters["rules_skipped"] == len(texts) - 1


# --- the CLI ----------------------------------------------------------------------------------
def agg_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aggregator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_rules_register_suggestions_and_approve_from_the_cli(tmp_path: Path) -> None:
    d = tmp_path / "agg"
    assert agg_cli("init", "--data-dir", str(d)).returncode == 0
    token = d / "dispatch.token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text().strip()) == 64
    (tmp_path / "bad.toml").write_text(rule_file(metric="power"))
    out = agg_cli("rules", "register", str(tmp_path / "bad.toml"), "--data-dir", str(d))
    assert out.returncode == 2 and "rule 'r1': metric: 'power'" in out.stderr
    # a wrong kind anywhere: one line, exit 2 (it used to be a TypeError's traceback)
    for text, what in ((rule_file(op=["limit"]), "rule 'r1': op: ['limit'] is not one of"),
                       ("x = " + "[" * 100000, "nested deeper than 8")):
        (tmp_path / "bad.toml").write_text(text)
        out = agg_cli("rules", "register", str(tmp_path / "bad.toml"), "--data-dir", str(d))
        assert out.returncode == 2 and what in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ")
    (tmp_path / "d7.toml").write_text(EXAMPLE)
    out = agg_cli("rules", "register", str(tmp_path / "d7.toml"), "--data-dir", str(d))
    assert out.returncode == 0, out.stderr
    assert f"registered rule set district-7 v1 ({RS.digest.hex()})" in out.stdout
    fs = FogSide(tmp_path)
    try:
        ledger = open_ledger(d, lambda: T0)
        key = P.SigningKey.from_bytes(bytes.fromhex((d / "dispatch.key").read_text()))
        try:
            def submit(k: P.SigningKey, kind: str, body: dict[int, Any]) -> None:
                p = ledger.participant(k.id)
                nonce = (p.nonce if p else 0) + 1
                ledger.submit(P.sign1(k, C.tx(k.id, nonce, kind, body, T0, key.id)))

            submit(key, C.REGISTER, C.register_body("fog", fs.key.public_key.raw, "fog-1"))
            fs.grow(1, IVL - 60)
            for ivl in (IVL, IVL + 900):
                fs.close_interval(ivl, [{"feeder": "feeder-a", "imp": 60 * KW}])
            submit(fs.key, C.ANCHOR, fs.anchor())
        finally:
            ledger.close()
        out = agg_cli("suggestions", "--data-dir", str(d))
        assert out.returncode == 0, out.stderr
        (s,) = [json.loads(line) for line in out.stdout.splitlines()]
        assert s["state"] == "open" and s["values"] == [60.0, 60.0]
        out = agg_cli("approve", s["id"], "--data-dir", str(d))  # no aggregator runs
        assert out.returncode == 0, out.stderr
        done = json.loads(out.stdout)
        out = agg_cli("suggestions", "--data-dir", str(d), "--state", "approved")
        assert json.loads(out.stdout)["instruction"] == done["instruction"]
        # and through a running aggregator, with the data dir's token
        proc = subprocess.Popen([sys.executable, "-m", "aggregator", "run", "--data-dir",
                                 str(d), "--http-port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[-1]
            # the approved limit is in force (real time), so feeder-a stays quiet; version 2
            # of the rule set, registered through the running node, covers every feeder
            (tmp_path / "d7.toml").write_text(EXAMPLE.replace("version = 1", "version = 2")
                                              .replace('"feeder-a"  ', '"*"  '))
            out = agg_cli("rules", "register", str(tmp_path / "d7.toml"), "--data-dir", str(d))
            assert out.returncode == 0 and "district-7 v2" in out.stdout, out.stderr
            for ivl in (IVL + 1800, IVL + 2700):
                fs.close_interval(ivl, [{"feeder": "feeder-a", "imp": 60 * KW},
                                        {"feeder": "feeder-b", "imp": 45 * KW}])
            raw = P.sign1(fs.key, C.tx(fs.key.id, 2, C.ANCHOR, fs.anchor(), T0, key.id))
            assert http(url + "/v1/tx", "POST", raw)[0] == 200
            out = agg_cli("suggestions", "--chain", url, "--state", "open")
            (s2,) = [json.loads(line) for line in out.stdout.splitlines()]
            assert (s2["feeder"], s2["ivls"]) == ("feeder-b", [IVL + 1800, IVL + 2700])
            out = agg_cli("approve", s2["id"], "--chain", url)
            assert out.returncode == 2 and "needs the dispatch token" in out.stderr
            out = agg_cli("approve", s2["id"], "--data-dir", str(d))
            assert out.returncode == 0, out.stderr
            second = json.loads(out.stdout)
            out = agg_cli("dismiss", s2["id"], "--data-dir", str(d))
            assert out.returncode == 2 and "409 not_open" in out.stderr
            _, listed = http(f"{url}/v1/instructions?fog={fs.key.id_hex}")
            assert [i["digest"] for i in listed["instructions"]] == [done["instruction"],
                                                                    second["instruction"]]
        finally:
            proc.terminate()
            proc.wait(30)
        assert "ok" in agg_cli("verify-chain", "--data-dir", str(d)).stdout
    finally:
        fs.close()
