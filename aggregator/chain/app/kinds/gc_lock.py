"""`gc_lock`: the owner locks a certificate for conversion into carbon relief for itself on
the carbon chain (docs/PROTOCOL.md section 26); the notaries carry it across, and the
carbon chain's outcome burns or releases it."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import notary as N
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import carbon as CB

KIND = CB.GC_LOCK
ROLE: str | None = None  # whoever owns the certificate


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    G.enabled(st, "certificates", KIND)
    cert = G.held(st, tx.body[1], tx.sender.id, KIND)
    N.lock(st, cert, tx.body[2], tx.digest, state.chain_time())
    return st.effect(tx.effect())
