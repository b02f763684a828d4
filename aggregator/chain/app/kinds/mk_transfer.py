"""`mk_transfer`: points from the sender's free balance to another participant (001 s2.3:
a node lacking points buys them from others); never more than the balance."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import ChainError
from meterledger.wire import market as MK

KIND = MK.MK_TRANSFER
ROLE: str | None = None  # whoever holds points


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    G.enabled(st, "market", KIND)
    to, upt = tx.body[1], tx.body[2]
    if state.participant(to) is None:
        raise ChainError("unknown_participant", f"recipient {to.hex()} is not registered")
    if to == tx.sender.id:
        raise ChainError("bad_fields", "mk_transfer body: the recipient is the sender")
    M.debit(st, tx.sender.id, upt, "the transfer")
    M.credit(st, to, upt)
    return st.effect(tx.effect())
