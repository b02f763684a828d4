"""`dr_event`: a utility calls a demand-response event (price signal, start, end, the fogs
and feeders it applies to); the fogs carry it out for the enrolled meters
(docs/PROTOCOL.md section 30)."""

from __future__ import annotations

from aggregator.chain.app import dr as D
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import dr as DR

KIND = DR.DR_EVENT
ROLE: str | None = "utility"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    D.event(st, state, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
