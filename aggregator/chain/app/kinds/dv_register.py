"""`dv_register`: an operator registers a device with its nameplate (kind, manufacturer, model,
serial, ratings, commissioning, warranty and maintenance interval), once: the start of its
timeline (docs/PROTOCOL.md section 29; 003 s2.2.2 "nameplate information, manufacturer
... permanently retained")."""

from __future__ import annotations

from aggregator.chain.app import devices as DVS
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import trace as DV

KIND = DV.DV_REGISTER
ROLE: str | None = "operator"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    DVS.register(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
