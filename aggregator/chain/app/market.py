"""The market's state (docs/PROTOCOL.md section 27): grid access, the points accounts, the
published network and the orders, shared by the mk_* kinds; a cycle's clearing, contracts
and settlement are `app.market_cycle`, the clearing arithmetic `app.auction`.

Application records (integers in keys 8-byte big-endian, a side one byte b or s):

    mk.operator   ""                       -> the grid operator: who set the market params
    mk.enrolled   participant              -> {"fog", "meter", "line", "t", "tx"}
    mk.meter      fog || meter             -> participant
    mk.access     participant              -> the latest access decision (`decide_access`)
    mk.account    participant              -> {"balance", "held", "owed"} (upt)
    mk.network    ""                       -> {"version", "lines": [[id, parent, W, fee]]}
    mk.rep        participant              -> {"bid", "done", "good", "penalty"}
    mk.order      cycle || side || participant -> {"wh", "left", "price", "fee_max",
                                                   "quotes", "seq", "held", "unit", "pt",
                                                   "tx", "params": the params tx in force,
                                                   a revealed one's "commit": its commit tx}
    mk.live       the same key as mk.order -> 1 while something of the order is left (the
                                            book scans these, not every order of the cycle)
    mk.commit     cycle || participant     -> {"digest", "seq", "revealed", "tx"}
    mk.seq        ""                       -> the next order's time priority
    mk.flow       cycle || line            -> Wh the cycle's contracts carry over it
    mk.congested  cycle || line            -> the fee, mpt/kWh, once it congested
    mk.cycle      cycle                    -> {"state", "contracts", "unmatched", "closed",
                                               "tx", and with trades "cep", "low"}
    mk.contract   cycle || n (4 bytes)     -> the contract (`market_cycle.make_contracts`;
                                            every transaction it came from by digest)
    mk.last       ""                       -> {"cycle", "floor"}: the latest closed cycle
    mk.delivery   participant || cycle     -> {"exp", "imp", "dur", "est", "step",
                                               "statements", "anchors" (each one's carrier)}
    mk.review     cycle || n || reviewer   -> good (1) or not (0)
"""

from __future__ import annotations

from typing import Any

from aggregator.chain.app import auction as AU
from aggregator.chain.app import green as G
from aggregator.chain.ledger import ChainError
from meterledger import wire as P
from meterledger.wire import market as MK

T_OPERATOR, T_ENROLLED, T_MMETER, T_ACCESS = "mk.operator", "mk.enrolled", "mk.meter", "mk.access"
T_ACCOUNT, T_NETWORK, T_REP, T_ORDER = "mk.account", "mk.network", "mk.rep", "mk.order"
T_COMMIT, T_SEQ, T_FLOW, T_CONGESTED = "mk.commit", "mk.seq", "mk.flow", "mk.congested"
T_CYCLE, T_CONTRACT, T_LAST = "mk.cycle", "mk.contract", "mk.last"
T_DELIVERY, T_REVIEW, T_LIVE = "mk.delivery", "mk.review", "mk.live"

OPEN, CLOSED, SETTLED = "open", "closed", "settled"
u64 = G.u64


def side_byte(side: str) -> bytes:
    return b"b" if side == MK.BUY else b"s"


# --- accounts (001 s2.3: points, not a currency) ---------------------------------------------
def account(st: G.Staged, pid: bytes) -> dict[str, int]:
    return dict(st.get(T_ACCOUNT, pid) or {"balance": 0, "held": 0, "owed": 0})


def operator(st: G.Staged) -> bytes:
    op = st.get(T_OPERATOR, b"")
    if op is None:
        raise ChainError("application_disabled", "no grid operator has set the market "
                                                 "parameters on this chain")
    return bytes(op)


def credit(st: G.Staged, pid: bytes, upt: int) -> None:
    """Pay `upt` into an account; what it owes the grid operator (an imbalance it could not
    pay) is paid first."""
    if upt == 0:
        return
    acct = account(st, pid)
    debt = min(acct["owed"], upt)
    acct["owed"] -= debt
    # a balance never passes UPT_MAX (what no payment reaches): issuance beyond it (points
    # for clean trades at the highest clean_upt) is lost rather than a settlement refused
    acct["balance"] = min(acct["balance"] + upt - debt, MK.UPT_MAX)
    st.put(T_ACCOUNT, pid, acct)
    if debt:
        credit(st, operator(st), debt)


