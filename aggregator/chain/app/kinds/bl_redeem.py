"""`bl_redeem`: a customer redeems market points against an account's bill at the rate of
the tariff in force (docs/PROTOCOL.md section 28; 001 s2.3: points "can be redeemed against
electricity bills"); the points go to the tariff's utility, and the bill of the period the
redemption falls in subtracts it as a line naming this transaction."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import tariffs as TF
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import billing as BL

KIND = BL.BL_REDEEM
ROLE: str | None = None  # anyone holding points may pay an account's bill with them


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    TF.redeem(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
