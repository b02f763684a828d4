"""A market cycle's life on the chain (docs/PROTOCOL.md section 27): matches become
contracts holding the buyer's escrow, three signatures make them effective, the cycle
closes at its gate (a sealed call auction clears then), and after the delivery interval
the fog-signed delivery statements of the parties' meters settle it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from aggregator.chain.app import auction as AU
from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.ledger import ChainError
from meterledger import wire as P
from meterledger.wire import market as MK

MATCHED, EFFECTIVE, LAPSED = "matched", "effective", "lapsed"
BUYER, SELLER, GRID = 1, 2, 4  # the signature bits of a contract
ALL_SIGNED = BUYER | SELLER | GRID
u64 = G.u64


def contract_key(cycle: int, n: int) -> bytes:
    return u64(cycle) + n.to_bytes(4, "big")


def contract(st: G.Staged, cycle: int, n: int) -> dict[str, Any]:
    c = st.get(M.T_CONTRACT, contract_key(cycle, n))
    if c is None:
        raise ChainError("unknown_contract", f"cycle {cycle} has no contract {n}")
    return dict(c)


def contracts(st: G.Staged, cycle: int) -> list[tuple[bytes, dict[str, Any]]]:
    return [(k, dict(v)) for k, v in st.scan(M.T_CONTRACT, u64(cycle))]


def _take(st: G.Staged, cycle: int, q: AU.Quote, wh: int, escrow: int = 0) -> dict[str, Any]:
    """`wh` of an order matched: less left; of what a bid held for it, `escrow` stays held
    (now the contract's) and the rest returns to the balance. The escrow never passes
    through the balance: a participant that owes the grid operator would see it taken."""
    key = M.order_key(cycle, q.side, q.who)
    rec = dict(st.get(M.T_ORDER, key))
    rec["left"] -= wh
    release = rec["unit"] * wh
    rec["held"] -= release
    M.put_left(st, key, rec)
    if release > escrow:
        M.unhold(st, q.who, release - escrow)
    return rec


def make_contracts(st: G.Staged, mp: dict[str, int], cycle: int, cyc: dict[str, Any],
                   matches: Sequence[AU.Match], congested: Iterable[str], tx: bytes) -> None:
    """Each match becomes a contract of the cycle awaiting its three signatures, the buyer's
    P_F x Wh held in escrow (never more than its bid held); the book made no more matches
    than contracts_max allows (the cap bounds what one mk_settle does)."""
    for lid in sorted(congested):
        key = u64(cycle) + lid.encode()
        if st.get(M.T_CONGESTED, key) is None:
            st.put(M.T_CONGESTED, key, M.network(st)[lid].redispatch)
    for m in matches:
        n = cyc["contracts"]
        pt = st.get(M.T_ORDER, M.order_key(cycle, MK.BUY, m.buyer.who))["pt"]
        pf = AU.final_price(m.buyer.price, m.seller.price, pt, m.fee)  # <= the bid's unit
        bid = _take(st, cycle, m.buyer, m.wh, pf * m.wh)
        ask = _take(st, cycle, m.seller, m.wh)
        for lid in m.path:
            key = u64(cycle) + lid.encode()
            st.put(M.T_FLOW, key, (st.get(M.T_FLOW, key) or 0) + m.wh)
        st.put(M.T_CONTRACT, contract_key(cycle, n), {
            "buyer": m.buyer.who, "seller": m.seller.who, "wh": m.wh, "bid": m.buyer.price,
            "ask": m.seller.price, "mid": AU.midpoint(m.buyer.price, m.seller.price),
            "pt": pt, "fee": m.fee, "pf": pf, "escrow": pf * m.wh,
            "path": list(m.path), "signed": 0, "signs": [], "state": MATCHED, "tx": tx,
            "orders": [bid["tx"], ask["tx"]], "params": bid.get("params", P.ZERO32),
            **({"commits": [bid["commit"], ask["commit"]]} if "commit" in bid else {}),
            **({"green": 1} if m.buyer.green else {})})
        M.count(st, m.buyer.who, bid=1)
        M.count(st, m.seller.who, bid=1)
        cyc["contracts"] = n + 1


def match(st: G.Staged, mp: dict[str, int], cycle: int, cyc: dict[str, Any],
          takers: Iterable[bytes] | None, tx: bytes, now: int) -> None:
    """Match the cycle's book (all bids of a call, or the incoming order's participant of a
    continuous market) on the published network and make the contracts."""
    quotes = M.book(st, cycle, now)
    net = M.network(st)
    line_of = {q.who: M.enrolled(st, q.who, "a match")["line"] for q in quotes}
    left = M.line_left(st, mp, cycle, net)
    congested = {k[8:].decode() for k, _ in st.scan(M.T_CONGESTED, u64(cycle))}
    bids = [q for q in quotes if q.side == MK.BUY]
    asks = [q for q in quotes if q.side == MK.SELL]
    found = AU.match_book(bids, asks, takers, line_of, net, left, congested,
                          mp["contracts_max"] - cyc["contracts"])
    make_contracts(st, mp, cycle, cyc, found, congested, tx)


def sign(st: G.Staged, cycle: int, n: int, who: bytes, now: int, tx: bytes,
         terms: bytes) -> dict[str, Any]:
    """One of the three signatures (001 s3.3: buyer, seller, grid operator) on the
    contract's terms (`MK.contract_terms`: what was agreed, so a proof of the trade shows
    it), before the delivery interval starts; the third makes the contract effective."""
    c = contract(st, cycle, n)
    bit = (BUYER if who == c["buyer"] else SELLER if who == c["seller"]
           else GRID if who == M.operator(st) else 0)
    if not bit:
        raise ChainError("not_party", f"{who.hex()} is neither the buyer, the seller nor the "
                                      f"grid operator of contract {cycle}/{n}")
    if c["state"] != MATCHED:
        raise ChainError("contract_closed", f"contract {cycle}/{n} is {c['state']}")
    if now >= cycle:
        raise ChainError("signing_closed", f"contract {cycle}/{n} had to be signed before its "
                                           f"delivery started at {cycle} (chain time {now})")
    if c["signed"] & bit:
        raise ChainError("already_signed", f"{who.hex()} signed contract {cycle}/{n} already")
    if terms != MK.contract_terms(cycle, n, c):
        raise ChainError("terms_mismatch", f"the terms signed are not those of contract "
                                           f"{cycle}/{n} (MK.contract_terms of its record)")
    c["signed"] |= bit
    c["signs"] = [*c["signs"], tx]
    if c["signed"] == ALL_SIGNED:
        c["state"] = EFFECTIVE
    st.put(M.T_CONTRACT, contract_key(cycle, n), c)
    return c


# --- the gate: close the cycle ---------------------------------------------------------------
def close(st: G.Staged, mp: dict[str, int], cycle: int, now: int, tx: bytes) -> dict[str, Any]:
    """mk_clear: after the gate (and the reveal window of a sealed market) clear a sealed
    book, release what bids still hold, take reputation from every participant left
    unmatched (an unrevealed commitment too: 001 s3.1), publish the cycle's CEP (s3.2) and
    its lowest clearing price, the next bids' floor."""
    cyc = M.open_cycle(st, cycle, MK.MK_CLEAR)
    ready = M.gate(mp, cycle) + (mp["reveal_s"] if mp["mode"] == MK.SEALED else 0)
    if cycle % mp["cycle_s"] or now < ready:
        raise ChainError("gate_open", f"cycle {cycle} clears from {ready} (chain time {now})")
    if mp["mode"] == MK.SEALED:
        match(st, mp, cycle, cyc, None, tx, now)
    made = contracts(st, cycle)
    parties = {c[x] for _, c in made for x in ("buyer", "seller")}
    quoted: set[bytes] = set()
    for key, _ in st.scan(M.T_LIVE, u64(cycle)):  # the book is closed
        st.put(M.T_LIVE, key, None)
    for key, rec in st.scan(M.T_ORDER, u64(cycle)):
        quoted.add(key[9:])
        if rec["held"]:
            M.unhold(st, key[9:], rec["held"])
            st.put(M.T_ORDER, key, {**rec, "held": 0})
    quoted.update(k[8:] for k, _ in st.scan(M.T_COMMIT, u64(cycle)))
    for pid in sorted(quoted - parties):
        M.count(st, pid, bid=1, penalty=mp["penalty_ppm"])
    prices = [c["mid"] for _, c in made]
    low = min(prices) if prices else None
    last = st.get(M.T_LAST, b"")
    if last is None or cycle > last["cycle"]:
        # the previous cycle's lowest clearing price; a cycle without trades has none, so
        # a floor above every bid lapses with the cycle it froze (no market stays shut)
        st.put(M.T_LAST, b"", {"cycle": cycle, "floor": low if low is not None else 0})
    cep = AU.equilibrium_price(prices, mp["beta_milli"], mp["cep_n"])
    cyc.update(state=M.CLOSED, unmatched=len(quoted - parties), closed=now, tx=tx)
    if low is not None and cep is not None:  # records hold no null: a cycle without trades
        cyc.update(cep=cep, low=low)         # has neither

    st.put(M.T_CYCLE, u64(cycle), cyc)
    return cyc


