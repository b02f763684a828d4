"""`mk_review`: the buyer or the seller of a settled, delivered contract reviews the other
party once (001 eq. 4's positive reviews)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market_cycle as MC
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import market as MK

KIND = MK.MK_REVIEW
ROLE: str | None = "market"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    G.enabled(st, "market", KIND)
    MC.review(st, tx.body[1], tx.body[2], tx.sender.id, tx.body[3])
    return st.effect(tx.effect())
