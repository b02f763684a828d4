"""The chain's state machine: the common checks of every transaction, then its kind's rule.

`Validator.check(tx bytes, State)` returns the Effect of a valid transaction or raises a
ChainError with a stable reason (docs/PROTOCOL.md section 15). Checks, in order (the first
failure is reported):

    SPEC section 3 structure        too_large, malformed, bad_tag, ... (wire.parse)
    already on the chain            duplicate (with the existing receipt)
    message type 12                 wrong_type
    sender registered               unregistered
    signature, schema, body rules   bad_signature, bad_fields, ... (wire, wire.chain)
    field 6 = this chain's id       wrong_chain
    nonce = last + 1                nonce_reused (<= last), nonce_gap (> last + 1)
    sender's role may send the kind not_permitted
    the kind's rule                 aggregator.chain.app.kinds.<kind>.check
"""

from __future__ import annotations

from typing import Any

from aggregator.chain.app.kinds import KINDS
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.kinds.register import registers
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import (
    DISPATCH,
    ChainError,
    DuplicateError,
    Participant,
    StorageError,
    refuse,
)
from meterledger import wire as P
from meterledger.errors import ProtocolError
from meterledger.wire import chain as C


class Validator:
    """Transaction rules over a State (see the module doc)."""

    def __init__(self, chain: bytes) -> None:
        self.chain = chain
        self._keys: dict[bytes, P.PublicKey] = {}

    def _key(self, pub: bytes) -> P.PublicKey:
        key = self._keys.get(pub)
        if key is None:
            try:
                key = self._keys[pub] = P.PublicKey(pub)
            except ProtocolError as e:  # registered keys were checked; a tampered store
                raise StorageError(f"registered key {pub.hex()[:16]}...: {e}") from None
        return key

    def check(self, raw: bytes, state: State) -> Effect:
        """The effect of transaction `raw` on `state`; raises ChainError."""
        try:
            m = P.parse(raw, schema=False)
        except ProtocolError as e:
            raise refuse(e) from None
        known = state.receipt(m.digest)
        if known is not None:
            raise DuplicateError(known)
        if m.type != C.TX:
            raise ChainError("wrong_type", f"message type {m.type} is not a transaction (12)")
        sender = state.participant(m.kid)
        if sender is None:
            raise ChainError("unregistered", f"sender {m.kid.hex()} is not a registered "
                                             "participant of this chain")
        key = self._key(sender.pub)
        try:
            f = P.verify_message(m, key).fields
        except ProtocolError as e:
            raise refuse(e) from None
        self._check_chain(f)
        nonce, kind, body = f[2], f[3], f[4]
        if nonce <= sender.nonce:
            raise ChainError("nonce_reused", f"nonce {nonce} of {sender.id.hex()} is not above "
                                             f"its last used nonce {sender.nonce}")
        if nonce > sender.nonce + 1:
            raise ChainError("nonce_gap", f"nonce {nonce} of {sender.id.hex()} skips ahead: "
                                          f"the next one is {sender.nonce + 1}")
        rule = KINDS[kind]  # the schema (wire.chain) admits registered kinds only
        if rule.ROLE is not None and sender.role != rule.ROLE:
            raise ChainError("not_permitted", f"a {kind} must come from a {rule.ROLE} "
                                              f"participant; {sender.id.hex()} is a {sender.role}")
        return rule.check(Tx(raw, m.digest, sender, key, nonce, kind, body), state)

    def _check_chain(self, f: P.Fields) -> None:
        if f[6] != self.chain:
            raise ChainError("wrong_chain", f"the transaction is for chain {f[6].hex()}, this "
                                            f"is chain {self.chain.hex()}")

    def check_genesis(self, raw: bytes) -> Effect:
        """Genesis' one transaction: the chain's dispatch key registering itself (role
        dispatch, nonce 1), the only transaction whose sender is not registered yet."""
        try:
            m = P.parse(raw, schema=False)
        except ProtocolError as e:
            raise refuse(e) from None
        f: dict[Any, Any] = m.fields
        body = f.get(4)
        if (m.type != C.TX or f.get(3) != C.REGISTER or not isinstance(body, dict)
                or not isinstance(body.get(2), bytes)):
            raise ChainError("bad_genesis", "genesis must hold one register transaction: the "
                                            "dispatch key registering itself")
        try:
            P.verify_message(m, P.PublicKey(body[2]))
        except ProtocolError as e:  # kid_mismatch: the key registered is not the signer's
            raise refuse(e) from None
        self._check_chain(f)
        if m.kid != self.chain:
            raise ChainError("bad_genesis", f"the chain id {self.chain.hex()} must be the id of "
                                            f"the dispatch key registering itself, not {m.kid.hex()}")
        if body[1] != DISPATCH or f[2] != 1:
            raise ChainError("bad_genesis", "the genesis registration must have role "
                                            f"dispatch and nonce 1, not {body[1]!r} and {f[2]}")
        me = Participant(m.kid, DISPATCH, body[2], body[3], 0)
        return registers(Effect(raw, m.digest, m.kid, 1, C.REGISTER), me)
