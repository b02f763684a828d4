"""`instruction`: the dispatch center tells one registered fog to act (docs/PROTOCOL.md
sections 15 and 19); a cited rule set must be registered."""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State, StateWriter
from aggregator.chain.ledger import DISPATCH, FOG, ChainError, Receipt
from meterledger.wire import chain as C

KIND = C.INSTRUCTION
ROLE: str | None = DISPATCH


@dataclass(frozen=True)
class Instructs(Effect):
    fog: bytes  # the fog it names

    def apply(self, w: StateWriter, at: Receipt | None) -> None:
        w.put_instruction(self.digest, self.fog, at, self.raw)


def check(tx: Tx, state: State) -> Effect:
    body = tx.body
    fog = state.participant(body[1])
    if fog is None or fog.role != FOG:
        raise ChainError("unknown_fog", f"the instruction names {body[1].hex()}, which is not "
                                        "a registered fog")
    if 7 in body and state.rules_name(body[7]) is None:
        raise ChainError("unknown_rules", f"the instruction cites rule set {body[7].hex()}, "
                                          "which is not registered")
    return Instructs(*tx.effect().common(), fog.id)
