"""`dr_settle`: a utility pays the compensation it still owes for a report (its points did
not cover it when the fog reported); until then it calls no new event (docs/PROTOCOL.md
section 30)."""

from __future__ import annotations

from aggregator.chain.app import dr as D
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import dr as DR

KIND = DR.DR_SETTLE
ROLE: str | None = "utility"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    D.settle(st, tx.sender.id, tx.body[1], tx.body[2])
    return st.effect(tx.effect())
