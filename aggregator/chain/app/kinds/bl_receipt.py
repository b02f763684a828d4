"""`bl_receipt`: the utility's receipt of a bill on the chain (003 s2.2.4: "an on-chain
voucher"): the bill's digest and total, never its intervals, under the approved tariff in
force over its period; a correction names the receipt it replaces (docs/PROTOCOL.md
section 28)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import tariffs as TF
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import billing as BL

KIND = BL.BL_RECEIPT
ROLE: str | None = "utility"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    TF.receive(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
