"""What every transaction kind module provides, and the context its rule gets.

A kind module (one per kind, registered in `aggregator.chain.app.kinds.KINDS`) holds:
- `KIND`: the kind's name (its body schema and body rules are the wire contract's,
  `meterledger.wire.chain.BODIES`, so a fog or an auditor checks a body exactly as the chain),
- `ROLE`: the role a sender needs, or None when the rule decides who may send,
- `check(tx, state) -> Effect`: the rule against the chain state, raising ChainError with a
  stable reason, and the kind's own `Effect` subclass when it changes more than the nonce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import Participant
from meterledger import wire as P


@dataclass(frozen=True)
class Tx:
    """A transaction that passed the common checks (structure, sender registered, signature,
    schema and body rules, chain id, nonce, role): what a kind's rule needs."""

    raw: bytes
    digest: bytes
    sender: Participant
    sender_key: P.PublicKey
    nonce: int
    kind: str
    body: dict[int, Any]

    def effect(self) -> Effect:
        """The common effect: the transaction recorded, the sender's nonce used."""
        return Effect(self.raw, self.digest, self.sender.id, self.nonce, self.kind)


class KindRule(Protocol):
    """The shape of a kind module (modules implement it; mypy checks each registration)."""

    @property
    def KIND(self) -> str: ...

    @property
    def ROLE(self) -> str | None: ...

    def check(self, tx: Tx, state: State) -> Effect: ...
