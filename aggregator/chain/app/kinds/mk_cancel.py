"""`mk_cancel`: withdraw what is left of one's order before the gate; a bid's hold returns."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import ChainError
from meterledger.wire import market as MK

KIND = MK.MK_CANCEL
ROLE: str | None = "market"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    mp = G.enabled(st, "market", KIND)
    cycle, side = tx.body[1], tx.body[2]
    M.check_cycle(mp, cycle, state.chain_time(), KIND)
    M.open_cycle(st, cycle, KIND)
    rec = M.quote(st, cycle, side, tx.sender.id)
    if rec is None or rec["left"] == 0:
        raise ChainError("no_order", f"{tx.sender.id.hex()} has nothing left on the {side} "
                                     f"side of cycle {cycle}")
    if rec["held"]:
        M.unhold(st, tx.sender.id, rec["held"])
    M.put_left(st, M.order_key(cycle, side, tx.sender.id),
               {**rec, "left": 0, "held": 0, "cancelled": tx.digest})
    return st.effect(tx.effect())
