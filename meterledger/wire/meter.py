"""SPEC section 4, the meter's message types 1-8: numbers, flags, schemas, rules and the
builders of the payloads the fog signs. Field keys are named by an IntEnum per type.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from meterledger.wire.cbor import encode, head
from meterledger.wire.keys import party_id
from meterledger.wire.schema import COUNT_MAX, SEQ_MAX, TIME_MAX, Fields, MessageType, Range
from meterledger.wire.schema import bad_fields as _bad
from meterledger.wire.schema import is_int as _is_int

READING, BIRTH, ACK, COMMAND, RESULT, CHECKPOINT, ENROLLMENT = 1, 2, 3, 4, 5, 6, 8
CLOCK_UNSYNCED, POWER_FAIL, PARTIAL, REGISTER_RESET = 0x01, 0x02, 0x04, 0x08
TAMPER, SOURCE_ERROR, CLOCK_STEPPED, SKIPPED = 0x10, 0x20, 0x40, 0x80
FLAG_NAMES = ((0x01, "CLOCK_UNSYNCED"), (0x02, "POWER_FAIL"), (0x04, "PARTIAL"),
              (0x08, "REGISTER_RESET"), (0x10, "TAMPER"), (0x20, "SOURCE_ERROR"),
              (0x40, "CLOCK_STEPPED"), (0x80, "SKIPPED"))
ZERO32 = bytes(32)
INTERVALS = (60, 300, 900, 1800, 3600)
RESULT_DONE, RESULT_REJECTED, RESULT_FAILED = 0, 1, 2
ENROLLMENT_STATUSES = ("active", "revoked")


class Reading(IntEnum):
    """Type 1 payload keys."""

    TYPE, DEV, SEQ, T, DUR, IMP, EXP, FLAGS, PREV, Q = range(10)


class Birth(IntEnum):
    """Type 2 payload keys."""

    TYPE, DEV, DUR = 0, 1, 4
    PUB, FW, BOOT, LAST_SEQ, HW, SRC, FOG = 10, 11, 12, 13, 14, 15, 16


class Ack(IntEnum):
    """Type 3 payload keys."""

    TYPE, DEV, SEQ, DIGEST, T, FOG = 0, 1, 2, 3, 4, 17


class Command(IntEnum):
    """Type 4 payload keys."""

    TYPE, DEV, CID, OP, ARGS, NOT_AFTER, REF, FOG = 0, 1, 2, 3, 4, 5, 6, 17


class Result(IntEnum):
    """Type 5 payload keys."""

    TYPE, DEV, CID, STATUS, DETAIL, T = range(6)


class Checkpoint(IntEnum):
    """Type 6 payload keys."""

    TYPE, HEIGHT, SIZE, ROOT, PREV, T, IVL, AGG, FOG = 0, 2, 3, 4, 5, 6, 7, 8, 17


class Enrollment(IntEnum):
    """Type 8 payload keys."""

    TYPE, DEV, T, PUB, FOG, STATUS, REASON = 0, 1, 6, 10, 17, 18, 19


# payload key holding the signer id (must equal the kid), per message type (SPEC section 4)
_SIGNER_FIELD: dict[int, int] = {1: 1, 2: 1, 5: 1, 3: 17, 4: 17, 6: 17, 8: 17}
# kinds: "u" uint, "i" int, "b" any bstr, "b8"/"b32"/"b65" bstr of that length, "t" tstr,
# "m" map, "a" array, "bool"; a trailing "?" marks an optional field
_SCHEMAS: dict[int, dict[int, str]] = {
    READING: {0: "u", 1: "b8", 2: "u", 3: "u", 4: "u", 5: "u", 6: "u", 7: "u", 8: "b32", 9: "m?"},
    BIRTH: {0: "u", 1: "b8", 10: "b65", 11: "t", 12: "u", 13: "u", 14: "t", 15: "t", 4: "u",
            16: "b8"},
    ACK: {0: "u", 1: "b8", 2: "u", 3: "b32", 4: "u", 17: "b8"},
    COMMAND: {0: "u", 1: "b8", 2: "u", 3: "t", 4: "m", 5: "u", 6: "b", 17: "b8"},
    RESULT: {0: "u", 1: "b8", 2: "u", 3: "u", 4: "t", 5: "u"},
    CHECKPOINT: {0: "u", 17: "b8", 2: "u", 3: "u", 4: "b32", 5: "b32", 6: "u", 7: "u?",
                 8: "b32?"},
    ENROLLMENT: {0: "u", 1: "b8", 10: "b65", 18: "t", 19: "t", 6: "u", 17: "b8"},
}



# the range of every field (meterledger.wire.schema: an integer's value, a string's length,
# a map's entries); docs/PROTOCOL.md section 4a is the same table
REGISTER_MAX = 999_999_999_999  # Wh: a 12-digit register, 10^9 kWh
DETAIL_MAX = 255  # bytes of UTF-8 in free texts (result detail, enrollment reason)
_RANGES: dict[int, dict[int, Range]] = {
    READING: {2: (1, SEQ_MAX), 3: (0, TIME_MAX), 4: (INTERVALS[0], INTERVALS[-1]),
              5: (0, REGISTER_MAX), 6: (0, REGISTER_MAX), 7: (0, 0xFF), 9: (0, 5)},
    BIRTH: {11: (0, 64), 12: (0, 2**32 - 1), 13: (0, SEQ_MAX), 14: (0, 32), 15: (0, 32),
            4: (INTERVALS[0], INTERVALS[-1])},
    ACK: {2: (0, SEQ_MAX), 4: (0, TIME_MAX)},
    COMMAND: {2: (1, SEQ_MAX), 3: (1, 16), 4: (0, 8), 5: (0, TIME_MAX), 6: (0, 32)},
    RESULT: {2: (0, SEQ_MAX), 3: (0, 2), 4: (0, DETAIL_MAX), 5: (0, TIME_MAX)},
    CHECKPOINT: {2: (1, COUNT_MAX), 3: (0, COUNT_MAX), 6: (0, TIME_MAX), 7: (0, TIME_MAX)},
    ENROLLMENT: {18: (6, 7), 19: (0, DETAIL_MAX), 6: (0, TIME_MAX)},
}
# q entries (SPEC type 1 key 9): v_min, v_max (0.1 V), p_imp_max, p_exp_max (W), temp (0.1 C)
Q_RANGES: dict[int, Range] = {1: (0, 65535), 2: (0, 65535), 3: (0, 2**31 - 1),
                              4: (0, 2**31 - 1), 5: (-32768, 32767)}
LIMIT_MAX_W = 2**31 - 1  # a command's limit, W


# the keys the rules read, as plain ints (the reading rule runs for every message)
_SEQ, _T, _DUR, _FLAGS, _PREV, _Q = (int(k) for k in (Reading.SEQ, Reading.T, Reading.DUR,
                                                       Reading.FLAGS, Reading.PREV, Reading.Q))
_DEV, _PUB = int(Reading.DEV), int(Birth.PUB)


def _reading_rules(f: Fields) -> None:
    seq, t, dur, flags = f[_SEQ], f[_T], f[_DUR], f[_FLAGS]
    if dur not in INTERVALS:
        raise _bad("dur must be one of 60, 300, 900, 1800, 3600")
    if not flags & CLOCK_UNSYNCED and t % dur:
        raise _bad("t is not a multiple of dur and CLOCK_UNSYNCED is not set")
    if seq == 1 and f[_PREV] != ZERO32:
        raise _bad("prev must be 32 zero bytes when seq = 1")
    for k, v in f.get(_Q, {}).items():
        r = Q_RANGES.get(k)
        if r is None or not _is_int(v):
            raise _bad(f"q has a bad entry {k!r}")
        if not r[0] <= v <= r[1]:
            raise _bad(f"q entry {k} is {v}, outside [{r[0]}, {r[1]}]")


def _pub_matches_dev(f: Fields) -> None:  # birth and enrollment: the same keys
    if party_id(f[_PUB]) != f[_DEV]:
        raise _bad("dev is not the id of pub")


def _birth_rules(f: Fields) -> None:
    _pub_matches_dev(f)
    if f[Birth.DUR] not in INTERVALS:
        raise _bad("dur must be one of 60, 300, 900, 1800, 3600")


def command_args_error(op: Any, args: dict[Any, Any]) -> str | None:
    """None if (op, args) is a valid v1 command (SPEC type 4), else what is wrong."""
    one = list(args) == [1]
    if op == "relay":
        if not one or not isinstance(args[1], bool):
            return "relay takes {1: bool}"
    elif op == "limit":
        if not one or not _is_int(args[1]) or not 0 <= args[1] <= LIMIT_MAX_W:
            return f"limit takes {{1: max W in [0, {LIMIT_MAX_W}]}}"
    elif op == "interval":
        if not one or not _is_int(args[1]) or args[1] not in INTERVALS:
            return "interval takes {1: one of 60, 300, 900, 1800, 3600}"
    elif op == "time":
        if not one or not _is_int(args[1]) or not 0 <= args[1] <= TIME_MAX:
            return f"time takes {{1: Unix seconds in [0, {TIME_MAX}]}}"
    elif op in ("ping", "reboot"):
        if args:
            return f"{op} takes no arguments"
    else:
        return f"unknown op {op!r}"
    return None


def fw_args_error(args: dict[Any, Any]) -> str | None:
    """The one command op beyond v1 (docs/PROTOCOL.md section 22, firmware updates): a
    meter-bound type-4 message only, never a chain instruction (command_args_error)."""
    if list(args) != [1] or not isinstance(args[1], bytes) or len(args[1]) != 32:
        return "fw takes {1: the manifest digest, 32 bytes}"
    return None


def _command_rules(f: Fields) -> None:
    op, args = f[Command.OP], f[Command.ARGS]
    err = fw_args_error(args) if op == "fw" else command_args_error(op, args)
    if err:
        raise _bad(err)


def _checkpoint_rules(f: Fields) -> None:
    if f[Checkpoint.HEIGHT] == 1 and f[Checkpoint.PREV] != ZERO32:
        raise _bad("prev must be 32 zero bytes at height 1")


def _enrollment_rules(f: Fields) -> None:
    _pub_matches_dev(f)
    if f[Enrollment.STATUS] not in ENROLLMENT_STATUSES:
        raise _bad("status must be 'active' or 'revoked'")


_RULES = {
    READING: _reading_rules, BIRTH: _birth_rules, COMMAND: _command_rules,
    CHECKPOINT: _checkpoint_rules, ENROLLMENT: _enrollment_rules,
}
# the meter's message types, in number order (the registry is meterledger.wire.types)
TYPES = tuple(MessageType(t, _SIGNER_FIELD[t], _SCHEMAS[t], _RULES.get(t), _RANGES[t])
              for t in sorted(_SCHEMAS))


# --- builders of the payloads the fog signs (SPEC section 4) ------------------------------
def ack(dev: bytes, seq: int, digest: bytes, t: int, fog: bytes) -> Fields:
    return {0: ACK, 1: dev, 2: seq, 3: digest, 4: t, 17: fog}


def ack_payload(dev: bytes, seq: int, digest: bytes, t: int, fog: bytes) -> bytes:
    """encode(ack(...)), built by concatenation: the fog signs one ack per meter per group,
    and the generic encoder's recursion and key sorting cost as much as the signature's
    Python side. Keys 0, 1, 2, 3, 4, 17 encode as single bytes in that (sorted) order."""
    if (type(dev) is bytes and type(digest) is bytes and type(fog) is bytes
            and type(seq) is int and type(t) is int and seq >= 0 and t >= 0):
        return b"".join((b"\xa6\x00\x03\x01", head(2, len(dev)), dev, b"\x02", head(0, seq),
                         b"\x03", head(2, len(digest)), digest, b"\x04", head(0, t),
                         b"\x11", head(2, len(fog)), fog))
    return encode(ack(dev, seq, digest, t, fog))  # anything unusual: the generic rules


def command(dev: bytes, cid: int, op: str, args: dict[int, Any], not_after: int, ref: bytes,
            fog: bytes) -> Fields:
    return {0: COMMAND, 1: dev, 2: cid, 3: op, 4: args, 5: not_after, 6: ref, 17: fog}


def checkpoint(fog: bytes, height: int, size: int, root: bytes, prev: bytes, t: int,
               ivl: int | None = None, agg: bytes | None = None) -> Fields:
    f: Fields = {0: CHECKPOINT, 17: fog, 2: height, 3: size, 4: root, 5: prev, 6: t}
    if ivl is not None:
        f[7] = ivl
    if agg is not None:
        f[8] = agg
    return f


def enrollment(dev: bytes, pub: bytes, status: str, reason: str, t: int, fog: bytes) -> Fields:
    return {0: ENROLLMENT, 1: dev, 10: pub, 18: status, 19: reason, 6: t, 17: fog}


def reading(dev: bytes, seq: int, t: int, dur: int, imp: int, exp: int, flags: int, prev: bytes,
            q: dict[int, int] | None = None) -> Fields:
    """A meter's reading payload (for simulators, tests and benchmarks)."""
    f: Fields = {0: READING, 1: dev, 2: seq, 3: t, 4: dur, 5: imp, 6: exp, 7: flags, 8: prev}
    if q:
        f[9] = q
    return f


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES if flags & bit]
