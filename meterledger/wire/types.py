"""The one registry of message types: the meter's (1-8), the fog's cooked data (10, 11) and
the main chain's (12, 13), listed here explicitly, so which types a parser knows never
depends on which modules happen to be imported.

`register_type` adds a type at run time (for an extension or a test); `check_fields` applies
a payload's schema and rule.
"""

from __future__ import annotations

from typing import Any

from meterledger.wire import chain, cooked, meter
from meterledger.wire.names import FIELD_NAMES
from meterledger.wire.schema import (
    Fields,
    MessageType,
    Range,
    Rule,
    bad_fields,
    check_schema,
    field_label,
    is_int,
    range_error,
)

__all__ = ["NAMES", "RANGES", "RULES", "SCHEMAS", "SIGNER_FIELD", "check_field_ranges",
           "check_fields", "register_type"]

# payload key holding the signer id (must equal the kid), schema, ranges and rule, per type
SIGNER_FIELD: dict[int, int] = {}
SCHEMAS: dict[int, dict[int, str]] = {}
RANGES: dict[int, dict[int, Range]] = {}
NAMES: dict[int, dict[int, str]] = {}
RULES: dict[int, Rule] = {}


def _add(mt: MessageType) -> None:
    SIGNER_FIELD[mt.type] = mt.signer_field
    SCHEMAS[mt.type] = dict(mt.schema)
    RANGES[mt.type] = dict(mt.ranges)
    NAMES[mt.type] = {**FIELD_NAMES.get(mt.type, {}), **mt.names}
    if mt.rule is not None:
        RULES[mt.type] = mt.rule
    else:
        RULES.pop(mt.type, None)


for _mt in (*meter.TYPES, *cooked.TYPES, *chain.TYPES):
    _add(_mt)


def register_type(type_: int, signer_field: int, schema: dict[int, str],
                  rule: Rule | None = None, ranges: dict[int, Range] | None = None) -> None:
    """Define (or redefine) a message type; ValueError on a malformed schema or a field
    without its range."""
    _add(MessageType(type_, signer_field, schema, rule, ranges or {}))


def check_fields(fields: Fields) -> None:
    """Raise ProtocolError("bad_fields") unless the payload matches its type's schema and
    rules (docs/PROTOCOL.md section 4): no unknown key, no missing key, right CBOR kinds."""
    t: Any = fields.get(0)
    schema = SCHEMAS.get(t) if is_int(t) else None
    if schema is None:
        raise bad_fields(f"no schema for message type {t!r}")
    check_schema(t, fields, schema, RANGES.get(t), NAMES.get(t))
    rule = RULES.get(t)
    if rule is not None:
        rule(fields)


def check_field_ranges(fields: Fields) -> None:
    """Only the range checks of check_fields (for a payload whose keys and kinds are already
    known to match its schema: the reading fast path)."""
    t = fields[0]
    for key, r in RANGES.get(t, {}).items():
        v = fields.get(key)
        if v is not None:
            err = range_error(v, r)
            if err is not None:
                raise bad_fields(f"{field_label(t, key, NAMES.get(t))} {err}")