# --- delivery, measured: the fog's statements of enrolled meters ------------------------------
def record_deliveries(st: G.Staged, fog: bytes, anchor: bytes,
                      statements: Iterable[P.Message]) -> None:
    """The energy statements of meters enrolled in the market, summed per participant and
    cycle (anchor kind; a repeat was refused by app.green). A statement not inside one
    cycle (its fog's interval does not divide cycle_s), or of another length than the
    cycle's first one (it could overlap it: counted in `other`), is not counted."""
    mp = G.params(st, "market")
    if mp is None:
        return
    for s in statements:
        f = s.fields
        pid = st.get(M.T_MMETER, fog + f[1])
        if pid is None:
            continue
        start = f[2] - f[3]
        cycle = start - start % mp["cycle_s"]
        if start < 0 or f[2] > cycle + mp["cycle_s"]:
            continue
        key = pid + u64(cycle)
        rec = dict(st.get(M.T_DELIVERY, key) or {"exp": 0, "imp": 0, "dur": 0, "est": 0,
                                                 "step": f[3], "statements": [],
                                                 "anchors": []})
        if f[3] != rec["step"]:  # another interval length could overlap what was counted
            rec["other"] = rec.get("other", 0) + 1
            st.put(M.T_DELIVERY, key, rec)
            continue
        rec.update(exp=rec["exp"] + f[5], imp=rec["imp"] + f[4], dur=rec["dur"] + f[3],
                   est=rec["est"] | f[6], statements=[*rec["statements"], s.digest],
                   anchors=[*rec["anchors"], anchor])
        st.put(M.T_DELIVERY, key, rec)


