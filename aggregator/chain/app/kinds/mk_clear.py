"""`mk_clear`: anyone closes a cycle after its gate (and reveal window): a sealed call
clears, reputation falls for the unmatched, the CEP and the bid floor are published
(app.market_cycle.close)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market_cycle as MC
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import market as MK

KIND = MK.MK_CLEAR
ROLE: str | None = None  # anyone: closing a cycle is a deterministic function of the chain


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    mp = G.enabled(st, "market", KIND)
    MC.close(st, mp, tx.body[1], state.chain_time(), tx.digest)
    return st.effect(tx.effect())
