"""The utility's billing run (docs/PROTOCOL.md section 28): each customer's verified
intervals of a period from the fog (`GET /v1/curve`, auditor tier: measured where two
consecutive readings bound an interval, else the fog's estimate, marked), the bill under the
approved tariff in force (meterledger.wire.billing, the arithmetic a customer reruns), and
its receipt on the chain, which names the bill's digest and total only.

Only meterledger.clients and meterledger.wire are used here, so a service may run it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meterledger.clients.chain import ChainClient, ChainClientError, Receipt, Sender
from meterledger.clients.fog import FogClient
from meterledger.wire import billing as BL
from meterledger.wire.decoded import BODY_NAMES

PAGE = 2880  # the fog's most intervals per answer


@dataclass(frozen=True)
class Billed:
    account: bytes
    meter: bytes
    doc: dict[str, Any]  # the bill the customer gets
    missing: int  # intervals of the period the fog has neither measured nor estimated


def tariff_in_force(chain: ChainClient, name: str, start: int, end: int) -> BL.Tariff:
    """The approved version of tariff `name` in force over the whole period [start, end):
    ChainClientError if none is, or if a version starts inside it (bill the two parts
    apart)."""
    names = {v: k for k, v in BODY_NAMES[BL.BL_TARIFF].items()}

    def at(t: int) -> dict[str, Any] | None:
        ok = [v for v in chain.billing_tariff(name)["versions"]
              if v["approved"] and v["start"] <= t]
        return max(ok, key=lambda v: (v["start"], v["version"]), default=None)

    first, last = at(start), at(end - 1)
    if first is None or last is None or first["version"] != last["version"]:
        raise ChainClientError(f"no one approved version of tariff {name!r} is in force from "
                               f"{start} to {end}: bill each version's part apart")
    return BL.Tariff.of({names[k]: v for k, v in first.items() if k in names})


def period_usage(fog: FogClient, meter: bytes, start: int, end: int) -> list[BL.Usage]:
    """The meter's intervals lying in [start, end), in order, from the fog's curve (an
    interval whose estimate has no energy, method none, is left out: missing)."""
    out: list[BL.Usage] = []
    after: int | None = start
    while after is not None and after < end:
        page = fog.curve(meter, after, PAGE)
        for p in page["points"]:
            if p["ivl"] > end:
                return out
            if p["start"] >= start and p["imp"] is not None:
                est = int(p["estimated"])
                out.append(BL.Usage(int(p["ivl"]), int(p["ivl"]) - int(p["start"]),
                                    int(p["imp"]), est, int(p["leaf"] if est else p["seq"])))
        after = page["next_after"]
    return out


def bill(fog: FogClient, t: BL.Tariff, account: bytes, meter: bytes, start: int,
         end: int, interval_s: int) -> Billed:
    """One customer's bill of the period, from the fog's intervals (`interval_s` long)."""
    usage = period_usage(fog, meter, start, end)
    computed = BL.compute_bill(t, usage)
    doc = BL.bill_document(account, meter, start, end, t, computed, usage)
    covered = sum(u.dur for u in usage)
    return Billed(account, meter, doc, max(0, (end - start - covered) // interval_s))


def receipt(sender: Sender, billed: Billed, now: int,
            replaces: bytes | None = None) -> Receipt:
    """The bill's receipt on the chain (a correction names the receipt it `replaces`)."""
    d = billed.doc
    return sender.send(BL.BL_RECEIPT, BL.receipt_body(
        billed.account, d["start"], d["end"], d["tariff"], d["tariff_version"],
        BL.bill_digest(d), d["total"], replaces), now)
