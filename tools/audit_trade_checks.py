"""The checks of a trade bundle (tools/audit_trade.py), in the order they run: each is over
every transaction, anchor or statement before the next, and the first that fails names
itself. The delivery's statements are checked as a certificate's segments are
(tools/audit_certificate.py), their readings only for measured statements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meterledger import wire as P
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import market as MK
from tools import audit
from tools import audit_certificate as AC
from tools.audit import _check, _signed

# (check name, what it establishes): `format`, then what `blocks` checks of a bundle's
# sealed transactions and anchors (a trade's, a bill's), in the order they run
SEALED_CHECKS = (
    ("format", "the bundle has every field and no other, of the right kind and size (a "
               "failure is an input error: exit 2)"),
    ("block_signature", "every block header (and the one before each transaction's) is a "
                        "type-13 message signed by a trusted key, the one before linked by "
                        "its digest"),
    ("block_height", "every block header has its section's height"),
    ("tx_signature", "every transaction is a type-12 message signed by the key `keys` gives "
                     "for its sender, with the digest it is named by"),
    ("anchor_signature", "every anchor is a type-12 anchor transaction signed by fog_pub, "
                         "with the digest it is named by"),
    ("chain_id", "every block is of one chain, and every transaction names it"),
    ("tx_inclusion", "every transaction is transaction tx_index of its sealed block"),
)
# a trade bundle's checks, in the order they run
CHECKS = (
    *SEALED_CHECKS,
    ("params", "the contract's market parameters (in force at the bid and at settlement) "
               "are `params` transactions of the market, both from the grid operator, each "
               "before the transaction that used them"),
    ("enrolment", "the grid operator's mk_enroll bound the seller to fog_pub's fog and the "
                  "meter `devices` gives, before the seller's order"),
    ("orders", "the bid is the buyer's buy order and the ask the seller's sell order for the "
               "cycle, at the contract's prices, each for at least its Wh; ask <= bid, the "
               "congestion fee within the bid's fee_max, and the contract green as its bid "
               "(a green bid's ask green too)"),
    ("auction", "continuous: both orders before the gate, the match an order of either party "
                "for the cycle after both, before the gate; "
                "sealed: each order revealed in the window from a commitment made before "
                "the gate that it hashes to, the match the cycle's mk_clear after the window"),
    ("price", "midpoint = (bid + ask) / 2 rounded half up, P_T = c1 + c2 + c3 of the bid's "
              "parameters, P_F = P_T + midpoint + fee, escrow = P_F x Wh"),
    ("signatures", "three mk_sign transactions of the contract's terms (parties, Wh, bid, ask, "
                   "P_T, fee, orders, match, green), by the buyer, the seller and the grid "
                   "operator, after the match and before the cycle starts"),
    ("statement_anchored", "each statement is byte-equal to an item its anchor carries"),
    ("statement_signature", "each statement is a type-14 message signed by fog_pub, of the "
                            "seller's meter"),
    ("cycle", "each statement lies within the cycle, as long as the first, no interval twice"),
    ("checkpoint_signature", "each anchor's newest checkpoint is a type-6 message signed by "
                             "fog_pub"),
    ("device_id", "each reading is from its statement's meter, whose key the bundle gives"),
    ("reading_signature", "each reading of a measured statement is a type-1 message signed "
                          "by the meter's key"),
    ("reading_inclusion", "each is the entry its statement names in the tree of its anchor's "
                          "newest checkpoint"),
    ("enrollment", "a type-8 decision signed by the fog enrolled the meter and key as active"),
    ("enrollment_order", "that decision precedes the statement's first entry in the log"),
    ("enrollment_inclusion", "the decision is in the same tree"),
    ("consecutive", "a measured statement's readings are the meter's consecutive readings "
                    "over its interval"),
    ("energy", "their register differences are the statement's import and export"),
    ("settlement", "the cycle's mk_settle came after the delivery interval (and after the "
                   "deadline if the statements anchored before it do not cover the cycle), "
                   "and the delivered Wh are the seller's measured export less what its "
                   "earlier contracts of the cycle took, at most the contract's Wh; a green "
                   "contract's points for clean energy are clean_upt per certified kWh"),
)


@dataclass(frozen=True)
class TradeVerified:
    contract: str  # "cycle/n"
    buyer: str
    seller: str
    operator: str
    wh: int
    price: dict[str, int]  # bid, ask, mid, pt, fee, pf (mpt/kWh)
    delivered: int
    measured: bool
    meter: str
    fog: str
    statements: int
    estimated: int  # statements the fog estimated (proven by its signature only)
    readings: int
    payments: dict[str, int]  # upt: seller, grid, buyer_refund, imbalance
    blocks: tuple[int, int]
    sealers: list[str]


@dataclass(kw_only=True)
class Sealed:
    """Chain transactions, each with its sealed block and the block before, and the fog's
    anchors of a bundle (a trade's, a bill's), and what the block checks found of them."""

    keys: dict[bytes, P.PublicKey]
    txs: dict[bytes, tuple[str, dict[str, Any]]]  # digest -> (its path, its fields)
    delivery: AC.Bundle  # the fog, the meter, the anchors (and a trade's statements)
    tf: dict[bytes, P.Fields] = field(default_factory=dict)  # digest -> the tx's fields
    # digest -> (block height, index in it, the rules' time: the block before's)
    place: dict[bytes, tuple[int, int, int]] = field(default_factory=dict)
    sealers: set[str] = field(default_factory=set)
    heights: set[int] = field(default_factory=set)


@dataclass(kw_only=True)
class Trade(Sealed):
    """A bundle as read (tools.audit_trade.read_bundle), and what the checks found of it."""

    c: dict[str, Any]
    commits: list[bytes]
    enrolment: bytes
    earlier: list[dict[str, int]]


def _tx(t: Sealed, d: bytes, what: str) -> P.Fields:
    _check(what, d in t.tf, f"the bundle has no transaction {d.hex()}")
    return t.tf[d]


def _kind(check: str, tf: P.Fields, kind: str, d: bytes) -> dict[int, Any]:
    _check(check, tf[3] == kind, f"transaction {d.hex()} is a {tf[3]}, not a {kind}")
    body: dict[int, Any] = tf[4]
    return body


# --- the blocks -------------------------------------------------------------------------------
def blocks(t: Sealed, trusted: list[P.PublicKey]) -> dict[bytes, P.Fields]:
    """block_signature .. tx_inclusion over every transaction and anchor."""
    headers: dict[bytes, P.Fields] = {}
    for d, (at, v) in sorted(t.txs.items()):
        with AC._within(f"transaction {d.hex()}"):
            hf, sealer = audit.verify_header(v, at, trusted)
            pm = audit._parsed("block_signature", v[at + "prev_header"])
            key = next((k for k in trusted if k.id == pm.kid), None)
            _check("block_signature", key is not None, "the block before was sealed by "
                                                       f"{pm.kid.hex()}, not a trusted key")
            assert key is not None
            pf = _signed("block_signature", v[at + "prev_header"], key, C.BLOCK)
            _check("block_signature", P.digest(v[at + "prev_header"]) == hf[3]
                   and pf[2] + 1 == hf[2], "prev_header is not the block before its block")
            headers[d] = hf
            t.place[d] = (hf[2], v[at + "tx_index"], pf[6])
            t.sealers.add(sealer)
    for d, (at, v) in sorted(t.txs.items()):
        with AC._within(f"transaction {d.hex()}"):
            m = audit._parsed("tx_signature", v[at + "transaction"])
            key = t.keys.get(m.kid)
            _check("tx_signature", key is not None, f"the bundle gives no key of its sender "
                                                    f"{m.kid.hex()}")
            assert key is not None
            t.tf[d] = _signed("tx_signature", v[at + "transaction"], key, C.TX)
            _check("tx_signature", t.tf[d][1] == key.id and P.digest(v[at + "transaction"]) == d,
                   "its sender or digest is not the one it is named by")
    anchors = AC._anchors(t.delivery, trusted)
    t.sealers.update(s for _, s in anchors)
    t.heights.update(hf[2] for hf, _ in anchors)
    chains = {hf[7] for hf in headers.values()} | {hf[7] for hf, _ in anchors}
    _check("chain_id", len(chains) == 1, f"the blocks are of {len(chains)} chains: "
                                         f"{', '.join(sorted(x.hex() for x in chains))}")
    for d, (at, v) in sorted(t.txs.items()):
        with AC._within(f"transaction {d.hex()}"):
            audit.verify_in_block(v, at, v[at + "transaction"], t.tf[d][6], headers[d])
    t.heights.update(hf[2] for hf in headers.values())
    return headers


def _anchor_place(t: Trade) -> dict[bytes, tuple[int, int]]:
    """Each anchor's block height and index (its section, checked by _blocks)."""
    return {d: (v[at + "block_height"], v[at + "tx_index"])
            for d, (at, v) in t.delivery.anchors.items()}


