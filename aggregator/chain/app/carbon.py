"""The carbon application's state and rules (docs/PROTOCOL.md section 26), shared by its kinds
(cb_allocate, cb_transfer, cb_settle, cb_ccer), the anchor kind (whose energy statements
charge fossil generators' emissions) and the notaries' records (GC issuances, conversions).

Allowances are grams of CO2 per emitter and compliance period p, the interval
[start + p x period_s, start + (p + 1) x period_s) of the chain's parameters; an energy
statement belongs to the period of its interval's last second (ivl - 1). Tables:

    cb.output     generator id "/" || p -> {"wh": measured export, "est": estimated export,
                                            "refused": implausible export, "g": grams
                                            charged, "factor": g/MWh of the period}
    cb.dur        generator id          -> the interval length of its first statement
    cb.account    owner id || p         -> ACCOUNT (grams; balance() is what the owner holds)
    cb.allocated  generator id "/" || p -> {"grams", "wh", "baseline"}
    cb.ccer       generator id "/" || p -> {"owner", "claimed", "wh", "g"}
    cb.gc         generator id "/" || p -> Wh certified on the GC chain (notarized)
    cb.restricted owner id              -> {"period", "deficit_g"} (production restricted)
    cb.conv       certificate id        -> a conversion's outcome

Every amount is computed from cumulative totals (grams = cumulative Wh x factor // 10^6, the
change booked), so no rounding drifts however the energy arrives.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from typing import Any

from aggregator.chain.app.green import T_GEN, T_METER, Staged, emit, implausible, params, u64
from aggregator.chain.ledger import ChainError
from meterledger import wire as P
from meterledger.wire import carbon as CB
from meterledger.wire import certificates as GC

T_OUTPUT, T_ACCOUNT, T_ALLOCATED = "cb.output", "cb.account", "cb.allocated"
T_CCER, T_GCWH, T_RESTRICTED, T_CONV = "cb.ccer", "cb.gc", "cb.restricted", "cb.conv"
T_GENDUR = "cb.dur"  # generator id -> the interval length of its first statement
ACCOUNT = ("allocated", "received", "sent", "emitted", "relief", "ccer", "fined_g", "fine",
           "settled")


def gkey(gid: str, period: int) -> bytes:
    return gid.encode() + b"/" + u64(period)


def period_start(cp: dict[str, int], p: int) -> int:
    return cp["start"] + p * cp["period_s"]


def closes(cp: dict[str, int], p: int) -> int:
    """When period p's settlement window opens: its end plus the grace time."""
    return period_start(cp, p + 1) + cp["grace_s"]


def account(st: Staged, owner: bytes, p: int) -> dict[str, int]:
    a = st.get(T_ACCOUNT, owner + u64(p))
    return dict(a) if a is not None else dict.fromkeys(ACCOUNT, 0)


def balance(a: dict[str, int]) -> int:
    """Grams an owner holds for the period: what came in less what went out or was emitted."""
    return (a["allocated"] + a["received"] + a["relief"] + a["ccer"] - a["sent"]
            - a["emitted"])


def book(st: Staged, owner: bytes, p: int, **grams: int) -> dict[str, int]:
    a = account(st, owner, p)
    for name, delta in sorted(grams.items()):
        a[name] += delta
    st.put(T_ACCOUNT, owner + u64(p), a)
    return a


def generator(st: Staged, gid: str) -> dict[str, Any]:
    gen = st.get(T_GEN, gid.encode())
    if gen is None:
        raise ChainError("unknown_generator", f"no generator {gid} is registered on this chain")
    return dict(gen)


# --- the anchor's statements ---------------------------------------------------------------
def record_output(st: Staged, cp: dict[str, int], gid: str, f: dict[int, Any]) -> None:
    """Book one statement of generator `gid` (fields `f`): its export into the period's
    output; a fossil generator's emissions, charged to its owner; a CCER claim recomputed."""
    p = CB.period_of(cp["start"], cp["period_s"], f[2])
    if p < 0 or f[5] == 0:
        return
    gen = generator(st, gid)
    k = gkey(gid, p)
    out = dict(st.get(T_OUTPUT, k) or {"wh": 0, "est": 0, "refused": 0, "g": 0})
    first = st.get(T_GENDUR, gid.encode()) or 0
    # the GC chain's plausibility rule, and before commissioning: counted as refused,
    # neither verified nor charged
    if implausible(gen, f, first) or f[2] - f[3] < gen["commissioned"]:
        out["refused"] += f[5]
        st.put(T_OUTPUT, k, out)
        return
    if not first:
        st.put(T_GENDUR, gid.encode(), f[3])
    out["est" if f[6] else "wh"] += f[5]
    if gen["tech"] in GC.FOSSIL:
        # estimated energy is charged as well: missing data never lowers an emitter's bill;
        # the factor is the one in force at the period's first statement (a change of
        # parameters applies from the next period, never to energy already charged)
        out.setdefault("factor", cp["factor_" + gen["tech"]])
        g = (out["wh"] + out["est"]) * out["factor"] // GC.MWH
        book(st, gen["owner"], p, emitted=g - out["g"])
        out["g"] = g
    st.put(T_OUTPUT, k, out)
    recompute_ccer(st, cp, gid, p)


