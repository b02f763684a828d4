"""`dr_report`: after an event, the fog of a contract's meter reports what it did (its
commands' outcomes) and the curtailed energy against the baseline; the chain computes the
compensation and pays it in points from the utility to the customer (docs/PROTOCOL.md
section 30)."""

from __future__ import annotations

from aggregator.chain.app import dr as D
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import dr as DR

KIND = DR.DR_REPORT
ROLE: str | None = "fog"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    D.report(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
