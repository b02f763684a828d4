"""The checks of a bill bundle (tools/audit_bill.py), in the order they run: each over every
transaction, reading or estimate before the next, and the first that fails names itself.
The chain's transactions are checked as a trade's are (tools/audit_trade_checks.blocks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from meterledger import wire as P
from meterledger.wire import billing as BL
from tools import audit_certificate as AC
from tools import audit_trade_checks as K
from tools.audit import _check, _parsed, _signed

# (check name, what it establishes), in the order they run
CHECKS = (
    *K.SEALED_CHECKS,
    ("tariff", "`tariff` is the bl_tariff of the bill's tariff name and version, and "
               "`approval` another participant's bl_approve of exactly that transaction, "
               "before the tariff started, and the tariff started by the bill's period"),
    ("receipt", "`receipt` is the tariff's utility's bl_receipt of the bill's account, "
                "period, tariff and version, naming the bill's digest and total, after the "
                "period ended"),
    ("checkpoint_signature", "the anchor's newest checkpoint is a type-6 message signed by "
                             "fog_pub"),
    ("device_id", "the bundle gives the key of the bill's meter, and every reading is from "
                  "it"),
    ("reading_signature", "every reading is a type-1 message signed by the meter's key"),
    ("reading_inclusion", "every reading is its leaf_index's entry in the tree of the "
                          "anchor's checkpoint"),
    ("estimate_signature", "every estimate is a type-10 estimate signed by fog_pub, of the "
                           "bill's meter, with energy (method linear or profile)"),
    ("estimate_inclusion", "every estimate is its leaf_index's entry in the same tree"),
    ("enrollment", "a type-8 decision signed by the fog enrolled the meter and key as active"),
    ("enrollment_order", "that decision precedes every reading in the log"),
    ("enrollment_inclusion", "the decision is in the same tree"),
    ("usage", "the bill's intervals ascend within its period, each once: a measured one "
              "between the meter's consecutive readings seq - 1 and seq (one interval: no "
              "grid boundary between them, no register reset), its Wh their register "
              "difference; an estimated one an item of its estimate, with the item's Wh; "
              "no two overlapping in time or counting the same register difference"),
    ("compensation", "each outage credit is the tariff's utility's bl_credit, after the fog's "
                     "closed outage record of the bill's meter it names (a fault of kind "
                     "outage, which ended in the bill's period), of the bill's tariff; its "
                     "intervals are proven as the bill's, and the Wh not served (the mean of "
                     "the window after the grace on the 7 days before the outage, less what "
                     "was served in it) and the cents (at the rate, capped) recompute"),
    ("points", "each redemption is a bl_redeem against the bill's account under its tariff, "
               "in its period by chain time, its upt the bill's, worth the cents the "
               "tariff's points_rate gives"),
    ("bill", "the tariff's arithmetic over those intervals gives the bill's every line, its "
             "held and estimated figures and its total, to the cent"),
)


@dataclass(frozen=True)
class BillVerified:
    account: str
    meter: str
    start: int
    end: int
    tariff: str
    version: int
    lines: list[list[Any]]  # [what, quantity, rate, cents]
    total: int  # cents
    intervals: int
    estimated: int  # intervals billed from the fog's estimates
    held_wh: int
    readings: int
    fog: str
    utility: str
    regulator: str
    receipt: str
    blocks: tuple[int, int]
    sealers: list[str]


@dataclass(kw_only=True)
class Bill(K.Sealed):
    """A bill bundle as read (tools.audit_bill.read_bundle), and what the checks found."""

    bill: dict[str, Any]
    receipt: bytes
    tariff: bytes
    approval: bytes
    readings: list[tuple[bytes, int, list[bytes]]]  # (entry, leaf index, inclusion path)
    estimates: list[tuple[bytes, int, list[bytes]]]
    enrollment: tuple[bytes, int, list[bytes]]
    rf: dict[int, P.Fields] = field(default_factory=dict)  # seq -> the reading's fields
    ef: dict[int, P.Fields] = field(default_factory=dict)  # leaf -> the estimate's fields


def _anchor(b: Bill) -> tuple[bytes, P.Fields]:
    d = next(iter(b.delivery.anchors))
    return d, b.delivery.cp[d]


def _tariff(b: Bill) -> BL.Tariff:
    bill = b.bill
    body = K._kind("tariff", K._tx(b, b.tariff, "tariff"), BL.BL_TARIFF, b.tariff)
    _check("tariff", (body[1], body[2]) == (bill["tariff"], bill["tariff_version"]),
           f"{b.tariff.hex()} is tariff {body[1]!r} version {body[2]}, the bill's is "
           f"{bill['tariff']!r} version {bill['tariff_version']}")
    af = K._tx(b, b.approval, "tariff")
    approval = K._kind("tariff", af, BL.BL_APPROVE, b.approval)
    _check("tariff", (approval[1], approval[2], approval[3]) == (body[1], body[2], b.tariff),
           f"{b.approval.hex()} approves tariff {approval[1]!r} version {approval[2]} "
           f"proposed by {approval[3].hex()}, not {b.tariff.hex()}")
    _check("tariff", af[1] != b.tf[b.tariff][1], "the tariff is approved by its own utility")
    _check("tariff", b.place[b.approval][2] < body[3],
           f"approved at chain time {b.place[b.approval][2]}, not before its start {body[3]}")
    _check("tariff", body[3] <= bill["start"], f"the tariff starts at {body[3]}, after the "
                                               f"bill's period starts ({bill['start']})")
    try:
        return BL.Tariff.of(body)
    except ValueError as e:  # the chain's rules refuse such periods: a forged block
        _check("tariff", False, f"its periods are no tariff's: {e}")
        raise


def _receipt(b: Bill, t: BL.Tariff) -> None:
    bill = b.bill
    rf = K._tx(b, b.receipt, "receipt")
    body = K._kind("receipt", rf, BL.BL_RECEIPT, b.receipt)
    _check("receipt", rf[1] == b.tf[b.tariff][1],
           f"the receipt is signed by {rf[1].hex()}, not the tariff's utility "
           f"{b.tf[b.tariff][1].hex()}")
    want = (bytes.fromhex(bill["account"]), bill["start"], bill["end"], t.name, t.version)
    _check("receipt", (body[1], body[2], body[3], body[4], body[5]) == want,
           f"the receipt is of account {body[1].hex()} from {body[2]} to {body[3]} under "
           f"{body[4]!r} version {body[5]}, not the bill's")
    digest = BL.bill_digest(bill)
    _check("receipt", body[6] == digest and body[7] == bill["total"],
           f"the receipt names bill {body[6].hex()} of {body[7]} cents: this bill is "
           f"{digest.hex()} of {bill['total']} cents")
    _check("receipt", b.place[b.receipt][2] >= bill["end"],
           f"receipted at chain time {b.place[b.receipt][2]}, before the period ended "
           f"({bill['end']})")


def _meter_key(b: Bill) -> P.PublicKey:
    meter = bytes.fromhex(b.bill["meter"])
    key = b.delivery.devices.get(meter)
    _check("device_id", key is not None and key.id == meter,
           f"the bundle gives no key of the bill's meter {meter.hex()}")
    assert key is not None
    for j, (raw, _, _) in enumerate(b.readings):
        kid = _parsed("reading_signature", raw).kid
        _check("device_id", kid == meter, f"reading {j} is from meter {kid.hex()}, the "
                                          f"bill's is {meter.hex()}")
    return key


def _readings(b: Bill, key: P.PublicKey, cp: P.Fields) -> None:
    for j, (raw, _, _) in enumerate(b.readings):
        f = _signed("reading_signature", raw, key, P.READING)
        _check("reading_signature", f[2] not in b.rf, f"reading {j} repeats seq {f[2]}")
        b.rf[f[2]] = f
    for raw, index, path in b.readings:
        AC._included("reading_inclusion", raw, index, path, cp)
    for j, (raw, _, _) in enumerate(b.estimates):
        f = _signed("estimate_signature", raw, b.delivery.fog_pub, P.ESTIMATE)
        _check("estimate_signature", f[2] == "estimate" and f[1] == key.id
               and f[4] != "none", f"estimate {j} is a {f[2]} of meter {f[1].hex()} "
                                   f"(method {f.get(4)}), not an estimate of "
                                   f"{key.id_hex} with energy")
        b.ef[b.estimates[j][1]] = f
    for raw, index, path in b.estimates:
        AC._included("estimate_inclusion", raw, index, path, cp)


def _enrollment(b: Bill, key: P.PublicKey, cp: P.Fields) -> None:
    entry, index, path = b.enrollment
    ef = _signed("enrollment", entry, b.delivery.fog_pub, P.ENROLLMENT)
    _check("enrollment", ef[1] == key.id and ef[10] == key.raw,
           "the decision names another meter or key")
    _check("enrollment", ef[18] == "active", f"the decision says {ef[18]!r}, not 'active'")
    first = min((i for _, i, _ in b.readings), default=None)
    _check("enrollment_order", first is None or index < first,
           f"enrollment is entry {index}, the first reading entry {first}")
    AC._included("enrollment_inclusion", entry, index, path, cp)


def _measured(b: Bill, ivl: int, dur: int, imp: int, seq: int, check: str) -> None:
    a, c = b.rf.get(seq - 1), b.rf.get(seq)
    _check(check, a is not None and c is not None,
           f"interval {ivl}: the bundle has no readings seq {seq - 1} and {seq}")
    assert a is not None and c is not None
    _check(check, c[3] > a[3] and (a[3] // c[4] + 1) * c[4] >= c[3],
           f"interval {ivl}: readings seq {seq - 1} (t {a[3]}) and {seq} (t {c[3]}) do not "
           "bound one interval")
    _check(check, (c[3], c[3] - a[3]) == (ivl, dur),
           f"interval {ivl} ({dur} s): its readings give ({a[3]}, {c[3]}]")
    _check(check, not c[7] & P.REGISTER_RESET and c[5] >= a[5] and c[6] >= a[6],
           f"interval {ivl}: the registers were reset or went back")
    _check(check, c[5] - a[5] == imp, f"interval {ivl}: the registers give {c[5] - a[5]} "
                                      f"Wh, the bill {imp}")


def _estimated(b: Bill, ivl: int, dur: int, imp: int, leaf: int, check: str) -> None:
    f = b.ef.get(leaf)
    _check(check, f is not None, f"interval {ivl}: the bundle has no estimate {leaf}")
    assert f is not None
    start = f[9]
    for item in f[10]:
        if item[0] == ivl:
            _check(check, (ivl - start, item[1]) == (dur, imp),
                   f"interval {ivl}: estimate {leaf} gives {item[1]} Wh over {ivl - start} s, "
                   f"the bill {imp} Wh over {dur} s")
            return
        start = item[0]
    _check(check, False, f"interval {ivl}: estimate {leaf} does not cover it")


def _seqs(b: Bill, u: BL.Usage) -> tuple[int, int]:
    """The meter's readings an interval's energy lies between: a measured one's two, an
    estimated one's estimate's bounding readings (from_seq, to_seq)."""
    if not u.est:
        return u.ref - 1, u.ref
    f = b.ef.get(u.ref)
    return (int(f[6]), int(f[8])) if f is not None else (0, 0)


def _disjoint(b: Bill, usage: list[BL.Usage], check: str) -> None:
    """Intervals follow each other in time and in the meter's readings: no two cover the
    same span or the same register difference. Only estimates of one gap share its
    bounding readings (their items split its difference, each interval once), so a
    superseded estimate never doubles a reading's energy."""
    for u, v in pairwise(usage):
        _check(check, u.ivl < v.ivl and v.ivl - v.dur >= u.ivl,
               f"interval {v.ivl} ({v.dur} s) follows {u.ivl}: intervals ascend without "
               "overlapping, each once")
        (ulo, hi), (lo, vhi) = _seqs(b, u), _seqs(b, v)
        # one gap's estimates (the fog chunks a long one) share its two readings
        same = u.est and v.est and (ulo, hi) == (lo, vhi)
        _check(check, same or hi <= lo,
               f"intervals {u.ivl} and {v.ivl} both count the meter's registers between "
               f"readings {lo} and {hi}: one energy billed twice")


