"""Seeds: fixed keys, a valid payload of every message type, signed messages, the SPEC
golden vectors, hostile values, and a valid proof bundle built offline.

Everything here is deterministic (keys from fixed scalars, fixed times), so a seed corpus
and a regression input mean the same thing in every run.
"""

from __future__ import annotations

import functools
from typing import Any

from meterledger import wire as P
from meterledger.wire import chain as C
from meterledger.wire import merkle
from tools.fuzz.base import from_json, golden

T0 = 1_800_000_000
IVL = T0 - T0 % 900
METER = P.SigningKey.from_int(101)  # enrolled at the fog
METER2 = P.SigningKey.from_int(102)  # enrolled at the fog
STRANGER = P.SigningKey.from_int(103)  # never enrolled
FOG = P.SigningKey.from_int(201)
DISPATCH = P.SigningKey.from_int(301)
CHAIN = DISPATCH.id  # the chain id is the dispatch key's id
D32 = bytes(range(32))

RULES_TEXT = '''name = "district-7"
version = 1
[[rule]]
id = "peak"
feeder = "*"
metric = "import_kw"
above = 40.0
for_intervals = 2
op = "limit"
args = { max_w = 1500 }
devs = ["0011223344556677"]
valid_s = 1800
why = "evening peak"
'''

# values a hostile sender puts anywhere: integer edges (CBOR's and SQLite's), wrong kinds,
# extreme lengths
HOSTILE: tuple[Any, ...] = (
    0, 1, -1, 23, 24, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53,
    2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**63), -(2**63) - 1, -(2**64),
    True, False, "", "x", "active", "revoked", "relay", "limit", "\x00", "é" * 300, "x" * 4000,
    b"", b"\x00", bytes(7), bytes(8), bytes(9), bytes(31), bytes(32), bytes(33), bytes(64),
    bytes(65), b"\x04" + bytes(64), bytes(4000),
    [], [0], [b""], [bytes(32)] * 40, [[[[]]]], {}, {1: 1}, {1: True}, {1: 2**64 - 1},
    {"a": 1}, {1: {1: {1: {}}}}, [bytes(8)] * 200,
)


def aggregate(feeder: str = "feeder-a", ivl: int = IVL, imp: int = 12_500,
              prev: bytes = P.ZERO32, fog: bytes = FOG.id) -> P.Fields:
    """A type-11 aggregate (as tests/kit/chainkit.aggregate_fields makes them)."""
    return {0: P.AGGREGATE, 1: feeder, 2: ivl, 3: 900, 4: imp, 5: 0, 6: 3, 7: 3, 8: 0, 9: 0,
            13: [], 14: 0, 15: prev, 16: 0, 17: fog, 19: b"\x5a" * 32}


def _golden_fields(name: str) -> P.Fields | None:
    for v in golden().get("valid", []):
        if v.get("name") == name:
            fields: P.Fields = from_json(v["fields"])
            return fields
    return None


@functools.cache
def templates() -> dict[int, P.Fields]:
    """A valid payload of every message type, signed by METER (1, 2, 5), FOG (3, 4, 6, 8,
    10, 11) or DISPATCH (12, 13)."""
    dev, fog = METER.id, FOG.id
    first = P.reading(dev, 1, T0, 900, 12_345, 0, 0, P.ZERO32)
    birth = _golden_fields("birth") or {0: P.BIRTH, 1: dev, 10: b"", 11: "1.0", 12: 0,
                                        13: 0, 14: "esp32", 15: "sim", 4: 900, 16: fog}
    result = _golden_fields("result") or {0: P.RESULT, 1: dev, 2: 1, 3: 0, 4: "", 5: T0}
    digest = P.digest(P.sign1(METER, first))
    out: dict[int, P.Fields] = {
        P.READING: first,
        P.BIRTH: {**birth, 1: dev, 10: METER.public_key.raw, 16: fog},
        P.ACK: P.ack(dev, 1, digest, T0, fog),
        P.COMMAND: P.command(dev, 1, "limit", {1: 1500}, T0 + 900, D32, fog),
        P.RESULT: {**result, 1: dev},
        P.CHECKPOINT: P.checkpoint(fog, 1, 1, merkle.leaf_hash(b"e"), P.ZERO32, T0),
        P.ENROLLMENT: P.enrollment(dev, METER.public_key.raw, "active", "", T0, fog),
        P.ESTIMATE: {0: P.ESTIMATE, 1: dev, 2: "estimate", 3: T0, 4: "linear", 5: digest,
                     6: 1, 7: D32, 8: 3, 9: T0, 10: [[T0 + 900, 10, 0]], 17: fog},
        P.AGGREGATE: aggregate(),
        C.TX: C.tx(DISPATCH.id, 2, C.RULES, C.rules_body("district-7", 1, RULES_TEXT), T0,
                   CHAIN),
        C.BLOCK: C.block_header(DISPATCH.id, 1, D32, D32, 1, T0, CHAIN),
    }
    return out


