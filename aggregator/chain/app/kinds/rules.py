"""`rules`: the dispatch center registers a version of a rule set (docs/PROTOCOL.md section
19). The text must validate against the rule file's grammar (aggregator.chain.rulesets:
every field's type and range, deterministically), else `rules_invalid`; versions of one
name only go up and one text is registered once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import INT64_MAX, Effect, State, StateWriter
from aggregator.chain.ledger import DISPATCH, ChainError, Receipt, RuleSet
from aggregator.chain.rulesets import RulesError, parse_rules
from meterledger.wire import chain as C

KIND = C.RULES
ROLE: str | None = DISPATCH
INVALID = "rules_invalid"


@dataclass(frozen=True)
class RegistersRules(Effect):
    rules: RuleSet

    def apply(self, w: StateWriter, at: Receipt | None) -> None:
        w.put_rules(self.rules, at)

    def stored_ints(self) -> Iterable[int]:
        return (self.nonce, self.rules.version)


def validate(body: dict[int, Any]) -> None:
    """ChainError `rules_invalid` unless body[3] is a rule file that validates."""
    try:
        parse_rules(body[3], f"rule set {body[1]!r} v{body[2]}")
    except RulesError as e:
        raise ChainError(INVALID, str(e)) from None


def check(tx: Tx, state: State) -> Effect:
    body = tx.body
    name, version, digest = body[1], body[2], body[4]
    if version > INT64_MAX:
        raise ChainError("bad_fields", "version is beyond 2^63-1, which this chain does not "
                                       "store")
    validate(body)
    last = state.rules_version(name)
    if version <= last:
        raise ChainError("rules_version", f"rule set {name!r} is at version {last}; version "
                                          f"{version} is not newer")
    known_as = state.rules_name(digest)
    if known_as is not None:
        raise ChainError("rules_registered", f"this text ({digest.hex()}) is registered "
                                             f"already as {known_as!r}")
    return RegistersRules(*tx.effect().common(),
                          RuleSet(name, version, digest, body[3]))
