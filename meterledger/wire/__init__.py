"""The wire contract (../shared/SPEC.md, docs/PROTOCOL.md): pure, depending on `cryptography`
and nothing of the project's but `meterledger.errors`.

Modules: `cbor` (strict deterministic CBOR), `keys` (P-256, party ids), `cose` (COSE_Sign1),
`schema` (the payload schema language), `meter` (types 1-8), `cooked` (10, 11), `chain`
(12, 13 and the block's transaction tree), `types` (the one message-type registry), `anchor`
(the SPEC section 8 anchor rule), `merkle` (RFC 9162), `modbus` (the RTU framer) and
`reasons` (every stable reason code).

This package re-exports the message API, so `from meterledger import wire` then
`wire.parse(raw)`, `wire.SigningKey`, `wire.READING` read as one namespace.
"""

from meterledger.errors import ProtocolError
from meterledger.wire.cbor import CBORError, Tag, decode, encode
from meterledger.wire.cooked import (
    AGGREGATE,
    AGGREGATE_ALERTS,
    ESTIMATE,
    ESTIMATE_KINDS,
    ESTIMATE_METHODS,
)
from meterledger.wire.cose import (
    MAX_MESSAGE,
    PROTECTED,
    TAG_SIGN1,
    Message,
    check_message_fields,
    digest,
    parse,
    sign1,
    sign1_encoded,
    to_be_signed,
    verify,
    verify_message,
)
from meterledger.wire.keys import FIELD_PRIME, HALF_N, N, PublicKey, SigningKey, party_id
from meterledger.wire.meter import (
    ACK,
    BIRTH,
    CHECKPOINT,
    CLOCK_STEPPED,
    CLOCK_UNSYNCED,
    COMMAND,
    ENROLLMENT,
    ENROLLMENT_STATUSES,
    FLAG_NAMES,
    INTERVALS,
    PARTIAL,
    POWER_FAIL,
    READING,
    REGISTER_RESET,
    RESULT,
    RESULT_DONE,
    RESULT_FAILED,
    RESULT_REJECTED,
    SKIPPED,
    SOURCE_ERROR,
    TAMPER,
    ZERO32,
    Ack,
    Birth,
    Checkpoint,
    Command,
    Enrollment,
    Reading,
    Result,
    ack,
    ack_payload,
    checkpoint,
    command,
    command_args_error,
    enrollment,
    flag_names,
    reading,
)
from meterledger.wire.schema import Fields, MessageType, Rule
from meterledger.wire.types import RULES, SCHEMAS, SIGNER_FIELD, check_fields, register_type

__all__ = [
    "ACK", "AGGREGATE", "AGGREGATE_ALERTS", "BIRTH", "CHECKPOINT", "CLOCK_STEPPED",
    "CLOCK_UNSYNCED", "COMMAND", "ENROLLMENT", "ENROLLMENT_STATUSES", "ESTIMATE",
    "ESTIMATE_KINDS", "ESTIMATE_METHODS", "FIELD_PRIME", "FLAG_NAMES", "HALF_N", "INTERVALS",
    "MAX_MESSAGE", "PARTIAL", "POWER_FAIL", "PROTECTED", "READING", "REGISTER_RESET", "RESULT",
    "RESULT_DONE", "RESULT_FAILED", "RESULT_REJECTED", "RULES", "SCHEMAS", "SIGNER_FIELD",
    "SKIPPED", "SOURCE_ERROR", "TAG_SIGN1", "TAMPER", "ZERO32", "Ack", "Birth", "CBORError",
    "Checkpoint", "Command", "Enrollment", "Fields", "Message", "MessageType", "N",
    "ProtocolError", "PublicKey", "Reading", "Result", "Rule", "SigningKey", "Tag", "ack",
    "ack_payload", "check_fields", "check_message_fields", "checkpoint", "command",
    "command_args_error", "decode", "digest", "encode", "enrollment", "flag_names", "parse",
    "party_id", "reading", "register_type", "sign1", "sign1_encoded", "to_be_signed", "verify",
    "verify_message",
]