def delivered(st: G.Staged, mp: dict[str, int], pid: bytes, cycle: int) -> int | None:
    """What the participant's meter exported over the cycle, None until statements cover
    the whole cycle (estimated ones count: they are the fog's validated substitutes)."""
    rec = st.get(M.T_DELIVERY, pid + u64(cycle))
    return None if rec is None or rec["dur"] < mp["cycle_s"] else int(rec["exp"])


def settle(st: G.Staged, mp: dict[str, int], cycle: int, now: int, tx: bytes) -> dict[str, Any]:
    """mk_settle: after the delivery interval, each effective contract from the seller's
    measured export (shared by its contracts in contract order): the seller is paid the
    midpoint for what it delivered, the grid operator P_T and the congestion fee; a shortfall
    refunds the buyer and costs the seller the imbalance price, paid to the grid operator
    (what it cannot pay it owes). Waits for the statements until settle_s after the
    interval; then a seller without them delivered nothing. Unsigned contracts lapse."""
    cyc = st.get(M.T_CYCLE, u64(cycle))
    if cyc is None or cyc["state"] == M.OPEN:
        raise ChainError("cycle_open", f"cycle {cycle} is not closed yet (mk_clear first)")
    if cyc["state"] == M.SETTLED:
        raise ChainError("already_settled", f"cycle {cycle} was settled already")
    end = cycle + mp["cycle_s"]
    if now < end:
        raise ChainError("delivery_pending", f"cycle {cycle} delivers until {end} "
                                             f"(chain time {now})")
    late = now >= end + mp["settle_s"]
    op, params = M.operator(st), M.params_tx(st)
    used: dict[bytes, int] = {}
    for key, c in contracts(st, cycle):
        if c["state"] != EFFECTIVE:
            M.unhold(st, c["buyer"], c["escrow"])
            st.put(M.T_CONTRACT, key, {**c, "state": LAPSED, "settled": tx})
            continue
        seller = c["seller"]
        exp = delivered(st, mp, seller, cycle)
        if exp is None and not late:
            raise ChainError("delivery_pending", f"the statements of {seller.hex()}'s meter "
                                                 f"for cycle {cycle} have not all arrived; "
                                                 f"from {end + mp['settle_s']} it settles "
                                                 "as undelivered")
        d = max(0, min(c["wh"], (exp or 0) - used.get(seller, 0)))
        used[seller] = used.get(seller, 0) + d
        _pay(st, mp, c, d, op)
        green = give_certificates(st, seller, c["buyer"], d) if c.get("green") else {}
        if green:
            green["clean_upt"] = clean_points(st, mp, c, d - green["green_short"])
        if d:
            M.count(st, c["buyer"], done=1)
            M.count(st, seller, done=1)
        st.put(M.T_CONTRACT, key, {**c, "state": M.SETTLED, "delivered": d,
                                   "measured": int(exp is not None), "settled": tx,
                                   "settle_params": params, **green})
    cyc = {**cyc, "state": M.SETTLED, "settled": now}
    st.put(M.T_CYCLE, u64(cycle), cyc)
    return dict(cyc)