def record_outputs(st: Staged, fog: bytes, statements: Iterable[P.Message]) -> None:
    """An anchor's statements on a chain with the carbon application (after green's
    record_statements refused any repeat)."""
    cp = params(st, "carbon")
    if cp is None:
        return
    for s in statements:
        gid = st.get(T_METER, fog + s.fields[1])
        if gid is not None:
            record_output(st, cp, gid.decode(), s.fields)


# --- allocation, transfer, settlement --------------------------------------------------------
def allocate(st: Staged, cp: dict[str, int], gid: str, p: int, baseline_wh: int,
             now: int) -> int:
    """Free allocation to a fossil generator's owner for period p by the historical-intensity
    method: the technology's benchmark x the verified output of period p - 1, or x the
    regulator's baseline for a generator without one. Once per generator and period."""
    gen = generator(st, gid)
    if gen["tech"] not in GC.FOSSIL:
        raise ChainError("not_emitter", f"generator {gid} is {gen['tech']}: allowances are "
                                        f"allocated to {', '.join(GC.FOSSIL)} generators")
    k = gkey(gid, p)
    if st.get(T_ALLOCATED, k) is not None:
        raise ChainError("already_allocated", f"{gid} has its allocation for period {p}")
    if now >= closes(cp, p):
        raise ChainError("period_closed", f"period {p}'s allowances were due at "
                                          f"{closes(cp, p)}; nothing is allocated to it now")
    wh = baseline_wh
    if wh == 0:
        if now < period_start(cp, p):
            raise ChainError("period_open", f"period {p - 1}'s output is known only once "
                                            f"period {p} began (at {period_start(cp, p)}; "
                                            f"the chain's time is {now})")
        out = st.get(T_OUTPUT, gkey(gid, p - 1)) if p > 0 else None
        wh = out["wh"] if out is not None else 0
        if wh == 0:
            raise ChainError("no_verified_output", f"{gid} has no verified output in period "
                                                   f"{p - 1}: give a baseline_wh")
    grams = wh * cp["benchmark_" + gen["tech"]] // GC.MWH
    st.put(T_ALLOCATED, k, {"grams": grams, "wh": wh, "baseline": int(baseline_wh > 0)})
    book(st, gen["owner"], p, allocated=grams)
    return grams


def transfer(st: Staged, cp: dict[str, int], sender: bytes, to: bytes, p: int, grams: int,
             now: int) -> None:
    if now >= closes(cp, p):
        raise ChainError("period_closed", f"period {p}'s allowances were due at "
                                          f"{closes(cp, p)}; they no longer move")
    held = balance(account(st, sender, p))
    if held < grams:
        raise ChainError("insufficient_allowance", f"{sender.hex()} holds {max(held, 0)} g "
                                                   f"for period {p}, not {grams}")
    book(st, sender, p, sent=grams)
    book(st, to, p, received=grams)


