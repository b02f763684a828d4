"""`bl_tariff`: a utility proposes a version of a tariff (time-of-use energy rates, a demand
charge, a fixed charge, the treatment of estimated intervals, the outage-compensation rule),
in force from its start once a regulator approves it (docs/PROTOCOL.md section 28)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import tariffs as TF
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import billing as BL

KIND = BL.BL_TARIFF
ROLE: str | None = "utility"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    TF.propose(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
