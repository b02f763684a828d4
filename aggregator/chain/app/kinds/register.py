"""`register`: the dispatch key adds a participant (role, public key, name)."""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State, StateWriter
from aggregator.chain.ledger import DISPATCH, ChainError, Participant, Receipt
from meterledger import wire as P
from meterledger.wire import chain as C

KIND = C.REGISTER
ROLE: str | None = DISPATCH


@dataclass(frozen=True)
class Registers(Effect):
    participant: Participant

    def apply(self, w: StateWriter, at: Receipt | None) -> None:
        w.put_participant(self.participant)


def check(tx: Tx, state: State) -> Effect:
    body = tx.body
    new = P.party_id(body[2])
    if state.participant(new) is not None:
        raise ChainError("already_registered", f"{new.hex()} is registered already")
    return registers(tx.effect(), Participant(new, body[1], body[2], body[3], 0))


def registers(e: Effect, p: Participant) -> Registers:
    return Registers(*e.common(), p)
