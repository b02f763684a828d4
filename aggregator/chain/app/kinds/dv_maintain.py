"""`dv_maintain`: an operator records a maintenance of a device (what, the result, the
ticket it was done under): the fault rule's maintenance record (docs/PROTOCOL.md section
29)."""

from __future__ import annotations

from aggregator.chain.app import devices as DVS
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import trace as DV

KIND = DV.DV_MAINTAIN
ROLE: str | None = "operator"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    DVS.maintain(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
