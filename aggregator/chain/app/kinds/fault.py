"""`fault`: a fog reports a local fault it found and what it did about it; recorded only,
except a closed outage record (body keys 6 meters, 7 start, 8 end), which is also stored
per meter for outage compensation (aggregator.chain.app.outages, docs/PROTOCOL.md
sections 18 and 28)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import outages as O
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import FOG
from meterledger.wire import chain as C

KIND = C.FAULT
ROLE: str | None = FOG


def check(tx: Tx, state: State) -> Effect:
    if not O.is_closed(tx.body):
        return tx.effect()
    st = G.Staged(state)
    O.record(st, tx.sender.id, tx.body, tx.digest, state.chain_time())
    return st.effect(tx.effect())
