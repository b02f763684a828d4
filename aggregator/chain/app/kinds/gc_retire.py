"""`gc_retire`: the owner retires an active certificate for a beneficiary and a purpose
(renewable-quota compliance or voluntary green consumption) in a compliance year; a retired
certificate never moves again (docs/PROTOCOL.md section 25)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import certificates as GC

KIND = GC.GC_RETIRE
ROLE: str | None = None  # whoever owns the certificate


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    G.enabled(st, "certificates", KIND)
    cert = G.held(st, tx.body[1], tx.sender.id, KIND)
    G.retire(st, cert, {"beneficiary": tx.body[2], "purpose": tx.body[3],
                        "year": tx.body[4], "by": tx.sender.id, "tx": tx.digest})
    return st.effect(tx.effect())
