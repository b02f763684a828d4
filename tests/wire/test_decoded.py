"""meterledger.wire.decoded: chain messages by name (the chain API's `decoded` views), pure,
checked against hand-built messages of every kind."""

from __future__ import annotations

from typing import Any

import pytest

from meterledger import wire as P
from meterledger.errors import ProtocolError
from meterledger.wire import chain as C
from meterledger.wire.decoded import BODY_NAMES, decode_header, decode_message, decode_tx, tx_kind
from tests.kit.chainkit import T0, aggregate_fields

SENDER = P.SigningKey.from_int(0xC0FFEE)
FOG = P.SigningKey.from_int(0xF06)
CHAIN = bytes(range(8))
D32 = b"\x02" * 32


def tx(kind: str, body: dict[int, Any]) -> bytes:
    return P.sign1(SENDER, C.tx(SENDER.id, 5, kind, body, T0, CHAIN), check=False)


def test_every_kind_has_its_body_named_as_the_schema_lists_it() -> None:
    assert set(BODY_NAMES) == set(C.KINDS)
    for kind, schema in C.BODIES.items():
        assert set(BODY_NAMES[kind]) == set(schema), kind


@pytest.mark.parametrize("kind,body,named", [
    (C.REGISTER, C.register_body("fog", b"\x04" * 65, "north"),
     {"role": "fog", "pub": "04" * 65, "name": "north"}),
    (C.INSTRUCTION, C.instruction_body(FOG.id, "limit", {1: 1500}, T0 + 900, [b"\x01" * 8],
                                       "peak", D32),
     {"fog": FOG.id.hex(), "op": "limit", "args": {"1": 1500}, "not_after": T0 + 900,
      "devs": ["01" * 8], "why": "peak", "rule": "02" * 32}),
    (C.REPORT, C.report_body(D32, 3, 1, 0, [9, 10], "ok"),
     {"instruction": "02" * 32, "done": 3, "rejected": 1, "failed": 0, "entries": [9, 10],
      "detail": "ok"}),
    (C.FAULT, C.fault_body("rs485", "silent", T0, "retry", [4]),
     {"kind": "rs485", "detail": "silent", "t": T0, "action": "retry", "entries": [4]}),
    (C.RULES, C.rules_body("d7", 2, "x = 1\n"),
     {"name": "d7", "version": 2, "text": "x = 1\n", "digest": C.rules_digest("x = 1\n").hex()}),
])
def test_a_transaction_by_name(kind: str, body: dict[int, Any], named: dict[str, Any]) -> None:
    raw = tx(kind, body)
    assert decode_tx(raw) == {
        "digest": P.digest(raw).hex(), "type_name": "transaction", "type": 12,
        "from": SENDER.id.hex(), "nonce": 5, "kind": kind, "body": named, "t": T0,
        "chain": CHAIN.hex()}
    assert decode_message(raw) == decode_tx(raw)
    assert tx_kind(raw) == kind


def test_an_anchor_decodes_what_it_carries_in_place() -> None:
    cp = P.sign1(FOG, P.checkpoint(FOG.id, 4, 12, D32, b"\x03" * 32, T0, T0 - 900, D32))
    agg = P.sign1(FOG, aggregate_fields(FOG.id, "feeder-a", T0 - 900, 4200, 7))
    raw = tx(C.ANCHOR, C.anchor_body([cp, b"not a message"], [D32], [agg]))
    body = decode_tx(raw)["body"]
    assert body["proof"] == ["02" * 32]
    assert body["checkpoints"][0] == {
        "digest": P.digest(cp).hex(), "type_name": "checkpoint", "type": 6, "fog": FOG.id.hex(),
        "height": 4, "size": 12, "root": "02" * 32, "prev": "03" * 32, "t": T0,
        "ivl": T0 - 900, "agg": "02" * 32}
    assert body["checkpoints"][1]["error"] == "malformed"
    assert body["checkpoints"][1]["raw"] == b"not a message".hex()
    (a,) = body["aggregates"]
    assert (a["type_name"], a["fog"], a["feeder"], a["ivl"], a["imp"], a["exp"]) == (
        "aggregate", FOG.id.hex(), "feeder-a", T0 - 900, 4200, 7)


def test_a_block_header_by_name() -> None:
    raw = P.sign1(SENDER, C.block_header(SENDER.id, 7, D32, b"\x05" * 32, 3, T0, CHAIN))
    assert decode_header(raw) == {
        "hash": P.digest(raw).hex(), "type_name": "block", "type": 13, "sealer": SENDER.id.hex(),
        "height": 7, "prev": "02" * 32, "txroot": "05" * 32, "ntx": 3, "t": T0,
        "chain": CHAIN.hex()}


def test_what_is_not_a_transaction_or_a_header_is_refused() -> None:
    header = P.sign1(SENDER, C.block_header(SENDER.id, 7, D32, D32, 3, T0, CHAIN))
    with pytest.raises(ProtocolError, match="not a transaction"):
        decode_tx(header)
    with pytest.raises(ProtocolError, match="not a block header"):
        decode_header(tx(C.FAULT, C.fault_body("k", "", T0, "", [])))
    for junk in (b"", b"\x00" * 10):
        with pytest.raises(ProtocolError):
            decode_tx(junk)