# --- the market's transactions ------------------------------------------------------------------
def _params(t: Trade) -> tuple[bytes, dict[str, int], dict[str, int]]:
    """The grid operator and the parameters in force at the bid and at settlement (set
    before each: that they were the latest is the replay's to prove)."""
    out = []
    for d, used in ((t.c["params"], t.c["orders"][0]), (t.c["settle_params"], t.c["settled"])):
        tf = _tx(t, d, "params")
        _tx(t, used, "params")
        _check("params", t.place[d][:2] < t.place[used][:2],
               f"parameters {d.hex()} came after the transaction that used them")
        body = _kind("params", tf, GC.PARAMS, d)
        _check("params", body[1] == "market", f"transaction {d.hex()} sets the {body[1]} "
                                              "parameters, not the market's")
        defaults = {k: r[2] for k, r in MK.PARAMETERS["market"].items()}
        out.append((tf[1], {**defaults, **body[3]}))
    (op, bid_mp), (op2, settle_mp) = out
    _check("params", op == op2, f"the parameters are from {op.hex()} and {op2.hex()}: a grid "
                                "operator changed between the bid and the settlement")
    return op, bid_mp, settle_mp


def _enrolment(t: Trade, op: bytes) -> None:
    tf = _tx(t, t.enrolment, "enrolment")
    body = _kind("enrolment", tf, MK.MK_ENROLL, t.enrolment)
    _check("enrolment", tf[1] == op, f"the enrolment is signed by {tf[1].hex()}, not the grid "
                                     f"operator {op.hex()}")
    _check("enrolment", (body[1], body[2], body[3]) == (t.c["seller"], t.delivery.gen_fog,
                                                        t.delivery.gen_meter),
           f"it binds {body[1].hex()} to fog {body[2].hex()} meter {body[3].hex()}, not the "
           f"seller to fog {t.delivery.gen_fog.hex()} meter {t.delivery.gen_meter.hex()}")
    ask = t.c["orders"][-1]
    _tx(t, ask, "enrolment")
    _check("enrolment", t.place[t.enrolment][:2] < t.place[ask][:2],
           "the seller was enrolled after its order")


