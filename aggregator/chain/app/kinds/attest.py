"""`attest`: a notary's share of a record from the peer chain; the record takes effect at the
k-th share by distinct notaries (docs/PROTOCOL.md section 26)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import notary as N
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import carbon as CB

KIND = CB.ATTEST
ROLE: str | None = "notary"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    N.attest(st, state, tx.sender.id, tx.digest, tx.body)
    return st.effect(tx.effect())
