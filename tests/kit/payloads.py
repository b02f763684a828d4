"""Valid payloads of every message type, signed by one meter key: the starting points that
property tests mutate field by field (tests/fog_node/test_poison.py, tests/wire/test_ranges.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meterledger import wire as P
from meterledger.wire import chain as C

T0 = 1_800_000_000  # an interval end (a multiple of 3600)
METER = P.SigningKey.from_int(0x5EED)
CHAIN_ID = bytes(8)


def history(n: int) -> list[bytes]:
    """METER's first n readings, one per interval, ending at T0."""
    out, prev = [], bytes(32)
    for seq in range(1, n + 1):
        raw = P.sign1(METER, P.reading(METER.id, seq, T0 - 900 * (n - seq), 900, 100 + seq, 0, 0,
                                       prev))
        out.append(raw)
        prev = P.digest(raw)
    return out


def base_payload(t: int, fog: bytes, before: Sequence[bytes] = ()) -> dict[int, Any]:
    """A payload of type t, signed by METER, that its schema accepts; a reading continues
    the readings `before` (skipping one seq: a gap the fog estimates)."""
    m, pub, z = METER.id, METER.public_key.raw, bytes(32)
    seq, prev = (len(before) + 2, P.digest(before[-1])) if before else (1, z)
    bases: dict[int, dict[int, Any]] = {
        1: P.reading(m, seq, T0 + 1800, 900, 1000, 0, 0, prev),
        2: {0: 2, 1: m, 10: pub, 11: "fw", 12: 1, 13: 0, 14: "esp32", 15: "sim", 4: 900, 16: fog},
        3: {0: 3, 1: m, 2: 1, 3: z, 4: T0, 17: m},
        4: P.command(m, 1, "ping", {}, T0, b"", m),
        5: {0: 5, 1: m, 2: 1, 3: 0, 4: "done", 5: T0},
        6: P.checkpoint(m, 1, 1, z, z, T0),
        8: P.enrollment(m, pub, "active", "x", T0, m),
        10: {0: 10, 1: m, 2: "supersede", 3: T0, 11: z, 12: z, 13: 1, 17: m},
        11: {0: 11, 1: "f", 2: T0, 3: 900, 4: 0, 5: 0, 6: 1, 7: 1, 8: 0, 9: 0, 13: [], 14: 1,
             15: z, 16: 0, 17: m, 19: z},
        14: {0: 14, 1: m, 2: T0, 3: 900, 4: 0, 5: 0, 6: 0, 7: [0, 1], 8: 2, 17: m},
        12: C.tx(m, 1, C.FAULT, C.fault_body("outage", "d", T0, "none", [1]), T0, CHAIN_ID),
        13: C.block_header(m, 0, z, z, 0, T0, CHAIN_ID),
    }
    f = bases[t]
    P.check_fields(f)  # the base itself is valid
    return f
