"""`cb_ccer`: a renewable generator's owner claims certified emission reductions for a period;
energy the GC chain certified is deducted (003 s3.2.4(3)), however late its record comes."""

from __future__ import annotations

from aggregator.chain.app import carbon as K
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import carbon as CB

KIND = CB.CB_CCER
ROLE: str | None = None  # the generator's owner


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    cp = G.enabled(st, "carbon", KIND)
    K.claim_ccer(st, cp, tx.sender.id, tx.body[1], tx.body[2], tx.body[3],
                  state.chain_time())
    return st.effect(tx.effect())