def debit(st: G.Staged, pid: bytes, upt: int, what: str) -> None:
    """Take `upt` from the free balance; never more than it holds (`insufficient_points`)."""
    acct = account(st, pid)
    if acct["balance"] < upt:
        raise ChainError("insufficient_points", f"{what} needs {upt} upt and "
                                                f"{pid.hex()} has {acct['balance']} free")
    acct["balance"] -= upt
    st.put(T_ACCOUNT, pid, acct)


def hold(st: G.Staged, pid: bytes, upt: int, what: str) -> None:
    """Move `upt` from the free balance to escrow."""
    debit(st, pid, upt, what)
    acct = account(st, pid)
    acct["held"] += upt
    st.put(T_ACCOUNT, pid, acct)


def unhold(st: G.Staged, pid: bytes, upt: int, to: bytes | None = None) -> None:
    """Take `upt` out of `pid`'s escrow: back to its balance, or paid to `to`."""
    acct = account(st, pid)
    if acct["held"] < upt:  # an invariant, not a user error: the rules hold what they take
        raise ChainError("out_of_range", f"escrow of {pid.hex()} holds {acct['held']} upt, "
                                         f"not {upt}")
    acct["held"] -= upt
    st.put(T_ACCOUNT, pid, acct)
    credit(st, pid if to is None else to, upt)


# --- enrolment and grid access (004 s3.3.2) --------------------------------------------------
def enrolled(st: G.Staged, pid: bytes, kind: str) -> dict[str, Any]:
    e = st.get(T_ENROLLED, pid)
    if e is None:
        raise ChainError("not_enrolled", f"{pid.hex()} has no metering point enrolled in the "
                                         f"market by the grid operator ({kind} refused)")
    return dict(e)


def decide_access(ap: dict[str, int], body: dict[int, Any], qualified: bool) -> list[str]:
    """The reasons an access request fails, one per failed attribute, in ACCESS_REASONS
    order; none: granted. The five attributes of 004 s3.3.2 plus voltage and identity."""
    reasons: list[str] = []
    if any(k not in body for k in range(1, 7)):
        reasons.append("MISSING_ATTRIBUTE")
    if not qualified:
        reasons.append("NOT_QUALIFIED")
    source, nature = body.get(1), body.get(2)
    if source is not None and (source not in MK.SOURCES
                               or not ap["sources"] >> MK.SOURCES.index(source) & 1):
        reasons.append("SOURCE_NOT_ALLOWED")
    if nature is not None and (nature not in MK.NATURES
                               or not ap["natures"] >> MK.NATURES.index(nature) & 1
                               or (source in MK.NATURE_OF and MK.NATURE_OF[source] != nature)):
        reasons.append("NATURE_NOT_ALLOWED")
    checks = (("SUPPLY_OUT_OF_RANGE", 3, ap["supply_min_w"], ap["supply_max_w"]),
              ("PRICE_OUT_OF_RANGE", 4, ap["price_min"], ap["price_max"]),
              ("SAFETY_NOT_MET", 5, ap["safety_min"], MK.SAFETY_MAX),
              ("VOLTAGE_ABOVE_110KV", 6, 0, ap["voltage_max_v"]))
    for reason, k, lo, hi in checks:
        if k in body and not lo <= body[k] <= hi:
            reasons.append(reason)
    return reasons


def may_sell(dec: dict[str, Any] | None, now: int) -> bool:
    """An access decision granted and not expired at `now`."""
    return dec is not None and bool(dec["granted"]) and dec["until"] > now


def admitted(st: G.Staged, pid: bytes, now: int) -> dict[str, Any]:
    """The seller's granted, unexpired access, or the ChainError saying why it may not sell."""
    dec = st.get(T_ACCESS, pid)
    if may_sell(dec, now):
        return dict(dec)
    if dec is None or not dec["granted"]:
        why = "never applied" if dec is None else f"was refused: {', '.join(dec['reasons'])}"
        raise ChainError("not_admitted", f"{pid.hex()} {why}; only admitted sellers sell")
    raise ChainError("not_admitted", f"the access of {pid.hex()} expired at "
                                     f"{dec['until']} (chain time {now}); apply again")


# --- the network (001 s3.3) -----------------------------------------------------------------
def network(st: G.Staged) -> dict[str, AU.Line]:
    rec = st.get(T_NETWORK, b"")
    lines = [] if rec is None else rec["lines"]
    return {x[0]: AU.Line(x[1], x[2], x[3]) for x in lines}


