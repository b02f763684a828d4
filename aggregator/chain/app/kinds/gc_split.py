"""`gc_split`: the owner divides an active certificate into two that tile its Wh range (the
first of the given Wh), down to single Wh; the original becomes `split`."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import certificates as GC

KIND = GC.GC_SPLIT
ROLE: str | None = None  # whoever owns the certificate


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    G.enabled(st, "certificates", KIND)
    cert = G.held(st, tx.body[1], tx.sender.id, KIND)
    G.split(st, cert, tx.body[2])
    return st.effect(tx.effect())
