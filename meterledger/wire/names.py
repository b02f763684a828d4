"""Human names for the SPEC section 4 payload keys, and JSON conversion of payloads.

JSON has no byte strings, so bytes travel as lowercase hex, and maps with integer keys
(q, args) get their keys as decimal strings, as the tools' reading.json format does.
"""

from __future__ import annotations

from typing import Any

TYPE_NAMES: dict[int, str] = {
    1: "reading", 2: "birth", 3: "ack", 4: "command", 5: "result", 6: "checkpoint",
    8: "enrollment", 10: "estimate", 11: "aggregate", 14: "statement", 12: "transaction", 13: "block",
}

FIELD_NAMES: dict[int, dict[int, str]] = {
    1: {0: "type", 1: "dev", 2: "seq", 3: "t", 4: "dur", 5: "imp", 6: "exp", 7: "flags",
        8: "prev", 9: "q"},
    2: {0: "type", 1: "dev", 10: "pub", 11: "fw", 12: "boot", 13: "last_seq", 14: "hw",
        15: "src", 4: "dur", 16: "fog"},
    3: {0: "type", 1: "dev", 2: "seq", 3: "digest", 4: "t", 17: "fog"},
    4: {0: "type", 1: "dev", 2: "cid", 3: "op", 4: "args", 5: "not_after", 6: "ref",
        17: "fog"},
    5: {0: "type", 1: "dev", 2: "cid", 3: "status", 4: "detail", 5: "t"},
    6: {0: "type", 17: "fog", 2: "height", 3: "size", 4: "root", 5: "prev", 6: "t",
        7: "ivl", 8: "agg"},
    8: {0: "type", 1: "dev", 10: "pub", 18: "status", 19: "reason", 6: "t", 17: "fog"},
}

FLAG_NAMES: list[tuple[int, str]] = [
    (0x01, "CLOCK_UNSYNCED"), (0x02, "POWER_FAIL"), (0x04, "PARTIAL"),
    (0x08, "REGISTER_RESET"), (0x10, "TAMPER"), (0x20, "SOURCE_ERROR"),
    (0x40, "CLOCK_STEPPED"), (0x80, "SKIPPED"),
]

# q entries of a reading (SPEC type 1 key 9): key -> (name, unit of the integer on the wire)
Q_NAMES: dict[int, tuple[str, str]] = {
    1: ("v_min", "0.1 V"), 2: ("v_max", "0.1 V"), 3: ("p_imp_max", "W"), 4: ("p_exp_max", "W"),
    5: ("temp", "0.1 degC"),
}


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def named(fields: dict[Any, Any]) -> dict[str, Any]:
    """A payload map as JSON-ready {name: value}; unknown keys keep their number."""
    names = FIELD_NAMES.get(fields.get(0, -1), {})
    out: dict[str, Any] = {}
    for key, value in fields.items():
        out[names.get(key, str(key))] = to_json(value)
    if fields.get(0) == 1 and isinstance(fields.get(7), int):
        out["flag_names"] = [n for bit, n in FLAG_NAMES if fields[7] & bit]
    return out
