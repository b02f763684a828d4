"""`dv_approve`: the utility grants or rejects a requested operation ticket before its window
ends (docs/PROTOCOL.md section 29): the approval leg of declaration, approval, execution."""

from __future__ import annotations

from aggregator.chain.app import devices as DVS
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import trace as DV

KIND = DV.DV_APPROVE
ROLE: str | None = "utility"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    DVS.approve(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
