"""The chain API's reads of the peer-to-peer market and grid access (docs/PROTOCOL.md section
27): a participant's access decision, points account with its reputation, and enrolment; the
published network; a cycle's record, contracts and book, and the latest closed cycle's bid
floor. GET, every list bounded and paged by key; bytes as hex; amounts in micro-points
(upt), prices in mpt/kWh, energy in Wh (meterledger.wire.market).

Public, like the rest of the chain: each record is derived from the chain's blocks, which
are public (/v1/blocks and /v1/tx serve every transaction decoded), so a tier above public
on an account or a decision would hide nothing. A sealed market's commitments are listed by
who committed and when, never by digest (their content is the order, hidden until the reveal;
a revealed order is in the book).
"""

from __future__ import annotations

from typing import Any

from aggregator.chain.app import auction as AU
from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app import market_cycle as MC
from aggregator.chain.ledger import Ledger
from aggregator.chain.service.api_reads import bad, bounded, number, party_id
from meterledger.infra import http as H
from meterledger.wire import market as MK
from meterledger.wire.names import to_json
from meterledger.wire.schema import TIME_MAX

CONTRACTS = (100, 1000)  # contracts per answer (default, most)
ORDERS = (100, 1000)  # a book's orders per answer
COMMITS = (100, 1000)  # a sealed cycle's commitments per answer
REVIEWS = 2  # a contract's reviews: its buyer's and its seller's
CONTRACT_MAX = 10_000  # a contract number (wire.market's range of mk_sign)
_SIDE_OF = {b"b": MK.BUY, b"s": MK.SELL}
_NO_ACCOUNT = {"balance": 0, "held": 0, "owed": 0}
_NO_REP = {"bid": 0, "done": 0, "good": 0, "penalty": 0}


def _pid(req: H.Request) -> bytes:
    return party_id(req.params["pid"], "pid", "a participant id, ")


def reputation_of(counts: dict[str, int]) -> dict[str, int]:
    """The counts of 001 eq. 4 and the reputation they give, in ppm (`ppm`)."""
    c = {**_NO_REP, **counts}
    return {**c, "ppm": AU.reputation(c["good"], c["done"], c["bid"], c["penalty"])}