def _proven(b: Bill, rows: list[list[int]], lo: int, hi: int, check: str) -> list[BL.Usage]:
    """Intervals as a bill lists them, each once, ascending, within [lo, hi), each proven."""
    usage = [BL.Usage(*u) for u in rows]
    for u in usage:
        _check(check, lo <= u.ivl - u.dur and u.ivl <= hi and u.dur > 0,
               f"interval {u.ivl} ({u.dur} s) is not within [{lo}, {hi})")
        if u.est:
            _estimated(b, u.ivl, u.dur, u.imp, u.ref, check)
        else:
            _measured(b, u.ivl, u.dur, u.imp, u.ref, check)
    _disjoint(b, usage, check)
    return usage


def _usage(b: Bill) -> list[BL.Usage]:
    return _proven(b, b.bill["usage"], b.bill["start"], b.bill["end"], "usage")


# long: one outage credit's transactions, its record, its intervals and its arithmetic
def _credit(b: Bill, t: BL.Tariff, c: dict[str, Any]) -> BL.Line:
    bill, what = b.bill, f"the credit {c['credit']}"
    credit, fault = bytes.fromhex(c["credit"]), bytes.fromhex(c["fault"])
    cf = K._tx(b, credit, "compensation")
    body = K._kind("compensation", cf, BL.BL_CREDIT, credit)
    meter = bytes.fromhex(bill["meter"])
    _check("compensation", cf[1] == b.tf[b.tariff][1] and (
        body[1], body[2], body[3], body[4], body[5]) == (fault, meter, c["start"], t.name,
                                                         t.version),
        f"{what} is {cf[1].hex()}'s of fault {body[1].hex()}, meter {body[2].hex()} from "
        f"{body[3]} under {body[4]!r} version {body[5]}: not the tariff's utility's for "
        f"this outage of meter {meter.hex()}")
    ff = K._tx(b, fault, "compensation")
    record = K._kind("compensation", ff, "fault", fault)
    _check("compensation", record[1] == "outage" and meter in record.get(6, [])
           and (record.get(7), record.get(8)) == (c["start"], c["end"]),
           f"fault {fault.hex()} is no closed outage record of meter {meter.hex()} from "
           f"{c['start']} to {c['end']}")
    _check("compensation", bill["start"] < c["end"] <= bill["end"],
           f"the outage ended at {c['end']}, outside the bill's period")
    _check("compensation", b.place[fault][:2] < b.place[credit][:2]
           and b.place[credit][2] >= c["end"],
           f"{what} came at chain time {b.place[credit][2]}, before its outage record or "
           f"before the outage ended ({c['end']})")
    lo = c["start"] + t.grace_s
    first = lo - BL.baseline_shifts(c["start"], c["end"])[-1] * BL.DAY_S
    usage = _proven(b, c["usage"], first, c["end"], "compensation")
    s = BL.shortfall(t, c["start"], c["end"], usage)
    _check("compensation", s is not None, f"the outage of {what} did not outlast the "
                                          f"tariff's grace of {t.grace_s} s")
    assert s is not None
    got = (s.days, s.baseline, s.served, s.wh, s.cents)
    _check("compensation", got == (c["days"], c["baseline"], c["served"], c["wh"], c["cents"])
           and (body[6], body[7]) == (s.wh, s.cents),
           f"{what}: its intervals give {s.wh} Wh not served (baseline {s.baseline} Wh over "
           f"{s.days} days, {s.served} served) and {s.cents} cents; the bill says "
           f"{c['wh']} Wh and {c['cents']} cents, the chain {body[6]} Wh and {body[7]} cents")
    return BL.compensation_line(t, s)


