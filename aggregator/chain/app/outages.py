"""Closed outage records on the chain (docs/PROTOCOL.md sections 18 and 28): a fog's `fault`
of kind "outage" with body keys 6 meters, 7 start and 8 end says which of its meters lost
supply and from when to when, once the outage is over. The chain keeps one record per meter,
so outage compensation (a later part of issue 19) finds a meter's outages over a billing
period with one key-ordered scan.

Application records:

    bl.outage   meter (8 bytes) || start (8 bytes) || fault tx digest (32 bytes)
                -> {"fog", "tx", "start", "end"}

The digest in the key keeps two reports of one outage apart (two fogs, or a fog's split
records): nothing is overwritten, and a reader sees who said what. The chain cannot check
that the meters are the fog's (enrollment lives at the fog): a record is the fog's signed
claim, on the chain so that the utility, the regulator and the customer read the same one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aggregator.chain.app import green as G
from aggregator.chain.ledger import ChainError

T_OUTAGE = "bl.outage"
CLOSED_KEYS = (6, 7, 8)  # the fault body's meters, start, end (meterledger.wire.chain)


def outage_key(meter: bytes, start: int, tx: bytes) -> bytes:
    return meter + G.u64(start) + tx


def is_closed(body: dict[int, Any]) -> bool:
    """Whether a fault body is a closed outage record (the wire rules made keys 6-8 all or
    none, of kind "outage")."""
    return CLOSED_KEYS[0] in body


def record(st: G.Staged, fog: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """Store a closed outage record under each of its meters (sorted, distinct: the wire
    rules), once it has ended by the chain's time."""
    meters, start, end = body[6], body[7], body[8]
    if end > now:
        raise ChainError("outage_future", f"the outage ends at {end}, after the chain time "
                                          f"{now}: report it once it has ended")
    for meter in meters:
        st.put(T_OUTAGE, outage_key(meter, start, tx),
               {"fog": fog, "tx": tx, "start": start, "end": end})


def select(rows: Iterable[tuple[bytes, Any]], lo: int, hi: int,
           limit: int | None = None) -> list[dict[str, Any]]:
    """The records among one meter's `rows` (in key order, so by start) that overlap
    [lo, hi): start < hi and end > lo; at most `limit`. Stops reading at the first record
    starting at or after hi."""
    out: list[dict[str, Any]] = []
    for _, rec in rows:
        if rec["start"] >= hi or (limit is not None and len(out) >= limit):
            break
        if rec["end"] > lo:
            out.append(dict(rec))
    return out


def outages(st: G.Staged, meter: bytes, lo: int, hi: int) -> list[dict[str, Any]]:
    """The closed outage records of `meter` overlapping [lo, hi), in start order (then by
    the fault transaction's digest)."""
    return select(st.walk(T_OUTAGE, meter), lo, hi)
