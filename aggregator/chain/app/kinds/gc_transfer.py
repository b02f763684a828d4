"""`gc_transfer`: the owner of an active certificate gives it to another participant."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import ChainError
from meterledger.wire import certificates as GC

KIND = GC.GC_TRANSFER
ROLE: str | None = None  # whoever owns the certificate


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    G.enabled(st, "certificates", KIND)
    cert = G.held(st, tx.body[1], tx.sender.id, KIND)
    to = tx.body[2]
    if state.participant(to) is None:
        raise ChainError("unknown_participant", f"recipient {to.hex()} is not registered")
    if to == tx.sender.id:
        raise ChainError("bad_fields", "gc_transfer body: the recipient is the owner")
    G.move(st, cert, to)
    return st.effect(tx.effect())