class MarketReads:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def routes(self) -> list[H.Route]:
        R, Q = H.Route, H.Param
        after = "page on: only what comes after this one in key order (an answer's `next`)"
        P = H.PUBLIC
        return [
            R("/v1/market/access/{pid}", self.access, tier=P),
            R("/v1/market/accounts/{pid}", self.account, tier=P),
            R("/v1/market/enrolments/{pid}", self.enrolment, tier=P),
            R("/v1/market/deliveries/{pid}/{cycle}", self.delivery, tier=P),
            R("/v1/market/network", self.network, tier=P),
            R("/v1/market/floor", self.floor, tier=P),
            R("/v1/market/cycles/{cycle}", self.cycle, tier=P),
            R("/v1/market/cycles/{cycle}/contracts", self.contracts, tier=P, query=(
                Q("after", False, after + " (a contract number)"),
                Q("limit", False, f"contracts in the answer, 1 to {CONTRACTS[1]} (default "
                                  f"{CONTRACTS[0]})"))),
            R("/v1/market/cycles/{cycle}/contracts/{n}", self.contract, tier=P),
            R("/v1/market/cycles/{cycle}/book", self.book, tier=P, query=(
                Q("side", False, "only this side's orders: buy or sell"),
                Q("after", False, after + " (SIDE:PARTICIPANT, e.g. buy:00112233aabbccdd)"),
                Q("limit", False, f"orders in the answer, 1 to {ORDERS[1]} (default "
                                  f"{ORDERS[0]})"))),
            R("/v1/market/cycles/{cycle}/commitments", self.commitments, tier=P, query=(
                Q("after", False, after + " (a participant id)"),
                Q("limit", False, f"commitments in the answer, 1 to {COMMITS[1]} (default "
                                  f"{COMMITS[0]})"))),
        ]

    # -- a participant -----------------------------------------------------------------------
    def access(self, req: H.Request) -> dict[str, Any]:
        """A participant's latest grid-access decision (`decision`: granted, the reasons of a
        refusal one per failed attribute, `until` when a grant expires, the attributes it
        stated; null when it never applied) and whether it is enrolled."""
        pid = _pid(req)
        dec = self.ledger.app_record(M.T_ACCESS, pid)
        return {"participant": pid.hex(), "decision": None if dec is None else to_json(dec),
                "enrolled": self.ledger.app_record(M.T_ENROLLED, pid) is not None}

    def account(self, req: H.Request) -> dict[str, Any]:
        """A participant's points (upt): free `balance`, `held` in escrow, `owed` to the grid
        operator (zeros without an account); its reputation counts and the reputation they
        give (`reputation.ppm`, 001 eq. 4; a participant without trades has 1/2)."""
        pid = _pid(req)
        acct = self.ledger.app_record(M.T_ACCOUNT, pid) or _NO_ACCOUNT
        rep = self.ledger.app_record(M.T_REP, pid) or _NO_REP
        return {"participant": pid.hex(), **{k: acct[k] for k in _NO_ACCOUNT},
                "reputation": reputation_of(dict(rep))}

    def enrolment(self, req: H.Request) -> dict[str, Any]:
        """A participant's metering point in the market (fog, meter, connection line, when),
        null while the grid operator has not enrolled it."""
        pid = _pid(req)
        e = self.ledger.app_record(M.T_ENROLLED, pid)
        return {"participant": pid.hex(), "enrolment": None if e is None else to_json(e)}

    def delivery(self, req: H.Request) -> dict[str, Any]:
        """What a participant's enrolled meter exported and imported over a cycle (Wh), from
        the fog's statements the anchors carried (their digests, the seconds they cover,
        whether one was estimated); null before any. Its owner consented: the statements
        are on the chain anyway."""
        pid = _pid(req)
        cycle, _ = self._cycle(req)
        rec = self.ledger.app_record(M.T_DELIVERY, pid + G.u64(cycle))
        return {"participant": pid.hex(), "cycle": cycle,
                "delivery": None if rec is None else to_json(rec)}

    # -- the market ----------------------------------------------------------------------------
    def network(self, req: H.Request) -> dict[str, Any]:
        """The published network (version, lines [id, parent, capacity W, redispatch
        mpt/kWh]) and the grid operator; nulls before either."""
        net = self.ledger.app_record(M.T_NETWORK, b"")
        op = self.ledger.app_record(M.T_OPERATOR, b"")
        return {"network": None if net is None else to_json(net),
                "operator": None if op is None else bytes(op).hex()}

    def floor(self, req: H.Request) -> dict[str, Any]:
        """The latest closed cycle with contracts and its lowest clearing price, mpt/kWh: a
        bid must be above it (nulls before any)."""
        last = self.ledger.app_record(M.T_LAST, b"")
        return {"cycle": None if last is None else last["cycle"],
                "floor": None if last is None else last["floor"]}

    def _params(self) -> dict[str, int]:
        rec = self.ledger.app_record(G.T_PARAMS, b"market")
        if rec is None:
            raise H.HTTPError(404, "not_found", "this chain has not enabled the market "
                                                "(no market params)")
        return G.effective("market", rec["values"])

    def _cycle(self, req: H.Request) -> tuple[int, dict[str, int]]:
        mp = self._params()
        cycle = number(req.params["cycle"], "cycle", 0, TIME_MAX)
        if cycle % mp["cycle_s"]:
            raise bad(f"cycle {cycle} is not a cycle start: a multiple of cycle_s "
                      f"{mp['cycle_s']}")
        return cycle, mp

    def cycle(self, req: H.Request) -> dict[str, Any]:
        """A cycle's record: `state` (open, closed, settled), its contracts, the CEP (`cep`)
        and lowest clearing price (`low`) once closed, the participants left unmatched; and
        its timeline from the market params: the gate, the end of the reveal window (sealed)
        and of the delivery interval."""
        cycle, mp = self._cycle(req)
        rec = self.ledger.app_record(M.T_CYCLE, G.u64(cycle))
        gate = M.gate(mp, cycle)
        sealed = mp["mode"] == MK.SEALED
        return {"cycle": cycle, "state": M.OPEN, "contracts": 0,
                **({} if rec is None else to_json(rec)),
                "mode": "sealed" if sealed else "continuous", "gate": gate,
                "reveal_until": gate + mp["reveal_s"] if sealed else None,
                "delivery_end": cycle + mp["cycle_s"]}

    def contracts(self, req: H.Request) -> dict[str, Any]:
        """A cycle's contracts in number order (each with its `n`): parties, Wh, prices,
        escrow, signatures, state; and the settled ones' delivered Wh."""
        cycle, _ = self._cycle(req)
        limit = bounded(req.query, "limit", CONTRACTS)
        start = req.query.get("after")
        prefix = G.u64(cycle)
        after = (None if start is None
                 else MC.contract_key(cycle, number(start, "after", 0, CONTRACT_MAX)))
        rows = self.ledger.app_records(M.T_CONTRACT, prefix, after, limit)
        out = [{"n": int.from_bytes(k[8:], "big"), **to_json(c)} for k, c in rows]
        return {"cycle": cycle, "contracts": out,
                "next": str(out[-1]["n"]) if len(out) == limit else None}

    def contract(self, req: H.Request) -> dict[str, Any]:
        """One contract of a cycle, with the reviews of its parties (reviewer -> good)."""
        cycle, _ = self._cycle(req)
        n = number(req.params["n"], "n", 0, CONTRACT_MAX)
        key = MC.contract_key(cycle, n)
        c = self.ledger.app_record(M.T_CONTRACT, key)
        if c is None:
            raise H.HTTPError(404, "not_found", f"cycle {cycle} has no contract {n}")
        reviews = self.ledger.app_records(M.T_REVIEW, key, None, REVIEWS)
        return {"cycle": cycle, "n": n, **to_json(c),
                "reviews": {k[len(key):].hex(): v for k, v in reviews}}

    def book(self, req: H.Request) -> dict[str, Any]:
        """A cycle's orders in key order (buys, then sells; by participant): what is `left`
        of each, its price and fee_max, its time priority `seq`, how often it was quoted, what
        a bid holds; a cancelled or filled one has nothing left. In a sealed market orders
        appear once revealed."""
        cycle, mp = self._cycle(req)
        q = req.query
        limit = bounded(q, "limit", ORDERS)
        side = q.get("side")
        if side is not None and side not in MK.SIDES:
            raise bad(f"side must be buy or sell, not {H.show(side)}")
        prefix = G.u64(cycle) + (M.side_byte(side) if side else b"")
        start = q.get("after")
        after = None if start is None else G.u64(cycle) + _book_key(start)
        rows = self.ledger.app_records(M.T_ORDER, prefix, after, limit)
        orders = []
        for k, rec in rows:
            orders.append({"side": _SIDE_OF[k[8:9]], "participant": k[9:].hex(),
                           **to_json(rec)})
        last = orders[-1] if len(orders) == limit else None
        return {"cycle": cycle, "mode": "sealed" if mp["mode"] == MK.SEALED else "continuous",
                "orders": orders,
                "next": None if last is None else f"{last['side']}:{last['participant']}"}

    def commitments(self, req: H.Request) -> dict[str, Any]:
        """A sealed cycle's commitments in participant order: who committed, its time
        priority `seq` and whether it was revealed; never the digest."""
        cycle, _ = self._cycle(req)
        limit = bounded(req.query, "limit", COMMITS)
        start = req.query.get("after")
        after = None if start is None else G.u64(cycle) + party_id(
            start, "after", "a participant id, ")
        rows = self.ledger.app_records(M.T_COMMIT, G.u64(cycle), after, limit)
        out = [{"participant": k[8:].hex(), "seq": c["seq"], "revealed": bool(c["revealed"])}
               for k, c in rows]
        return {"cycle": cycle, "commitments": out,
                "next": out[-1]["participant"] if len(out) == limit else None}


def _book_key(text: str) -> bytes:
    """The key (after the cycle) of a book's page token SIDE:PARTICIPANT."""
    side, _, pid = text.partition(":")
    if side not in MK.SIDES:
        raise bad(f"after must be SIDE:PARTICIPANT (buy or sell, then 16 hex characters), not "
                  f"{H.show(text)}")
    return M.side_byte(side) + party_id(pid, "after's participant", "a participant id, ")