def _orders(t: Trade) -> tuple[dict[int, Any], dict[int, Any]]:
    c = t.c
    _check("orders", len(c["orders"]) == 2, f"the contract names {len(c['orders'])} orders")
    bodies = []
    for d, who, side, price in ((c["orders"][0], c["buyer"], MK.BUY, c["bid"]),
                                (c["orders"][1], c["seller"], MK.SELL, c["ask"])):
        tf = _tx(t, d, "orders")
        _check("orders", tf[3] in (MK.MK_ORDER, MK.MK_REVEAL), f"transaction {d.hex()} is a "
                                                               f"{tf[3]}, not an order")
        body = tf[4]
        _check("orders", (tf[1], body[1], body[2], body[4]) == (who, c["cycle"], side, price),
               f"order {d.hex()} is {tf[1].hex()}'s {body[2]} of cycle {body[1]} at {body[4]}, "
               f"not the {side} of {who.hex()} for cycle {c['cycle']} at {price} mpt/kWh")
        _check("orders", body[3] >= c["wh"], f"order {d.hex()} is for {body[3]} Wh, the "
                                             f"contract for {c['wh']}")
        bodies.append(body)
    _check("orders", c["ask"] <= c["bid"], f"the ask {c['ask']} is above the bid {c['bid']}")
    green = bodies[0].get(7, 0)
    _check("orders", c["green"] == green and bodies[1].get(7, 0) >= green,
           f"the contract is {'green' if c['green'] else 'plain'}, its bid "
           f"{'green' if green else 'plain'} and its ask "
           f"{'green' if bodies[1].get(7, 0) else 'plain'}: a green bid takes green asks")
    _check("orders", c["fee"] <= bodies[0][5], f"the congestion fee {c['fee']} is above the "
                                               f"bid's fee_max {bodies[0][5]}")
    return bodies[0], bodies[1]


