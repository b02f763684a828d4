"""meterledger.wire.chain, the pure rules of the dispatch chain: type 12/13 schemas and body rules,
the block's transaction tree, and the SPEC section 8 anchor rule built from real fog logs
(fog_node's log store and signed checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fog_node.log.checkpoints import Checkpoint
from fog_node.log.store import MemoryLogStore
from meterledger import wire as P
from meterledger.wire import anchor as A
from meterledger.wire import chain as C
from meterledger.wire import merkle
from meterledger.wire.cbor import ProtocolError
from tests import merkle_reference as ref
from tests.kit.chainkit import T0, FogSide, aggregate_fields

SENDER = P.SigningKey.from_int(0xC0FFEE)
CHAIN = bytes(range(8))
PUB = P.SigningKey.from_int(7).public_key.raw
ID8, D32 = b"\x01" * 8, b"\x02" * 32


def signed(kind: Any, body: Any, override: dict[int, Any] | None = None) -> bytes:
    fields = C.tx(SENDER.id, 1, kind, body, T0, CHAIN)
    fields.update(override or {})
    return P.sign1(SENDER, fields, check=False)


# every way a transaction's fields or body can break the schema: (id, kind, body, fragment
# of the detail). Shared with the HTTP tests, which must answer each with 400 bad_fields.
BAD_BODIES: list[tuple[str, str, dict[Any, Any], str]] = [
    ("register-unknown-key", "register", {1: "fog", 2: PUB, 3: "", 4: 1}, "no field 4"),
    ("register-missing-name", "register", {1: "fog", 2: PUB}, "missing field 3"),
    ("register-role-not-text", "register", {1: 1, 2: PUB, 3: ""}, "field 1 must be t"),
    ("register-unknown-role", "register", {1: "king", 2: PUB, 3: ""}, "role must be one of"),
    ("register-short-pub", "register", {1: "fog", 2: PUB[:64], 3: ""}, "field 2 must be b65"),
    ("register-pub-off-curve", "register", {1: "fog", 2: b"\x04" + b"\x01" * 64, 3: ""},
     "not a point on P-256"),
    ("anchor-no-checkpoints", "anchor", {1: [], 2: []}, "carries no checkpoint"),
    ("anchor-checkpoint-not-bytes", "anchor", {1: [1], 2: []}, "checkpoints has an item"),
    ("anchor-proof-short-hash", "anchor", {1: [b"x"], 2: [b"\x00" * 31]}, "proof has an item"),
    ("anchor-proof-not-array", "anchor", {1: [b"x"], 2: b"\x00" * 32}, "field 2 must be a"),
    ("anchor-aggregate-not-bytes", "anchor", {1: [b"x"], 2: [], 3: ["agg"]},
     "aggregates has an item"),
    ("instruction-unknown-op", "instruction",
     C.instruction_body(ID8, "explode", {}, T0), "unknown op"),
    ("instruction-bad-args", "instruction",
     C.instruction_body(ID8, "relay", {1: 1}, T0), "relay takes"),
    ("instruction-time-op", "instruction",
     C.instruction_body(ID8, "time", {1: T0}, T0), "fog's own business"),
    ("instruction-reboot-op", "instruction",
     C.instruction_body(ID8, "reboot", {}, T0), "fog's own business"),
    ("instruction-short-dev", "instruction",
     C.instruction_body(ID8, "ping", {}, T0, devs=[b"\x01" * 7]), "devs must be"),
    ("instruction-fog-not-id", "instruction",
     {**C.instruction_body(ID8, "ping", {}, T0), 1: b"\x01" * 9}, "field 1 must be b8"),
    ("instruction-rule-not-bytes", "instruction",
     {**C.instruction_body(ID8, "ping", {}, T0), 7: "r"}, "field 7 must be b"),
    ("report-short-id", "report", C.report_body(D32[:31], 1, 0, 0, []), "field 1 must be b32"),
    ("report-negative-count", "report", {**C.report_body(D32, 1, 0, 0, []), 3: -1},
     "field 3 must be u"),
    ("report-entry-negative", "report", C.report_body(D32, 1, 0, 0, [-1]), "log indices"),
    ("report-entry-text", "report", C.report_body(D32, 1, 0, 0, ["7"]),  # type: ignore[list-item]
     "log indices"),
    ("fault-missing-action", "fault", {1: "k", 2: "d", 3: T0, 5: []}, "missing field 4"),
    ("fault-t-text", "fault", {**C.fault_body("k", "d", T0, "a"), 3: "now"},
     "field 3 must be u"),
    ("rules-empty-name", "rules", C.rules_body("", 1, "x"), "field 1 has 0 bytes of UTF-8, outside"),
    ("rules-version-0", "rules", C.rules_body("r", 0, "x"), "field 2 is 0, outside"),
    ("rules-wrong-digest", "rules", {**C.rules_body("r", 1, "x"), 4: D32},
     "not the SHA-256 of the text"),
    ("rules-text-bytes", "rules", {**C.rules_body("r", 1, "x"), 3: b"x"}, "field 3 must be t"),
    ("rules-missing-digest", "rules", {1: "r", 2: 1, 3: "x"}, "missing field 4"),
    ("unknown-kind", "vote", {}, "unknown transaction kind"),
]


@pytest.mark.parametrize("kind,body,fragment", [b[1:] for b in BAD_BODIES],
                         ids=[b[0] for b in BAD_BODIES])
def test_every_body_rule_is_bad_fields(kind: str, body: dict[Any, Any], fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment) as e:
        P.verify(signed(kind, body), SENDER.public_key)
    assert e.value.reason == "bad_fields"


@pytest.mark.parametrize("override,fragment", [
    ({2: 0}, r"field 2 \(nonce\) is 0, outside"),
    ({6: b"\x00" * 7}, r"field 6 \(chain\) must be b8"),
    ({5: -1}, r"field 5 \(t\) must be u"),
    ({4: []}, r"field 4 \(body\) must be m"),
    ({9: 1}, "has no field 9"),
], ids=["nonce-0", "short-chain", "negative-t", "body-not-map", "extra-field"])
def test_transaction_field_rules(override: dict[int, Any], fragment: str) -> None:
    raw = signed("fault", C.fault_body("k", "d", T0, "a"), override)
    with pytest.raises(ProtocolError, match=fragment) as e:
        P.parse(raw)
    assert e.value.reason == "bad_fields"


def test_good_bodies_of_every_kind_parse() -> None:
    bodies = {
        "register": C.register_body("regulator", PUB, "the regulator"),
        "anchor": C.anchor_body([b"cp"], [D32], [b"agg"]),
        "instruction": C.instruction_body(ID8, "limit", {1: 5000}, T0, [ID8], "peak", D32),
        "report": C.report_body(D32, 3, 1, 0, [0, 5, 9], "ok"),
        "fault": C.fault_body("rs485", "bus silent", T0, "restarted", [4]),
        "rules": C.rules_body("district-7", 3, "name = \"district-7\"\n"),
    }
    for kind, body in bodies.items():
        m = P.verify(signed(kind, body), SENDER.public_key)
        assert m.type == C.TX and m.fields[3] == kind and m.fields[4] == body


def test_block_header_rules() -> None:
    good = C.block_header(SENDER.id, 0, P.ZERO32, D32, 1, T0, CHAIN)
    assert P.parse(P.sign1(SENDER, good)).fields == good
    with pytest.raises(ProtocolError, match="prev must be 32 zero bytes at height 0") as e:
        P.parse(P.sign1(SENDER, {**good, 3: D32}, check=False))
    assert e.value.reason == "bad_fields"
    later = P.parse(P.sign1(SENDER, {**good, 2: 5, 3: D32}))  # any prev above genesis
    assert later.fields[2] == 5


@pytest.mark.parametrize("n", range(1, 12))
def test_tx_root_and_paths_match_rfc9162(n: int) -> None:
    txs = [b"tx %d" % i + bytes(i) for i in range(n)]
    root = C.tx_root(txs)
    assert root == ref.mth(txs)
    for i, tx in enumerate(txs):
        path = C.tx_path(txs, i)
        assert path == ref.path(i, txs)
        merkle.verify_inclusion(merkle.leaf_hash(tx), i, n, path, root)
        with pytest.raises(merkle.InclusionError):
            merkle.verify_inclusion(merkle.leaf_hash(tx + b"!"), i, n, path, root)


def test_empty_block_root_is_the_empty_tree() -> None:
    assert C.tx_root([]) == merkle.EMPTY_ROOT


# --- the anchor rule -------------------------------------------------------------------------
@pytest.fixture
def fog(tmp_path: Path) -> Any:
    f = FogSide(tmp_path)
    yield f
    f.close()


def forged(key: P.SigningKey, height: int, size: int, root: bytes, prev: bytes,
           t: int = T0) -> bytes:
    """A checkpoint a misbehaving fog signs by hand."""
    return P.sign1(key, P.checkpoint(key.id, height, size, root, prev, t), check=False)


def head(cp: Checkpoint) -> A.AnchoredHead:
    return A.AnchoredHead.of(P.parse(cp.msg))


def refused(body: dict[int, Any], fog: FogSide, last: A.AnchoredHead | None, reason: str,
            fragment: str | None = None) -> None:
    with pytest.raises(C.ChainTxError, match=fragment) as e:
        A.check_anchor(body, fog.key.public_key, last)
    assert e.value.reason == reason, e.value


def test_first_anchor_then_a_continuation_are_accepted(fog: FogSide) -> None:
    fog.grow(3)
    fog.grow(4, T0 + 5)
    cps = A.check_anchor(fog.anchor(), fog.key.public_key, None)
    assert [c.fields[2] for c in cps] == [1, 2] and cps[-1].fields[3] == 7
    last = A.AnchoredHead.of(cps[-1])
    assert (last.height, last.size, last.root) == (2, 7, fog.log.root(7))
    fog.grow(9, T0 + 10)
    fog.grow(0, T0 + 10)  # an unchanged log may be checkpointed again (same size, same t)
    cps2 = A.check_anchor(fog.anchor(), fog.key.public_key, last)
    assert [c.fields[2] for c in cps2] == [3, 4] and cps2[-1].fields[3] == 16


def test_first_anchor_of_an_empty_log(fog: FogSide) -> None:
    fog.grow(0)
    cps = A.check_anchor(fog.anchor(), fog.key.public_key, None)
    assert cps[0].fields[3] == 0 and cps[0].fields[4] == merkle.EMPTY_ROOT


def test_rewritten_log_same_size_is_anchor_consistency(tmp_path: Path, fog: FogSide) -> None:
    fog.grow(5)
    last = head(fog.checkpoints.latest())  # type: ignore[arg-type]
    fog.anchor()
    # the fog rewrites its log: different entries, same size, and signs it as height 2
    other = MemoryLogStore()
    other.append_batch([b"rewritten %d" % i for i in range(5)])
    cp = forged(fog.key, 2, 5, other.root(), last.digest)
    refused(C.anchor_body([cp], []), fog, last, "anchor_consistency", "different roots")
    # and grown past the anchored size
    other.append_batch([b"more %d" % i for i in range(4)])
    cp = forged(fog.key, 2, 9, other.root(), last.digest)
    refused(C.anchor_body([cp], other.consistency_proof(5, 9).path), fog, last,
            "anchor_consistency")


def test_a_fork_after_anchoring_is_anchor_consistency(fog: FogSide) -> None:
    fog.grow(6)
    last = head(fog.checkpoints.latest())  # type: ignore[arg-type]
    # a second log sharing the first 4 entries, then diverging
    fork = MemoryLogStore()
    fork.append_batch([fog.log.entry(i) for i in range(4)] + [b"fork %d" % i for i in range(7)])
    cp = forged(fog.key, 2, 11, fork.root(), last.digest)
    refused(C.anchor_body([cp], fork.consistency_proof(6, 11).path), fog, last,
            "anchor_consistency")
    # the honest continuation of the same log is accepted
    fog.anchored = fog.checkpoints.latest()
    fog.grow(5)
    assert A.check_anchor(fog.anchor(), fog.key.public_key, last)[-1].fields[3] == 11


def test_a_proof_for_other_sizes_is_anchor_consistency(fog: FogSide) -> None:
    fog.grow(5)
    fog.anchor()
    last = head(fog.checkpoints.latest())  # type: ignore[arg-type]
    fog.grow(6)
    body = fog.anchor()
    body[2] = fog.log.consistency_proof(3, 11).path  # a real proof, from the wrong size
    refused(body, fog, last, "anchor_consistency")
    body[2] = []
    refused(body, fog, last, "anchor_consistency", "too short")


def test_first_anchor_must_start_at_height_1(fog: FogSide) -> None:
    fog.grow(2)
    fog.grow(2)
    cp2 = fog.checkpoints.at_height(2)
    assert cp2 is not None
    refused(C.anchor_body([cp2.msg], []), fog, None, "anchor_height", "expected 1")


def test_skipping_a_checkpoint_is_anchor_height(fog: FogSide) -> None:
    fog.grow(2)
    last = head(fog.checkpoints.latest())  # type: ignore[arg-type]
    fog.anchor()
    fog.grow(2)
    cp3 = fog.grow(2)
    refused(C.anchor_body([cp3.msg], fog.log.consistency_proof(2, 6).path), fog, last,
            "anchor_height", "height 3, expected 2")


def test_a_broken_prev_link_is_anchor_prev(fog: FogSide) -> None:
    fog.grow(2)
    last = head(fog.checkpoints.latest())  # type: ignore[arg-type]
    fog.log.append_batch([b"x", b"y"])
    cp = forged(fog.key, 2, 4, fog.log.root(), b"\x07" * 32)
    refused(C.anchor_body([cp], fog.log.consistency_proof(2, 4).path), fog, last,
            "anchor_prev")
    # also inside one anchor: the second carried checkpoint does not link to the first
    good2 = forged(fog.key, 2, 4, fog.log.root(), last.digest)
    bad3 = forged(fog.key, 3, 4, fog.log.root(), last.digest)
    refused(C.anchor_body([good2, bad3], fog.log.consistency_proof(2, 4).path), fog, last,
            "anchor_prev", "checkpoint 1")


def test_a_shrinking_size_is_anchor_size_shrank(fog: FogSide) -> None:
    fog.grow(6)
    last = head(fog.checkpoints.latest())  # type: ignore[arg-type]
    cp = forged(fog.key, 2, 4, fog.log.root(4), last.digest)
    refused(C.anchor_body([cp], []), fog, last, "anchor_size_shrank", "size 4, below the "
                                                                      "previous 6")


def test_time_going_back_is_anchor_t_backwards(fog: FogSide) -> None:
    fog.grow(2, T0 + 100)
    last = head(fog.checkpoints.latest())  # type: ignore[arg-type]
    cp = forged(fog.key, 2, 2, fog.log.root(), last.digest, T0 + 99)
    refused(C.anchor_body([cp], []), fog, last, "anchor_t_backwards")


def test_a_checkpoint_of_another_fog_is_anchor_wrong_fog(tmp_path: Path, fog: FogSide) -> None:
    other = FogSide(tmp_path, name="other")
    try:
        other.grow(3)
        refused(other.anchor(), fog, None, "anchor_wrong_fog", "not by the sending fog")
    finally:
        other.close()


def test_bad_checkpoints_are_anchor_bad_checkpoint(fog: FogSide) -> None:
    fog.grow(3)
    body = fog.anchor()
    good = body[1][0]
    flipped = good[:-1] + bytes([good[-1] ^ 1])  # a byte of the signature
    refused({**body, 1: [flipped]}, fog, None, "anchor_bad_checkpoint", "bad_signature")
    refused({**body, 1: [good[:-3]]}, fog, None, "anchor_bad_checkpoint", "malformed")
    # a fog-signed message of another type (an ack has the fog as signer)
    ack = P.sign1(fog.key, P.ack(ID8, 1, D32, T0, fog.key.id))
    refused({**body, 1: [ack]}, fog, None, "anchor_bad_checkpoint", "not a type-6 message")
    # a checkpoint breaking its own schema (height 0)
    zero = forged(fog.key, 0, 3, fog.log.root(), P.ZERO32)
    refused({**body, 1: [zero]}, fog, None, "anchor_bad_checkpoint", "bad_fields")
    # a checkpoint signed by a key that is not the fog's, claiming to be the fog's
    impostor = P.SigningKey.generate()
    fields = P.checkpoint(fog.key.id, 1, 3, fog.log.root(), P.ZERO32, T0)
    env = P.sign1(impostor, fields, check=False)
    env = env.replace(impostor.id, fog.key.id, 1)  # the kid says fog, the signature does not
    refused({**body, 1: [env]}, fog, None, "anchor_bad_checkpoint", "bad_signature")


def test_an_anchor_without_checkpoints_is_refused(fog: FogSide) -> None:
    refused({1: [], 2: []}, fog, None, "bad_fields", "carries no checkpoint")


def test_fog_node_never_imports_aggregator() -> None:
    import ast

    root = Path(__file__).resolve().parents[2] / "fog_node"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "aggregator"]
    assert len(list(root.rglob("*.py"))) > 20 and offenders == []


# --- aggregates in anchors (type 11) ----------------------------------------------------------
def test_aggregates_and_the_closes_that_commit_to_them(fog: FogSide) -> None:
    fog.grow(2)
    raws = fog.close_interval(T0 - T0 % 900, [{"feeder": "a", "imp": 5}, {"feeder": "b",
                                                                         "imp": 6}])
    body = fog.anchor()
    checked = A.checked_anchor(body, fog.key.public_key, None)
    assert [a.raw for a in checked.aggregates] == raws == [
        a.raw for a in A.anchor_aggregates(body, fog.key.public_key)]
    assert A.check_anchor(body, fog.key.public_key, None) == checked.checkpoints
    last = A.AnchoredHead.of(checked.checkpoints[-1])
    # a revision chained onto the anchored close: refused unless the chain knows its prev
    rev = fog.log_aggregates([aggregate_fields(fog.key.id, "a", T0 - T0 % 900, 7, rev=1,
                                               replaces=P.digest(raws[0]),
                                               prev=P.digest(raws[1]))])
    fog.grow(0)
    body2 = fog.anchor()
    refused(body2, fog, last, "anchor_aggregate_chain")
    known = {P.digest(r) for r in raws}
    assert A.checked_anchor(body2, fog.key.public_key, last,
                            known.__contains__).aggregates[0].raw == rev[0]
    with pytest.raises(C.ChainTxError, match="earlier anchor") as e:
        A.check_anchor(body, fog.key.public_key, None, known.__contains__)
    assert e.value.reason == "anchor_bad_aggregate"
