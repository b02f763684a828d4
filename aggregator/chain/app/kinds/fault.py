"""`fault`: a fog reports a local fault it found and what it did about it; recorded only."""

from __future__ import annotations

from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import FOG
from meterledger.wire import chain as C

KIND = C.FAULT
ROLE: str | None = FOG


def check(tx: Tx, state: State) -> Effect:
    return tx.effect()