def _auction(t: Trade, mp: dict[str, int]) -> None:
    c, gate = t.c, t.c["cycle"] - mp["gate_s"]
    orders, match = c["orders"], c["tx"]
    if mp["mode"] == MK.CONTINUOUS:
        for d in orders:
            _check("auction", t.place[d][2] < gate, f"order {d.hex()} came at chain time "
                                                    f"{t.place[d][2]}, after the gate {gate}")
        # the match is the order that landed last: one of the two, or another order of
        # either party (a participant's new order makes its resting ones takers again)
        mf = _tx(t, match, "auction")
        _check("auction", mf[3] == MK.MK_ORDER and mf[4][1] == c["cycle"]
               and mf[1] in (c["buyer"], c["seller"]) and t.place[match][2] < gate
               and all(t.place[match][:2] >= t.place[d][:2] for d in orders),
               f"the match {match.hex()} is no order of either party for the cycle, after "
               "both orders and before the gate")
        return
    _check("auction", len(t.commits) == 2, "a sealed call's contract names its two "
                                           "commitments")
    for d, com in zip(orders, t.commits, strict=True):
        rf, cf = t.tf[d], _tx(t, com, "auction")
        body = _kind("auction", cf, MK.MK_COMMIT, com)
        r = rf[4]
        _check("auction", rf[3] == MK.MK_REVEAL and cf[1] == rf[1] and body[1] == c["cycle"]
               and MK.commit_digest(rf[1], r[1], r[2], r[3], r[4], r[5], r[6],
                                    r.get(7, 0)) == body[2],
               f"order {d.hex()} does not reveal commitment {com.hex()}")
        _check("auction", t.place[com][2] < gate <= t.place[d][2] < gate + mp["reveal_s"],
               f"committed at chain time {t.place[com][2]} and revealed at {t.place[d][2]}: "
               f"commitments close at the gate {gate}, reveals {mp['reveal_s']} s later")
    body = _kind("auction", _tx(t, match, "auction"), MK.MK_CLEAR, match)
    _check("auction", body[1] == c["cycle"] and t.place[match][2] >= gate + mp["reveal_s"]
           and all(t.place[match][:2] > t.place[d][:2] for d in orders),
           f"the clearing {match.hex()} is not the cycle's, after its reveal window")


def _price(t: Trade, mp: dict[str, int]) -> None:
    c = t.c
    mid, pt = (c["bid"] + c["ask"] + 1) // 2, mp["c1"] + mp["c2"] + mp["c3"]
    _check("price", c["mid"] == mid, f"the midpoint of {c['bid']} and {c['ask']} is {mid}, "
                                     f"the contract says {c['mid']}")
    _check("price", c["pt"] == pt, f"P_T of the bid's parameters is {pt}, the contract says "
                                   f"{c['pt']}")
    _check("price", c["pf"] == pt + mid + c["fee"],
           f"P_F = {pt} + {mid} + {c['fee']} = {pt + mid + c['fee']}, the contract says "
           f"{c['pf']}")
    _check("price", c["escrow"] == c["pf"] * c["wh"], f"escrow {c['escrow']} is not P_F x Wh")


def _signatures(t: Trade, op: bytes) -> None:
    c = t.c
    signers = []
    for d in c["signs"]:
        tf = _tx(t, d, "signatures")
        body = _kind("signatures", tf, MK.MK_SIGN, d)
        _check("signatures", (body[1], body[2]) == (c["cycle"], c["n"]),
               f"{d.hex()} signs contract {body[1]}/{body[2]}")
        _check("signatures", body[3] == MK.contract_terms(c["cycle"], c["n"], c),
               f"{d.hex()} signs other terms than the contract's (parties, Wh, prices, "
               "orders, match)")
        _check("signatures", t.place[c["tx"]][:2] < t.place[d][:2] and
               t.place[d][2] < c["cycle"], f"{d.hex()} came at chain time {t.place[d][2]}, "
                                           "not between the match and the cycle's start")
        signers.append(tf[1])
    _check("signatures", sorted(signers) == sorted([c["buyer"], c["seller"], op]),
           f"signed by {', '.join(s.hex() for s in signers) or 'no one'}, not by the buyer, "
           "the seller and the grid operator")


