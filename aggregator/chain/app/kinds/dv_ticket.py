"""`dv_ticket`: an operator requests an operation ticket: an operation on a device within a
window, with the reason; its id is the transaction's digest (docs/PROTOCOL.md section 29;
003 s2.2.6 "operation-ticket approval")."""

from __future__ import annotations

from aggregator.chain.app import devices as DVS
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import trace as DV

KIND = DV.DV_TICKET
ROLE: str | None = "operator"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    DVS.request(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
