"""`dv_execute`: the operator who requested an approved ticket records its execution, once,
within its window (docs/PROTOCOL.md section 29); without an approval it is refused
(`ticket_not_approved`)."""

from __future__ import annotations

from aggregator.chain.app import devices as DVS
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import trace as DV

KIND = DV.DV_EXECUTE
ROLE: str | None = "operator"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    DVS.execute(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
