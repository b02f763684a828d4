"""`dv_status`: an operator records a device's installation (at a site, on a feeder, under a
fog), connection, disconnection or removal, in that order of states (docs/PROTOCOL.md
section 29)."""

from __future__ import annotations

from aggregator.chain.app import devices as DVS
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import trace as DV

KIND = DV.DV_STATUS
ROLE: str | None = "operator"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    DVS.status(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