def settle(st: Staged, cp: dict[str, int], emitter: bytes, p: int, now: int) -> dict[str, int]:
    """Period p's compliance of `emitter`: a deficit is fined (fine_per_t per tonne, rounded
    up) and the emitter flagged for production restriction. Again later only for a deficit
    grown since (late statements): only the growth is fined."""
    if now < closes(cp, p):
        raise ChainError("period_open", f"period {p} is settled from {closes(cp, p)} (its end "
                                        f"plus the grace time); the chain's time is {now}")
    a = account(st, emitter, p)
    deficit = max(0, -balance(a))
    new = deficit - a["fined_g"]
    if a["settled"] and new <= 0:
        raise ChainError("already_settled", f"{emitter.hex()}'s period {p} is settled and its "
                                            "deficit has not grown")
    fine = -(-max(new, 0) * cp["fine_per_t"] // GC.MWH)
    a = book(st, emitter, p, fined_g=max(new, 0), fine=fine, settled=1 - a["settled"])
    # the flag follows the newest period settled: an older period settled again never
    # replaces or lifts a newer period's flag
    flag = st.get(T_RESTRICTED, emitter)
    if flag is not None and flag["period"] > p:
        return a
    if deficit > 0:
        st.put(T_RESTRICTED, emitter, {"period": p, "deficit_g": deficit})
    elif flag is not None:
        st.put(T_RESTRICTED, emitter, None)  # compliant again
    return a


# --- CCER and the notaries' records ------------------------------------------------------------
def claim_ccer(st: Staged, cp: dict[str, int], sender: bytes, gid: str, p: int,
               claimed: int, now: int) -> None:
    if now >= closes(cp, p):
        raise ChainError("period_closed", f"period {p} was due at {closes(cp, p)}: no claim "
                                          "for it now")
    gen = generator(st, gid)
    if gen["tech"] not in GC.RENEWABLE:
        raise ChainError("not_renewable", f"generator {gid} is {gen['tech']}: CCER is for "
                                          f"{', '.join(GC.RENEWABLE)} projects")
    if gen["owner"] != sender:
        raise ChainError("not_owner", f"generator {gid} belongs to {gen['owner'].hex()}")
    if st.get(T_CCER, gkey(gid, p)) is not None:
        raise ChainError("ccer_claimed", f"{gid} has a CCER claim for period {p} already")
    # the displacement factor in force when claimed stays the claim's
    st.put(T_CCER, gkey(gid, p), {"owner": sender, "claimed": claimed, "wh": 0, "g": 0,
                                  "factor": cp["ccer_factor"]})
    recompute_ccer(st, cp, gid, p)


def recompute_ccer(st: Staged, cp: dict[str, int], gid: str, p: int) -> None:
    """A claim's credit: its verified export in the period less what the GC chain certified
    of it (003 s3.2.4(3): the same energy is never both), at most what was claimed. Run
    whenever either changes, the difference booked, so an overlap is deducted once."""
    k = gkey(gid, p)
    claim = st.get(T_CCER, k)
    if claim is None:
        return
    out = st.get(T_OUTPUT, k)
    verified = out["wh"] if out is not None else 0
    wh = max(0, min(claim["claimed"], verified - (st.get(T_GCWH, k) or 0)))
    g = wh * claim["factor"] // GC.MWH
    if (wh, g) != (claim["wh"], claim["g"]):
        book(st, claim["owner"], p, ccer=g - claim["g"])
        st.put(T_CCER, k, {**claim, "wh": wh, "g": g})


def certified(st: Staged, cp: dict[str, int], values: dict[str, Any]) -> None:
    """A notarized GC issuance: its Wh per compliance period (the notaries computed them
    with this chain's start and period_s, which never change once set), held against CCER
    claims."""
    gid, parts = values.get("gen"), values.get("periods")
    if not (isinstance(gid, str) and GC.GENERATOR_ID.fullmatch(gid) and isinstance(parts, list)
            and 0 < len(parts) <= CB.PARTS_MAX
            and all(isinstance(x, list) and len(x) == 2 and all(
                isinstance(v, int) and 0 <= v <= GC.WH_MAX for v in x) for x in parts)
            and all(a[0] < b[0] for a, b in pairwise(parts))
            and parts[-1][0] <= CB.PERIOD_MAX):
        raise ChainError("bad_record", "an issue record's values are gen (a generator id) and "
                                       f"periods (1-{CB.PARTS_MAX} [period, Wh] pairs, "
                                       "ascending by period)")
    # a generator not (yet) registered here is booked all the same: its claims, when it
    # is, find the energy certified before
    for p, wh in parts:
        k = gkey(gid, p)
        st.put(T_GCWH, k, (st.get(T_GCWH, k) or 0) + wh)
        recompute_ccer(st, cp, gid, p)


def convert(st: Staged, cp: dict[str, int], cid: str, values: dict[str, Any], tx: bytes,
            lock_tx: bytes, now: int, registered: bool) -> str:
    """A notarized lock of certificate `cid` on the GC chain: credited as carbon relief at
    the chain's conversion ratio if this chain's time is not past the lock's deadline,
    otherwise expired; decided once, here, and relayed back (burn or release)."""
    owner, wh, p, deadline = (values.get(k) for k in ("owner", "wh", "period", "deadline"))
    if not (isinstance(owner, bytes) and len(owner) == 8 and isinstance(wh, int)
            and 0 < wh <= GC.WH_MAX and isinstance(p, int) and 0 <= p <= CB.PERIOD_MAX
            and isinstance(deadline, int) and deadline >= 0):
        raise ChainError("bad_record", "a lock record's values are owner (8 bytes), wh, "
                                       "period and deadline (integers)")
    outcome, grams = CB.CREDITED, wh * cp["convert_per_mwh"] // GC.MWH
    if now > deadline:
        outcome, grams = CB.EXPIRED, 0
    elif not registered or now >= closes(cp, p):
        outcome, grams = CB.REFUSED, 0  # no such entity here, or its period is settled
    if grams:
        book(st, owner, p, relief=grams)
    st.put(T_CONV, cid.encode(), {"outcome": outcome, "owner": owner, "wh": wh,
                                  "period": p, "grams": grams, "at": now, "lock": lock_tx})
    emit(st, CB.subject(CB.OUTCOME, cid), tx, {"outcome": outcome, "lock": lock_tx})
    return outcome
