"""`bl_approve`: a regulator approves a proposed tariff version, named by its transaction's
digest so that exactly what was proposed is approved, before it starts (docs/PROTOCOL.md
section 28): the second of a tariff's two signatures."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import tariffs as TF
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import billing as BL

KIND = BL.BL_APPROVE
ROLE: str | None = "regulator"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    TF.approve(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
