"""`dr_pref`: the customer's signed preference on its contract: opt out of one event, of a
time window, or pause until a time (docs/PROTOCOL.md section 30). Preferences only ever
withdraw the meter; the fog and the chain apply those recorded before an event's end."""

from __future__ import annotations

from aggregator.chain.app import dr as D
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import dr as DR

KIND = DR.DR_PREF
ROLE: str | None = None  # the contract's customer


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    D.pref(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