def line_left(st: G.Staged, mp: dict[str, int], cycle: int,
              net: dict[str, AU.Line]) -> dict[str, int]:
    """Wh each line may still carry in the cycle: its capacity over the cycle less the flow
    of the cycle's contracts so far."""
    out = {}
    for lid, line in sorted(net.items()):
        used = st.get(T_FLOW, u64(cycle) + lid.encode()) or 0
        out[lid] = max(0, line.capacity_w * mp["cycle_s"] // 3600 - used)
    return out


# --- reputation (001 eq. 4) -------------------------------------------------------------------
def rep_counts(st: G.Staged, pid: bytes) -> dict[str, int]:
    return dict(st.get(T_REP, pid) or {"bid": 0, "done": 0, "good": 0, "penalty": 0})


def reputation(st: G.Staged, pid: bytes) -> int:
    r = rep_counts(st, pid)
    return AU.reputation(r["good"], r["done"], r["bid"], r["penalty"])


def count(st: G.Staged, pid: bytes, **delta: int) -> None:
    r = rep_counts(st, pid)
    for name, d in sorted(delta.items()):
        r[name] += d
    st.put(T_REP, pid, r)


# --- the cycle's timeline -------------------------------------------------------------------
def params_tx(st: G.Staged) -> bytes:
    """The transaction that set the market parameters in force (an order's P_T, a
    settlement's imbalance price and deadline come from it: a trade's proof names it)."""
    # a record written before parameters named their transaction: no proof names it
    return bytes(st.get(G.T_PARAMS, b"market").get("tx", P.ZERO32))


def transmission(mp: dict[str, int]) -> int:
    """001 s3.3: P_T = C1 + C2 + C3 (operation, market and congestion management,
    ancillary services), mpt/kWh."""
    return mp["c1"] + mp["c2"] + mp["c3"]


def gate(mp: dict[str, int], cycle: int) -> int:
    return cycle - mp["gate_s"]


def check_cycle(mp: dict[str, int], cycle: int, now: int, kind: str) -> None:
    """An order or commitment for `cycle`: a cycle start, not beyond the horizon, before
    its gate."""
    if cycle % mp["cycle_s"]:
        raise ChainError("bad_cycle", f"cycle {cycle} is not a multiple of cycle_s "
                                      f"{mp['cycle_s']}")
    if cycle > now + mp["horizon_s"]:
        raise ChainError("bad_cycle", f"cycle {cycle} is beyond the horizon: orders open "
                                      f"{mp['horizon_s']} s ahead (chain time {now})")
    if now >= gate(mp, cycle):
        raise ChainError("gate_closed", f"the gate of cycle {cycle} closed at "
                                        f"{gate(mp, cycle)} (chain time {now}); {kind} refused")


def open_cycle(st: G.Staged, cycle: int, kind: str) -> dict[str, Any]:
    rec = st.get(T_CYCLE, u64(cycle))
    if rec is not None and rec["state"] != OPEN:
        raise ChainError("cycle_closed", f"cycle {cycle} is {rec['state']}; {kind} refused")
    return dict(rec or {"state": OPEN, "contracts": 0})


# --- orders ----------------------------------------------------------------------------------
def order_key(cycle: int, side: str, pid: bytes) -> bytes:
    return u64(cycle) + side_byte(side) + pid


def quote(st: G.Staged, cycle: int, side: str, pid: bytes) -> dict[str, Any] | None:
    rec = st.get(T_ORDER, order_key(cycle, side, pid))
    return None if rec is None else dict(rec)


def unit_hold(mp: dict[str, int], side: str, price: int, fee_max: int) -> int:
    """What a bid holds per Wh, the most it can pay: bid + P_T + fee_max (the P_T in force
    when it is placed is the one its contracts pay); an ask holds nothing."""
    return price + transmission(mp) + fee_max if side == MK.BUY else 0


def covered(st: G.Staged, pid: bytes, wh: int) -> None:
    """A green ask's Wh are covered by the seller's active green certificates (it could give
    them away before settlement: then the contract records the shortfall)."""
    active = (st.get(G.T_BALANCE, pid) or {}).get("active", 0)
    if active < wh:
        raise ChainError("green_uncovered", f"a green ask of {wh} Wh needs as many Wh of "
                                            f"active green certificates; {pid.hex()} holds "
                                            f"{active}")


def check_quote(st: G.Staged, mp: dict[str, int], cycle: int, side: str, pid: bytes,
                body: dict[int, Any], now: int, kind: str) -> dict[str, Any] | None:
    """Who may quote and at what price: an enrolled buyer above the latest closed cycle's
    lowest clearing price (001 s3.1 (b)); an admitted seller (a green ask covered by its
    certificates); a re-quote never raising an ask nor lowering a bid (eqs. 2, 3), at most
    quotes_max per side and cycle. Returns the participant's previous quote on this side,
    if any."""
    price, wh, green = body[4], body[3], body.get(7, 0)
    enrolled(st, pid, kind)
    if side == MK.SELL:
        admitted(st, pid, now)
        if green:
            covered(st, pid, wh)
    else:
        last = st.get(T_LAST, b"")
        if last is not None and last["floor"] and price <= last["floor"]:
            raise ChainError("bid_below_floor", f"a bid must be above {last['floor']} mpt/kWh, "
                                                f"the lowest clearing price of cycle "
                                                f"{last['cycle']}, not {price}")
    prev = quote(st, cycle, side, pid)
    if prev is None:
        return None
    if prev["quotes"] >= mp["quotes_max"]:
        raise ChainError("quotes_exhausted", f"{pid.hex()} quoted {prev['quotes']} times on "
                                             f"the {side} side of cycle {cycle}, the most")
    if (side == MK.SELL and price > prev["price"]) or (side == MK.BUY and price < prev["price"]):
        way = "raise its ask" if side == MK.SELL else "lower its bid"
        raise ChainError("requote_not_monotonic", f"a re-quote may not {way} (001 eqs. 2-3): "
                                                  f"{prev['price']} -> {price} mpt/kWh")
    return prev


def put_order(st: G.Staged, mp: dict[str, int], cycle: int, side: str, pid: bytes,
              body: dict[int, Any], prev: dict[str, Any] | None, tx: bytes,
              commit: dict[str, Any] | None = None) -> dict[str, Any]:
    """Place (or re-quote) an order: a re-quote replaces what is left of the previous one;
    a bid holds its most (`unit_hold`). Its time priority is the next one, or a revealed
    order's `commit`ment's (whose transaction it names)."""
    wh, price, fee_max = body[3], body[4], body[5]
    if prev is not None and prev["held"]:
        unhold(st, pid, prev["held"])
    unit = unit_hold(mp, side, price, fee_max)
    held = unit * wh
    if held:
        hold(st, pid, held, f"a bid of {wh} Wh at {price} mpt/kWh")
    if commit is None:
        seq = st.get(T_SEQ, b"") or 0
        st.put(T_SEQ, b"", seq + 1)
    else:
        seq = commit["seq"]
    rec = {"wh": wh, "left": wh, "price": price, "fee_max": fee_max,
           "quotes": 1 if prev is None else prev["quotes"] + 1, "seq": seq, "held": held,
           "unit": unit, "pt": transmission(mp), "tx": tx, "params": params_tx(st)}
    if commit is not None:
        rec["commit"] = commit["tx"]
    if body.get(7):
        rec["green"] = 1
    st.put(T_ORDER, order_key(cycle, side, pid), rec)
    st.put(T_LIVE, order_key(cycle, side, pid), 1)
    return rec


def put_left(st: G.Staged, key: bytes, rec: dict[str, Any]) -> None:
    """Write an order whose `left` changed; off the book once nothing is left."""
    st.put(T_ORDER, key, rec)
    if rec["left"] == 0:
        st.put(T_LIVE, key, None)


def book(st: G.Staged, cycle: int, now: int) -> list[AU.Quote]:
    """The cycle's live orders (anything left), both sides, as quotes with reputations; an
    ask whose seller's access expired or was refused since is not in it."""
    out: list[AU.Quote] = []
    for key, _ in st.scan(T_LIVE, u64(cycle)):
        rec = st.get(T_ORDER, key)
        side = MK.BUY if key[8:9] == b"b" else MK.SELL
        pid = key[9:]
        if side == MK.SELL and not may_sell(st.get(T_ACCESS, pid), now):
            continue
        if rec["left"] > 0:
            out.append(AU.Quote(pid, side, rec["left"], rec["price"], rec["fee_max"],
                                rec["seq"], reputation(st, pid), rec.get("green", 0)))
    return out
