"""`cb_transfer`: a holder of a period's allowances gives some to another participant, only
from what it holds (004 s3.3.1: the trade happens if enough rights are available)."""

from __future__ import annotations

from aggregator.chain.app import carbon as K
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import ChainError
from meterledger.wire import carbon as CB

KIND = CB.CB_TRANSFER
ROLE: str | None = None  # whoever holds allowances


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    cp = G.enabled(st, "carbon", KIND)
    to, period, grams = tx.body[1], tx.body[2], tx.body[3]
    if state.participant(to) is None:
        raise ChainError("unknown_participant", f"recipient {to.hex()} is not registered")
    if to == tx.sender.id:
        raise ChainError("bad_fields", "cb_transfer body: the recipient is the sender")
    K.transfer(st, cp, tx.sender.id, to, period, grams, state.chain_time())
    return st.effect(tx.effect())
