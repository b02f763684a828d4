"""`dr_accept`: the customer an offer names signs it by its transaction digest (the
contract's second signature); one contract per meter at a time (docs/PROTOCOL.md
section 30)."""

from __future__ import annotations

from aggregator.chain.app import dr as D
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import dr as DR

KIND = DR.DR_ACCEPT
ROLE: str | None = None  # the offer's customer: a holder or market participant


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    D.accept(st, tx.sender.id, tx.body[1], tx.digest, state.chain_time())
    return st.effect(tx.effect())
