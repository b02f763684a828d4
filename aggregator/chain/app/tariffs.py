"""Tariffs and bill receipts on the chain (docs/PROTOCOL.md section 28): a utility proposes
a tariff version, a regulator approves it (both signatures), and from its start it is the
tariff in force; bills are computed off the chain under it (`meterledger.wire.billing`) and
the chain keeps a receipt of each: the bill's digest and total, never its intervals.

Application records:

    bl.tariff   name || 0x00 || version (8 bytes) -> {"utility", "tx", "start", "body", and
                                                      once approved "regulator", "approval"}
    bl.receipt  account || start (8 bytes)        -> {"utility", "tx", "end", "tariff",
                                                      "version", "bill", "total", "n", and a
                                                      correction's "replaces"}
    bl.credit   meter || fault tx digest          -> {"utility", "tx", "start", "end",
                                                      "tariff", "version", "wh", "cents"}
    bl.redeem   account || t (8 bytes) || tx digest -> {"customer", "tx", "t", "tariff",
                                                      "version", "upt", "cents"}
    bl.period   account                           -> {"end"}: the latest period billed

An outage credit (bl_credit) needs the fog's closed outage record of the meter
(aggregator.chain.app.outages), an outage longer than the tariff's grace, and the cents the
tariff's rule gives for its Wh not served; one credit per meter and outage record.
"""

from __future__ import annotations

from typing import Any

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app import outages as OU
from aggregator.chain.ledger import ChainError
from meterledger.wire import billing as BL

T_TARIFF, T_RECEIPT, T_CREDIT, T_REDEEM = "bl.tariff", "bl.receipt", "bl.credit", "bl.redeem"
T_PERIOD = "bl.period"


def tariff_key(name: str, version: int) -> bytes:
    return name.encode() + b"\x00" + G.u64(version)


def tariff(st: G.Staged, name: str, version: int) -> dict[str, Any] | None:
    rec = st.get(T_TARIFF, tariff_key(name, version))
    return None if rec is None else dict(rec)


def in_force(st: G.Staged, name: str, t: int) -> dict[str, Any] | None:
    """The approved version of tariff `name` with the latest start at or before `t` (a
    later version replaces an earlier one from its start), None if none."""
    best: dict[str, Any] | None = None
    for _, rec in st.scan(T_TARIFF, name.encode() + b"\x00"):
        if "approval" in rec and rec["start"] <= t and (
                best is None or (rec["start"], rec["body"][2]) > (best["start"],
                                                                 best["body"][2])):
            best = dict(rec)
    return best


