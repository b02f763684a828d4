"""`cb_settle`: an emitter's compliance for a period, once the period and its grace time are
over: a deficit is fined and flagged for production restriction. The chain's rule decides;
any participant may ask for it (the regulator, a notary, the emitter itself)."""

from __future__ import annotations

from aggregator.chain.app import carbon as K
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import ChainError
from meterledger.wire import carbon as CB

KIND = CB.CB_SETTLE
ROLE: str | None = None


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    cp = G.enabled(st, "carbon", KIND)
    emitter = tx.body[1]
    if state.participant(emitter) is None:
        raise ChainError("unknown_participant", f"emitter {emitter.hex()} is not registered")
    K.settle(st, cp, emitter, tx.body[2], state.chain_time())
    return st.effect(tx.effect())