GREEN_MOVES_MAX = 64  # certificates one green contract moves (the rest is its shortfall)
GREEN_SCAN_MAX = 1_000  # of the seller's certificates (retired ones too) one contract reads


def give_certificates(st: G.Staged, seller: bytes, buyer: bytes, wh: int) -> dict[str, Any]:
    """A green contract's certificates: `wh` Wh of the seller's active certificates, in key
    order (by generator, then its oldest Wh), the last one split, move to the buyer. What
    does not move is the contract's `green_short`: certificates the seller no longer holds
    (it could give them away after its ask) or beyond the bounds on the work of one
    settlement (GREEN_MOVES_MAX moved, GREEN_SCAN_MAX read)."""
    moved: list[str] = []
    need = wh
    for read, (key, _) in enumerate(st.walk(G.T_OWNED, seller)):
        if need == 0 or len(moved) == GREEN_MOVES_MAX or read == GREEN_SCAN_MAX:
            break
        cert = dict(st.get(G.T_CERT, key[len(seller):]))
        if cert["state"] != G.ACTIVE:
            continue
        if cert["hi"] - cert["lo"] > need:
            cert, _ = G.split(st, cert, need)
        G.move(st, cert, buyer)
        moved.append(cert["id"])
        need -= cert["hi"] - cert["lo"]
    return {"green_moved": moved, "green_short": need}


def clean_points(st: G.Staged, mp: dict[str, int], c: dict[str, Any], wh: int) -> int:
    """Points for a clean trade (001 s2.3 (2)): the buyer and the seller each earn
    clean_upt per kWh of the contract's delivered Wh whose certificates moved (the chain
    issues them: new points, bounded by the certified energy). Returns each one's upt."""
    upt = wh * mp["clean_upt"] // 1_000
    for pid in (c["buyer"], c["seller"]):
        M.credit(st, pid, upt)
    return upt


def _pay(st: G.Staged, mp: dict[str, int], c: dict[str, Any], d: int, op: bytes) -> None:
    buyer, seller, short = c["buyer"], c["seller"], c["wh"] - d
    M.unhold(st, buyer, c["mid"] * d, to=seller)
    M.unhold(st, buyer, (c["pt"] + c["fee"]) * d, to=op)
    M.unhold(st, buyer, c["pf"] * short)  # escrow = pf x wh: all of it is accounted for
    due = mp["imbalance"] * short
    if due:
        acct = M.account(st, seller)
        paid = min(acct["balance"], due)
        acct["balance"] -= paid
        acct["owed"] = min(acct["owed"] + due - paid, MK.UPT_MAX)  # a debt, not a crash
        st.put(M.T_ACCOUNT, seller, acct)
        M.credit(st, op, paid)


def review(st: G.Staged, cycle: int, n: int, who: bytes, good: int) -> None:
    """A review of a settled, delivered contract by its buyer or seller, once each, of the
    other party (001 eq. 4's positive reviews)."""
    c = contract(st, cycle, n)
    if who not in (c["buyer"], c["seller"]):
        raise ChainError("not_party", f"only the buyer or the seller of contract {cycle}/{n} "
                                      "reviews it")
    if c["state"] != M.SETTLED or not c["delivered"]:
        raise ChainError("not_delivered", f"contract {cycle}/{n} is {c['state']} with nothing "
                                          "delivered: there is no trade to review")
    key = contract_key(cycle, n) + who
    if st.get(M.T_REVIEW, key) is not None:
        raise ChainError("already_reviewed", f"{who.hex()} reviewed contract {cycle}/{n} "
                                             "already")
    st.put(M.T_REVIEW, key, good)
    if good:
        M.count(st, c["seller"] if who == c["buyer"] else c["buyer"], good=1)
