"""`rules`: the dispatch center registers a version of a rule set (docs/PROTOCOL.md section
19); versions of one name only go up and one text is registered once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import INT64_MAX, Effect, State, StateWriter
from aggregator.chain.ledger import DISPATCH, ChainError, Receipt, RuleSet
from meterledger.wire import chain as C

KIND = C.RULES
ROLE: str | None = DISPATCH


@dataclass(frozen=True)
class RegistersRules(Effect):
    rules: RuleSet

    def apply(self, w: StateWriter, at: Receipt | None) -> None:
        w.put_rules(self.rules, at)

    def stored_ints(self) -> Iterable[int]:
        return (self.nonce, self.rules.version)


def check(tx: Tx, state: State) -> Effect:
    body = tx.body
    name, version, digest = body[1], body[2], body[4]
    last = state.rules_version(name)
    if version <= last:
        raise ChainError("rules_version", f"rule set {name!r} is at version {last}; version "
                                          f"{version} is not newer")
    known_as = state.rules_name(digest)
    if known_as is not None:
        raise ChainError("rules_registered", f"this text ({digest.hex()}) is registered "
                                             f"already as {known_as!r}")
    if version > INT64_MAX:
        raise ChainError("bad_fields", "version is beyond 2^63-1, which this chain does not "
                                       "store")
    return RegistersRules(*tx.effect().common(),
                          RuleSet(name, version, digest, body[3]))
