"""`mk_order`: a limit order of a continuous market, matched as it is committed, in block
order, against the resting orders in price-time priority within both parties' matchable
ranges (001 eqs. 2-5); a second order on the same side re-quotes (docs/PROTOCOL.md
section 27)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app import market_cycle as MC
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import ChainError
from meterledger.wire import market as MK

KIND = MK.MK_ORDER
ROLE: str | None = "market"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    mp = G.enabled(st, "market", KIND)
    if mp["mode"] != MK.CONTINUOUS:
        raise ChainError("market_mode", "this market is a sealed call: commit (mk_commit) and "
                                        "reveal (mk_reveal) orders")
    cycle, side, now = tx.body[1], tx.body[2], state.chain_time()
    M.check_cycle(mp, cycle, now, KIND)
    cyc = M.open_cycle(st, cycle, KIND)
    prev = M.check_quote(st, mp, cycle, side, tx.sender.id, tx.body, now, KIND)
    M.put_order(st, mp, cycle, side, tx.sender.id, tx.body, prev, tx.digest)
    MC.match(st, mp, cycle, cyc, [tx.sender.id], tx.digest, now)
    st.put(M.T_CYCLE, G.u64(cycle), cyc)
    return st.effect(tx.effect())