# --- the delivery -----------------------------------------------------------------------------
def _cycle(t: Trade, mp: dict[str, int]) -> None:
    seen: set[int] = set()
    segs, start = t.delivery.segments, t.c["cycle"]
    for s in segs:
        with AC._within(s.at):
            f = s.f
            _check("cycle", start <= f[2] - f[3] and f[2] <= start + mp["cycle_s"],
                   f"interval ({f[2] - f[3]}, {f[2]}] is not within the cycle")
            _check("cycle", f[3] == segs[0].f[3], f"it is {f[3]} s long, the first {segs[0].f[3]}")
            _check("cycle", f[2] not in seen, f"interval {f[2]} is stated twice")
            seen.add(f[2])


def _measured_only(check: Callable[[AC.Bundle, AC.Segment], None]) -> Callable[
        [AC.Bundle, AC.Segment], None]:
    def run(b: AC.Bundle, s: AC.Segment) -> None:
        if s.f[6] == 0:
            check(b, s)
    return run


def _settlement(t: Trade, mp: dict[str, int], places: dict[bytes, tuple[int, int]]) -> int:
    c, end = t.c, t.c["cycle"] + mp["cycle_s"]
    body = _kind("settlement", _tx(t, c["settled"], "settlement"), MK.MK_SETTLE, c["settled"])
    at = t.place[c["settled"]]
    _check("settlement", body[1] == c["cycle"] and at[2] >= end,
           f"mk_settle of cycle {body[1]} at chain time {at[2]}: cycle {c['cycle']} delivers "
           f"until {end}")
    before = [s for s in t.delivery.segments if places[s.anchor] < at[:2]]
    dur, exp = sum(s.f[3] for s in before), sum(s.f[5] for s in before)
    measured = dur >= mp["cycle_s"]
    _check("settlement", c["state"] == "settled" and c["measured"] == int(measured),
           f"the statements anchored before the settlement cover {dur} of {mp['cycle_s']} s, "
           f"the contract says measured={c['measured']}")
    if not measured:
        _check("settlement", at[2] >= end + mp["settle_s"],
               f"settled unmeasured at chain time {at[2]}, before the deadline "
               f"{end + mp['settle_s']}")
        exp = 0
    taken = sum(e["delivered"] for e in t.earlier if e["n"] < c["n"])
    d = max(0, min(c["wh"], exp - taken))
    _check("settlement", c["delivered"] == d,
           f"the seller exported {exp} Wh, its earlier contracts took {taken}: {d} Wh "
           f"delivered, the contract says {c['delivered']}")
    clean = (d - c["green_short"]) * mp["clean_upt"] // 1_000 if c["green"] else 0
    _check("settlement", c["green_short"] <= d and c["clean_upt"] == clean,
           f"{d - c['green_short']} Wh of certified energy delivered earn each party {clean} "
           f"upt (clean_upt {mp['clean_upt']} a kWh), the contract says {c['clean_upt']}")
    return len(before)


def verify(t: Trade, trusted: list[P.PublicKey]) -> TradeVerified:
    """CHECKS after `format`, in order."""
    blocks(t, trusted)
    places = _anchor_place(t)
    op, bid_mp, settle_mp = _params(t)
    _enrolment(t, op)
    _orders(t)
    _auction(t, bid_mp)
    _price(t, bid_mp)
    _signatures(t, op)
    b = t.delivery
    AC._each(b, AC._anchored, AC._statement_signature)
    _cycle(t, bid_mp)
    AC._checkpoints(b)
    AC._each(b, AC._device_id, _measured_only(AC._reading_signature),
             _measured_only(AC._reading_inclusion), AC._enrollment, AC._enrollment_order,
             AC._enrollment_inclusion, _measured_only(AC._consecutive),
             _measured_only(AC._energy))
    counted = _settlement(t, settle_mp, places)
    c, short = t.c, t.c["wh"] - t.c["delivered"]
    return TradeVerified(
        f"{c['cycle']}/{c['n']}", c["buyer"].hex(), c["seller"].hex(), op.hex(), c["wh"],
        {k: c[k] for k in ("bid", "ask", "mid", "pt", "fee", "pf")}, c["delivered"],
        bool(c["measured"]), b.gen_meter.hex(), b.fog_pub.id_hex, counted,
        sum(s.f[6] for s in b.segments), sum(len(s.readings) for s in b.segments),
        {"seller": c["mid"] * c["delivered"], "grid": (c["pt"] + c["fee"]) * c["delivered"],
         "buyer_refund": c["pf"] * short, "imbalance": settle_mp["imbalance"] * short,
         "clean_each": c["clean_upt"]},
        (min(t.heights), max(t.heights)), sorted(t.sealers))
