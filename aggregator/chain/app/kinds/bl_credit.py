"""`bl_credit`: a utility credits a meter for an outage the fog recorded on the chain (a
closed outage record, docs/PROTOCOL.md sections 18 and 28): the Wh not served times the
tariff's compensation rate, capped, for an outage longer than the tariff's grace; the next
bill carries it as a line naming this transaction."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import tariffs as TF
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import billing as BL

KIND = BL.BL_CREDIT
ROLE: str | None = "utility"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    TF.credit(st, tx.sender.id, tx.body, tx.digest)
    return st.effect(tx.effect())