def _redeemed(b: Bill, t: BL.Tariff, r: dict[str, Any]) -> BL.Line:
    bill, d = b.bill, bytes.fromhex(r["redeem"])
    body = K._kind("points", K._tx(b, d, "points"), BL.BL_REDEEM, d)
    _check("points", (body[1], body[2], body[3]) == (t.name, bytes.fromhex(bill["account"]),
                                                     r["upt"]),
           f"redemption {d.hex()} is of {body[3]} upt against account {body[2].hex()} under "
           f"{body[1]!r}, not the bill's {r['upt']} upt of {bill['account']} under {t.name!r}")
    at = b.place[d][2]
    _check("points", bill["start"] <= at < bill["end"],
           f"redemption {d.hex()} came at chain time {at}, outside the bill's period")
    line = BL.points_line(t, r["upt"])
    _check("points", line.cents == r["cents"],
           f"{r['upt']} upt at {t.points_rate} mc a point are {line.cents} cents, the bill "
           f"says {r['cents']}")
    return line


def _rerun(b: Bill, t: BL.Tariff, usage: list[BL.Usage], credits: list[BL.Line]
           ) -> BL.Bill:
    bill = b.bill
    again = BL.compute_bill(t, usage, credits)
    lines = [[x.what, x.quantity, x.rate, x.cents] for x in again.lines]
    _check("bill", lines == bill["lines"],
           f"the tariff gives the lines {lines}, the bill says {bill['lines']}")
    _check("bill", (again.total, again.held_wh, again.estimated, len(usage)) == (
        bill["total"], bill["held_wh"], bill["estimated"], bill["intervals"]),
        f"the tariff gives {again.total} cents ({again.held_wh} Wh held, {again.estimated} "
        f"estimated of {len(usage)} intervals), the bill {bill['total']} ({bill['held_wh']}, "
        f"{bill['estimated']} of {bill['intervals']})")
    return again


def verify(b: Bill, trusted: list[P.PublicKey]) -> BillVerified:
    """CHECKS after `format`, in order."""
    K.blocks(b, trusted)
    t = _tariff(b)
    _receipt(b, t)
    AC._checkpoints(b.delivery)
    _, cp = _anchor(b)
    key = _meter_key(b)
    _readings(b, key, cp)
    _enrollment(b, key, cp)
    usage = _usage(b)
    credits = [_credit(b, t, c) for c in b.bill["compensation"]]
    credits += [_redeemed(b, t, r) for r in b.bill["points"]]
    again = _rerun(b, t, usage, credits)
    bill = b.bill
    return BillVerified(
        bill["account"], bill["meter"], bill["start"], bill["end"], t.name, t.version,
        bill["lines"], again.total, len(usage), again.estimated, again.held_wh,
        len(b.readings), b.delivery.fog_pub.id_hex, b.tf[b.tariff][1].hex(),
        b.tf[b.approval][1].hex(), b.receipt.hex(), (min(b.heights), max(b.heights)),
        sorted(b.sealers))