def propose(st: G.Staged, utility: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """A new version of a tariff: the next number of its name, from the same utility,
    starting after now (a tariff is never retroactive)."""
    name, version, start = body[1], body[2], body[3]
    prev = tariff(st, name, version - 1) if version > 1 else None
    if (version > 1 and prev is None) or tariff(st, name, version) is not None:
        raise ChainError("tariff_version", f"tariff {name!r} has no version {version - 1}, or "
                                           f"has version {version} already: versions go "
                                           "1, 2, ...")
    if prev is not None and prev["utility"] != utility:
        raise ChainError("not_permitted", f"tariff {name!r} is {prev['utility'].hex()}'s; "
                                          f"{utility.hex()} may not version it")
    if start <= now:
        raise ChainError("tariff_retroactive", f"tariff {name!r} version {version} would start "
                                               f"at {start}, not after the chain time {now}")
    st.put(T_TARIFF, tariff_key(name, version), {"utility": utility, "tx": tx,
                                                  "start": start, "body": body})


def approve(st: G.Staged, regulator: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """The regulator's approval of exactly the proposed tariff (its transaction's digest),
    before it starts."""
    name, version, digest = body[1], body[2], body[3]
    rec = tariff(st, name, version)
    if rec is None:
        raise ChainError("unknown_tariff", f"no tariff {name!r} version {version} was proposed")
    if rec["tx"] != digest:
        raise ChainError("tariff_mismatch", f"tariff {name!r} version {version} was proposed "
                                            f"by transaction {rec['tx'].hex()}, not "
                                            f"{digest.hex()}")
    if "approval" in rec:
        raise ChainError("already_approved", f"tariff {name!r} version {version} is approved")
    if now >= rec["start"]:
        raise ChainError("tariff_started", f"tariff {name!r} version {version} started at "
                                           f"{rec['start']} (chain time {now}) unapproved: "
                                           "propose a new version")
    st.put(T_TARIFF, tariff_key(name, version), {**rec, "regulator": regulator,
                                                  "approval": tx})



def receive(st: G.Staged, utility: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """A bill's receipt: by the utility of its tariff, after its period, under the approved
    version in force over the whole period; once per account and period start, unless it
    names the receipt it corrects (a disputed bill re-run)."""
    account, start, end, name, version = body[1], body[2], body[3], body[4], body[5]
    for t in (start, end - 1):  # a bill's period lies under one version
        _billing_version(st, utility, name, version, t)
    if end > now:
        raise ChainError("period_open", f"the period ends at {end}, after the chain time "
                                        f"{now}: bill it once it has ended")
    key = account + G.u64(start)
    prev = st.get(T_RECEIPT, key)
    replaces = body.get(8)
    if prev is not None and replaces is None:
        raise ChainError("receipt_repeated", f"account {account.hex()} has a receipt for the "
                                             f"period from {start}: a correction names it "
                                             "(replaces)")
    if replaces is not None and (prev is None or prev["tx"] != replaces):
        raise ChainError("unknown_receipt", f"{replaces.hex()} is not the latest receipt of "
                                            f"account {account.hex()} from {start}")
    _no_overlap(st, account, start, end, prev if replaces is not None else None)
    rec_out = {"utility": utility, "tx": tx, "end": end, "tariff": name, "version": version,
               "bill": body[6], "total": body[7], "n": 1 if prev is None else prev["n"] + 1}
    if replaces is not None:
        rec_out["replaces"] = replaces
    st.put(T_RECEIPT, key, rec_out)


def _no_overlap(st: G.Staged, account: bytes, start: int, end: int,
                corrected: dict[str, Any] | None) -> None:
    """An account's periods are billed in order, never twice: a new one starts at or after
    the latest one's end; a correction keeps the period of the receipt it replaces."""
    if corrected is not None:
        if corrected["end"] != end:
            raise ChainError("period_overlap", f"a correction keeps its period: the receipt "
                                               f"it replaces ends at {corrected['end']}, not "
                                               f"{end}")
        return
    last = st.get(T_PERIOD, account)
    if last is not None and start < last["end"]:
        raise ChainError("period_overlap", f"account {account.hex()} is billed until "
                                           f"{last['end']}: a period from {start} would bill "
                                           "some of it twice")
    st.put(T_PERIOD, account, {"end": end})


def _billing_version(st: G.Staged, utility: bytes, name: str, version: int,
                     t: int) -> dict[str, Any]:
    """The approved tariff version `utility` bills under, in force at `t`."""
    rec = tariff(st, name, version)
    if rec is None or "approval" not in rec:
        raise ChainError("unknown_tariff", f"tariff {name!r} version {version} is not an "
                                           "approved tariff")
    if rec["utility"] != utility:
        raise ChainError("not_permitted", f"tariff {name!r} is {rec['utility'].hex()}'s: "
                                          f"{utility.hex()} does not bill under it")
    force = in_force(st, name, t)
    if force is None or force["body"][2] != version:
        raise ChainError("tariff_not_in_force", f"tariff {name!r} version {version} is not "
                                                f"the one in force at {t} (a bill's period, "
                                                "or an outage's end)")
    return rec


def credit(st: G.Staged, utility: bytes, body: dict[int, Any], tx: bytes) -> None:
    """An outage credit: the fog's outage record of the meter, outlasting the grace of the
    tariff in force when it ended, credited once, at the cents the tariff's rule gives."""
    fault, meter, start, name, version, wh, cents = (body[k] for k in range(1, 8))
    outage = st.get(OU.T_OUTAGE, OU.outage_key(meter, start, fault))
    if outage is None:
        raise ChainError("no_outage_record", f"no outage record of meter {meter.hex()} from "
                                             f"{start} came with fault transaction "
                                             f"{fault.hex()}: compensation needs the fog's "
                                             "record")
    rec = _billing_version(st, utility, name, version, outage["end"] - 1)
    t = BL.Tariff.of(rec["body"])
    if outage["end"] - start <= t.grace_s:
        raise ChainError("within_grace", f"the outage lasted {outage['end'] - start} s, not "
                                         f"more than the tariff's grace of {t.grace_s} s")
    want = BL.compensation_cents(t, wh)
    if cents != want:
        raise ChainError("credit_mismatch", f"{wh} Wh not served at {t.compensation_rate} "
                                            f"mc/kWh, capped at {t.compensation_cap} mc, is "
                                            f"{want} cents, not {cents}")
    key = meter + fault
    if st.get(T_CREDIT, key) is not None:
        raise ChainError("credit_repeated", f"meter {meter.hex()} was credited for outage "
                                            f"record {fault.hex()} already")
    st.put(T_CREDIT, key, {"utility": utility, "tx": tx, "start": start,
                           "end": outage["end"], "tariff": name, "version": version,
                           "wh": wh, "cents": cents})


def redeem(st: G.Staged, customer: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """Points redeemed against an account's bill: the tariff in force now must accept
    points; they move from the sender's market account to the tariff's utility, and the
    bill of the period this falls in subtracts what the tariff makes of them (001 s2.3)."""
    name, account, upt = body[1], body[2], body[3]
    rec = in_force(st, name, now)
    if rec is None:
        raise ChainError("tariff_not_in_force", f"no approved version of tariff {name!r} is "
                                                f"in force at {now}")
    t = BL.Tariff.of(rec["body"])
    if not t.points_rate:
        raise ChainError("points_not_accepted", f"tariff {name!r} version {t.version} "
                                                "accepts no points against bills")
    cents = BL.points_cents(t, upt)
    if cents < 1:
        raise ChainError("points_too_few", f"{upt} upt at {t.points_rate} mc per point is "
                                           "less than half a cent")
    M.debit(st, customer, upt, f"redeeming against account {account.hex()}")
    M.credit(st, rec["utility"], upt)
    st.put(T_REDEEM, account + G.u64(now) + tx, {
        "customer": customer, "tx": tx, "t": now, "tariff": name, "version": t.version,
        "upt": upt, "cents": cents})
