"""`cb_allocate`: the regulator's free allocation of a period's allowances to a fossil
generator's owner (historical-intensity method; docs/PROTOCOL.md section 26)."""

from __future__ import annotations

from aggregator.chain.app import carbon as K
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import carbon as CB

KIND = CB.CB_ALLOCATE
ROLE: str | None = "regulator"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    cp = G.enabled(st, "carbon", KIND)
    K.allocate(st, cp, tx.body[1], tx.body[2], tx.body[3], state.chain_time())
    return st.effect(tx.effect())
