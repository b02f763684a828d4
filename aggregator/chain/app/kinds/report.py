"""`report`: the fog an instruction named says how it was carried out (done, rejected,
failed, with the log indices of the meters' results)."""

from __future__ import annotations

from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import ChainError
from meterledger.wire import chain as C

KIND = C.REPORT
ROLE: str | None = None  # the instruction's own fog, checked below


def check(tx: Tx, state: State) -> Effect:
    instruction = tx.body[1]
    named = state.instruction_fog(instruction)
    if named is None:
        raise ChainError("unknown_instruction", f"no instruction {instruction.hex()} is on "
                                                "the chain")
    if named != tx.sender.id:
        raise ChainError("not_permitted", f"instruction {instruction.hex()} names fog "
                                          f"{named.hex()}, not {tx.sender.id.hex()}")
    return tx.effect()
