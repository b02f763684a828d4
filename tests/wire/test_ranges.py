"""Field ranges (SPEC section 2, docs/PROTOCOL.md section 4a): the documented table is the
code's, host and firmware agree, and every field's edges are accepted just inside and
refused just outside, with the field named."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

from core import messages as FW
from meterledger import wire as P
from meterledger.wire import chain as C
from meterledger.wire.meter import Q_RANGES
from tests.kit.payloads import METER, base_payload

PROTOCOL = pathlib.Path(__file__).parents[2] / "docs" / "PROTOCOL.md"
_NAMED = {"2^63-1": P.INT64_MAX, "-2^63": P.INT64_MIN, "2^32-1": P.SEQ_MAX,
          "2^53-1": P.COUNT_MAX, "2^31-1": 2**31 - 1}


def _num(text: str) -> int:
    return _NAMED[text] if text in _NAMED else int(text.replace("_", ""))


def _section() -> str:
    doc = PROTOCOL.read_text()
    return doc[doc.index("## 4a. Field ranges"):doc.index("## 5. ")]


def _rows(first: str) -> list[list[str]]:
    out = []
    for line in _section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            continue
        if line.startswith("|") and not set(cells[0]) <= set("-"):
            out.append(cells)
    return out


def _range(cell: str) -> tuple[int, int]:
    m = re.fullmatch(r"\[(\S+), (\S+)\]", cell)
    assert m, cell
    return _num(m.group(1)), _num(m.group(2))


def test_the_documented_table_is_the_code() -> None:
    types: dict[int, dict[int, tuple[int, int]]] = {}
    q: dict[int, tuple[int, int]] = {}
    bodies: dict[str, dict[int, tuple[int, int]]] = {}
    for cells in _rows("type"):
        if cells[0].isdigit() and len(cells) == 5:
            types.setdefault(int(cells[0]), {})[int(cells[1])] = _range(cells[4])
        elif cells[0].isdigit() and len(cells) == 3:
            q[int(cells[0])] = _range(cells[2])
        elif cells[0] in C.KINDS:
            bodies.setdefault(cells[0], {})[int(cells[1])] = _range(cells[4])
    assert types == {t: r for t, r in P.RANGES.items() if r}
    assert q == Q_RANGES
    assert bodies == C.BODY_RANGES


def test_the_firmware_has_the_same_ranges() -> None:
    for t in (1, 2, 3, 4, 5, 6, 8):
        assert FW._RANGES[t] == P.RANGES[t], t
    assert FW._Q_RANGES == Q_RANGES
    assert (FW.SEQ_MAX, FW.TIME_MAX, FW.COUNT_MAX, FW.REGISTER_MAX, FW.LIMIT_MAX_W) == \
        (P.SEQ_MAX, P.TIME_MAX, P.COUNT_MAX, P.REGISTER_MAX, P.LIMIT_MAX_W)


def _int_fields() -> list[tuple[int, int, int, int]]:
    out = []
    for t, ranges in sorted(P.RANGES.items()):
        for key, (lo, hi) in sorted(ranges.items()):
            if P.SCHEMAS[t][key].removesuffix("?") in ("u", "i"):
                out.append((t, key, lo, hi))
    return out


def _verdict(f: dict[int, Any]) -> str:
    try:
        P.check_fields(f)
    except P.ProtocolError as e:
        return f"{e.reason}: {e}"
    return "ok"


@pytest.mark.parametrize("t,key,lo,hi", _int_fields(),
                         ids=[f"type{t}-field{k}" for t, k, _, _ in _int_fields()])
def test_every_integer_field_is_refused_just_outside_its_range(t: int, key: int, lo: int,
                                                               hi: int) -> None:
    base = base_payload(t, METER.id)
    floor = P.INT64_MIN if P.SCHEMAS[t][key].startswith("i") else 0
    for v in (lo - 1, hi + 1):
        if floor <= v <= P.INT64_MAX:
            verdict = _verdict({**base, key: v})
            assert verdict.startswith("bad_fields: ") and f"field {key} (" in verdict \
                and f"is {v}, outside [{lo}, {hi}]" in verdict, verdict
    # at the edges the range check passes (a type's rules may still refuse the combination)
    for v in (lo, hi):
        assert "outside" not in _verdict({**base, key: v})


@pytest.mark.parametrize("v", [2**63, 2**64 - 1, -(2**63) - 1, -(2**64)])
def test_integers_beyond_int64_are_out_of_range_for_both_decoders(v: int) -> None:
    from core import cbor as fw_cbor

    raw = P.encode({0: 1, 5: v})
    with pytest.raises(P.ProtocolError) as e:
        P.decode(raw)
    assert e.value.reason == "out_of_range"
    with pytest.raises(fw_cbor.CBORError) as fe:
        fw_cbor.decode(raw)
    assert fe.value.reason == "out_of_range"
    for edge in (P.INT64_MAX, P.INT64_MIN):
        assert P.decode(P.encode({0: edge})) == fw_cbor.decode(P.encode({0: edge})) == {0: edge}
