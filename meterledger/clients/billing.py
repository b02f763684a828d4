"""The utility's billing run (docs/PROTOCOL.md section 28): each customer's verified
intervals of a period from the fog (`GET /v1/curve`, auditor tier: measured where two
consecutive readings bound an interval, else the fog's estimate, marked), the bill under the
approved tariff in force (meterledger.wire.billing, the arithmetic a customer reruns), and
its receipt on the chain, which names the bill's digest and total only.

Only meterledger.clients and meterledger.wire are used here, so a service may run it too.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def _credit(chain: ChainClient, sender: Sender, t: BL.Tariff, meter: bytes,
            outage: dict[str, Any], s: BL.Shortfall, now: int) -> bytes:
    """The bl_credit of the meter for the outage: the chain's if the utility sent it before
    (a bill re-run), else sent now. A credit is final: data that changed since gives an
    error rather than a bill the credit does not match."""
    fault = bytes.fromhex(outage["fault"])
    for c in chain.billing_credits(meter.hex())["credits"]:
        if c["fault"] == outage["fault"]:
            if (c["wh"], c["cents"]) != (s.wh, s.cents):
                raise ChainClientError(
                    f"meter {meter.hex()} was credited {c['wh']} Wh ({c['cents']} cents) for "
                    f"outage {outage['fault']}, but the fog's intervals now give {s.wh} Wh "
                    f"({s.cents} cents): a credit is final")
            return bytes.fromhex(c["tx"])
    r = sender.send(BL.BL_CREDIT, BL.credit_body(fault, meter, int(outage["start"]), t.name,
                                                 t.version, s.wh, s.cents), now)
    return r.digest


def outage_credits(fog: FogClient, chain: ChainClient, sender: Sender, t: BL.Tariff,
                   meter: bytes, start: int, end: int, now: int) -> list[BL.Compensation]:
    """The meter's outage credits for the bill of [start, end): every closed outage record
    of the meter on the chain that ended in the period and outlasted the tariff's grace,
    its shortfall from the fog's intervals of the outage's window and of the same window
    on the days before, each credited on the chain (bl_credit) once."""
    out = []
    for o in chain.billing_outages(meter.hex(), start, end)["outages"]:
        lo, hi = int(o["start"]), int(o["end"])
        if not start < hi <= end:
            continue  # an outage belongs to the bill of the period it ended in
        shifts = BL.baseline_shifts(lo, hi)
        rows = period_usage(fog, meter, lo + t.grace_s - shifts[-1] * BL.DAY_S, hi)
        window = lo + t.grace_s
        used = [u for u in rows if any(BL.in_window(u, window - d * BL.DAY_S,
                                                    hi - d * BL.DAY_S)
                                       for d in (0, *shifts))]
        s = BL.shortfall(t, lo, hi, used)
        if s is None:
            continue  # within the grace: no credit
        credit = _credit(chain, sender, t, meter, o, s, now)
        out.append(BL.Compensation(credit, bytes.fromhex(o["fault"]), lo, hi, s,
                                   tuple(used)))
    return out


def redemptions(chain: ChainClient, t: BL.Tariff, account: bytes, start: int,
                end: int) -> list[BL.Redemption]:
    """The points redeemed against the account under this tariff (bl_redeem) in the
    period: by chain time in [start, end), the bill of the period a redemption falls in
    subtracts it. A redemption under another tariff's name is another utility's bill's
    (anyone may redeem against any account): left out here."""
    found: dict[str, dict[str, Any]] = {}
    lo = start
    while True:
        doc = chain.billing_redemptions(account.hex(), lo, end)
        new = [r for r in doc["redemptions"] if r["tx"] not in found]
        found.update((r["tx"], r) for r in new)
        if not doc["truncated"]:
            break
        if not new:  # a page of one chain time only, all seen: the API cannot page on
            raise ChainClientError(f"account {account.hex()} has more redemptions at chain "
                                   f"time {lo} than one answer holds")
        lo = max(int(r["t"]) for r in new)
    out = []
    for r in sorted(found.values(), key=lambda r: (int(r["t"]), r["tx"])):
        if r["tariff"] != t.name:
            continue
        if r["version"] != t.version:  # the chain's rules make this impossible
            raise ChainClientError(f"redemption {r['tx']} of account {account.hex()} is under "
                                   f"version {r['version']} of {t.name!r}, in force over "
                                   f"the period is version {t.version}")
        out.append(BL.Redemption(bytes.fromhex(r["tx"]), int(r["upt"]), int(r["cents"])))
    return out


def bill(fog: FogClient, t: BL.Tariff, account: bytes, meter: bytes, start: int,
         end: int, interval_s: int, compensation: Sequence[BL.Compensation] = (),
         points: Sequence[BL.Redemption] = ()) -> Billed:
    """One customer's bill of the period, from the fog's intervals (`interval_s` long),
    with its outage credits (`outage_credits`) and the points redeemed against it
    (`redemptions`)."""
    usage = period_usage(fog, meter, start, end)
    credits = [BL.compensation_line(t, c.shortfall) for c in compensation]
    credits += [BL.points_line(t, r.upt) for r in points]
    computed = BL.compute_bill(t, usage, credits)
    doc = BL.bill_document(account, meter, start, end, t, computed, usage, compensation,
                           points)
    covered = sum(u.dur for u in usage)
    return Billed(account, meter, doc, max(0, (end - start - covered) // interval_s))


def receipt(sender: Sender, billed: Billed, now: int,
            replaces: bytes | None = None) -> Receipt:
    """The bill's receipt on the chain (a correction names the receipt it `replaces`)."""
    d = billed.doc
    return sender.send(BL.BL_RECEIPT, BL.receipt_body(
        billed.account, d["start"], d["end"], d["tariff"], d["tariff_version"],
        BL.bill_digest(d), d["total"], replaces), now)
