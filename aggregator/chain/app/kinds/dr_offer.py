"""`dr_offer`: a utility offers a customer a demand-response contract for one meter (price
threshold, max curtailment, floor, comfort windows, compensation rate, validity); the
customer's `dr_accept` puts it in force (docs/PROTOCOL.md section 30)."""

from __future__ import annotations

from aggregator.chain.app import dr as D
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import dr as DR

KIND = DR.DR_OFFER
ROLE: str | None = "utility"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    D.offer(st, state, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
