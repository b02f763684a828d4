"""The closed outage record's wire rules (meterledger.wire.chain, docs/PROTOCOL.md sections
4a and 18): a `fault` body's keys 6 meters, 7 start and 8 end come all together or not at
all, only with kind "outage", name 1 to 128 sorted distinct 8-byte meter ids and an outage
with start < end <= t; every fault without them stays valid. Each broken rule is
`bad_fields` with a detail saying which (the chain test sends the same bodies,
tests/aggregator/test_outages.py)."""

from __future__ import annotations

from typing import Any

import pytest

from meterledger import wire as P
from meterledger.wire import chain as C

SENDER = P.SigningKey.from_int(0x0FA17)
CHAIN = bytes(range(8))
T0 = 1_800_000_000
IVL = 900
M1, M2 = b"\x11" * 8, b"\x22" * 8


def closed(meters: list[bytes], start: int, end: int, t: int | None = None,
           kind: str = "outage") -> dict[int, Any]:
    return C.fault_body(kind, "feeder all restored after 900 s: 1 meter(s)",
                        end if t is None else t, "none", [], meters=meters, start=start,
                        end=end)


def _without(key: int) -> dict[int, Any]:
    return {k: v for k, v in closed([M1], T0, T0 + IVL).items() if k != key}


# (id, body, fragment of the detail)
BAD_RECORDS: list[tuple[str, dict[int, Any], str]] = [
    ("start-not-uint", {**closed([M1], T0, T0 + IVL), 7: -1}, "field 7 must be u"),
    ("end-beyond-u32", closed([M1], T0, 2**32, t=2**32 - 1), "field 8 is 4294967296"),
    ("no-end", _without(8), "come all together"),
    ("no-start", _without(7), "come all together"),
    ("no-meters", _without(6), "come all together"),
    ("not-an-outage", closed([M1], T0, T0 + IVL, kind="tamper"), "kind must be 'outage'"),
    ("unsorted", closed([M2, M1], T0, T0 + IVL), "sorted ascending, each once"),
    ("repeated", closed([M1, M1], T0, T0 + IVL), "sorted ascending, each once"),
    ("short-id", closed([M1[:7]], T0, T0 + IVL), "8-byte meter ids"),
    ("id-not-bytes", closed([1], T0, T0 + IVL), "8-byte meter ids"),  # type: ignore[list-item]
    ("no-meter", closed([], T0, T0 + IVL), "field 6 has 0 entries, outside [1, 128]"),
    ("129-meters", closed([i.to_bytes(8, "big") for i in range(129)], T0, T0 + IVL),
     "field 6 has 129 entries, outside [1, 128]"),
    ("empty-outage", closed([M1], T0 + IVL, T0 + IVL), "must be before its end"),
    ("ends-after-t", closed([M1], T0, T0 + IVL, t=T0 + IVL - 1),
     "after the report's time t"),
]


def verdict(body: dict[int, Any]) -> str:
    try:
        P.check_fields(C.tx(SENDER.id, 1, C.FAULT, body, T0, CHAIN))
    except P.ProtocolError as e:
        return f"{e.reason}: {e}"
    return "ok"


@pytest.mark.parametrize("body,fragment", [(b, f) for _, b, f in BAD_RECORDS],
                         ids=[i for i, _, _ in BAD_RECORDS])
def test_a_broken_closed_outage_record_is_bad_fields(body: dict[int, Any],
                                                     fragment: str) -> None:
    v = verdict(body)
    assert v.startswith("bad_fields: fault body: ") and fragment in v, v


def test_good_records_and_every_plain_fault_pass() -> None:
    ids = [i.to_bytes(8, "big") for i in range(C.OUTAGE_METERS_MAX)]
    assert verdict(closed(ids, T0, T0 + IVL, t=T0 + 2 * IVL)) == "ok"
    assert verdict(closed([M1], 0, 1, t=1)) == "ok"  # end == t: ended when reported
    assert verdict(C.fault_body("outage", "feeder all, interval T: 4 of 6", T0, "none",
                                [1, 2])) == "ok"
    assert verdict(C.fault_body("tamper", "", T0, "relay_off: ...")) == "ok"
    # the builder sets what it is given, in the keys the schema names
    body = closed([M1, M2], T0, T0 + IVL)
    assert (body[6], body[7], body[8], body[3]) == ([M1, M2], T0, T0 + IVL, T0 + IVL)
    assert set(C.fault_body("outage", "", T0, "none")) == {1, 2, 3, 4, 5}


def test_a_full_record_fits_one_message() -> None:
    """128 meters and a long detail stay within the 4096-byte message limit."""
    ids = [(2**64 - 1 - i).to_bytes(8, "big") for i in reversed(range(128))]
    body = C.fault_body("outage", "feeder " + "f" * 64 + " restored after 4294967295 s: "
                        "128 meter(s) (record 99 of 99)", 2**32 - 1, "none", [],
                        meters=ids, start=0, end=2**32 - 1)
    raw = P.sign1(SENDER, C.tx(SENDER.id, 2**53 - 1, C.FAULT, body, 2**32 - 1, CHAIN))
    assert len(raw) <= P.MAX_MESSAGE
