"""`mk_sign`: the buyer, the seller or the grid operator signs a matched contract's terms;
the third signature makes it effective (001 s3.3: a three-party contract)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market_cycle as MC
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import market as MK

KIND = MK.MK_SIGN
ROLE: str | None = None  # the contract's parties and the grid operator


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    G.enabled(st, "market", KIND)
    MC.sign(st, tx.body[1], tx.body[2], tx.sender.id, state.chain_time(), tx.digest,
            tx.body[3])
    return st.effect(tx.effect())