SIGNER = {P.READING: METER, P.BIRTH: METER, P.RESULT: METER, C.TX: DISPATCH,
          C.BLOCK: DISPATCH}


def signer(t: int) -> P.SigningKey:
    return SIGNER.get(t, FOG)


def tx_bodies() -> dict[str, dict[int, Any]]:
    """A valid body of every transaction kind."""
    return {
        C.REGISTER: C.register_body("fog", METER2.public_key.raw, "fog-2"),
        C.ANCHOR: C.anchor_body([P.sign1(FOG, templates()[P.CHECKPOINT])], [],
                                [P.sign1(FOG, aggregate())]),
        C.INSTRUCTION: C.instruction_body(FOG.id, "limit", {1: 1500}, T0 + 900, [METER.id],
                                          "peak", C.rules_digest(RULES_TEXT)),
        C.REPORT: C.report_body(D32, 1, 0, 0, [0, 1], "ok"),
        C.FAULT: C.fault_body("rs485", "bus silent", T0, "restarted", [4]),
        C.RULES: C.rules_body("district-7", 1, RULES_TEXT),
    }


@functools.cache
def messages() -> list[bytes]:
    """Signed messages: every type (unchecked where a template breaks a newer rule), every
    transaction kind, and the golden vectors, valid and broken."""
    out = [P.sign1(signer(t), f, check=False) for t, f in templates().items()]
    for kind, body in tx_bodies().items():
        key = FOG if kind in (C.ANCHOR, C.REPORT, C.FAULT) else DISPATCH
        out.append(P.sign1(key, C.tx(key.id, 2, kind, body, T0, CHAIN), check=False))
    g = golden()
    for v in [*g.get("valid", []), *g.get("broken", [])]:
        out.append(bytes.fromhex(v["message"]))
    return out


def bundle() -> dict[str, Any]:
    """A valid proof bundle (tools/audit.py) built offline: the fog's log holds METER's
    enrollment and one reading, one checkpoint, anchored in block 1 sealed by DISPATCH."""
    enr = P.sign1(FOG, templates()[P.ENROLLMENT])
    reading = P.sign1(METER, templates()[P.READING])
    entries = [enr, reading]
    hashes = [merkle.leaf_hash(e) for e in entries]

    def subtree(lo: int, hi: int) -> bytes:
        return merkle.root_from_leaf_hashes(hashes[lo:hi])

    root = merkle.root_from_leaf_hashes(hashes)
    cp = P.sign1(FOG, P.checkpoint(FOG.id, 1, 2, root, P.ZERO32, T0))
    tx = P.sign1(FOG, C.tx(FOG.id, 1, C.ANCHOR, C.anchor_body([cp], []), T0, CHAIN))
    header = P.sign1(DISPATCH, C.block_header(DISPATCH.id, 1, D32, C.tx_root([tx]), 1, T0,
                                              CHAIN))
    return {
        "version": 1, "reading": reading.hex(), "device_pub": METER.public_key.raw.hex(),
        "enrollment": {"entry": enr.hex(), "leaf_index": 0,
                       "inclusion_path": [h.hex() for h in merkle.inclusion_path(0, 2, subtree)]},
        "leaf_index": 1, "tree_size": 2,
        "inclusion_path": [h.hex() for h in merkle.inclusion_path(1, 2, subtree)],
        "checkpoint": cp.hex(), "fog_pub": FOG.public_key.raw.hex(),
        "anchor": {"block_height": 1, "block_header": header.hex(),
                   "sealer_signature": P.parse(header).signature.hex(), "transaction": tx.hex(),
                   "tx_index": 0, "tx_path": []},
    }
