"""`mk_settle`: anyone settles a closed cycle after its delivery interval from the measured
delivery statements (app.market_cycle.settle)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market_cycle as MC
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import market as MK

KIND = MK.MK_SETTLE
ROLE: str | None = None  # anyone: settlement is a deterministic function of the chain


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    mp = G.enabled(st, "market", KIND)
    MC.settle(st, mp, tx.body[1], state.chain_time(), tx.digest)
    return st.effect(tx.effect())
