"""`dv_determine`: the utility or a regulator records the cause of a fault on a device; the
chain computes the cause from the device's record (`meterledger.wire.trace.determine`) and
refuses any other (docs/PROTOCOL.md section 29; 003 s2.2.6 "accident responsibility
determination")."""

from __future__ import annotations

from aggregator.chain.app import devices as DVS
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import trace as DV

KIND = DV.DV_DETERMINE
ROLE: str | None = None
ROLES = ("utility", "regulator")  # ROLE None: the rule checks these


def check(tx: Tx, state: State) -> Effect:
    DVS.allowed(tx.sender, KIND, ROLES)
    st = G.Staged(state)
    DVS.determine(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
