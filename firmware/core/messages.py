# Payload builders and schema checks for the SPEC section 4 message types.
# Schemas are strict: a v1 receiver rejects unknown keys, wrong CBOR types and values
# outside their domain, because the signature binds every byte and a verifier that
# ignored extra fields would let two parties read one message differently.
from core.compat import const

READING = const(1)
BIRTH = const(2)
ACK = const(3)
COMMAND = const(4)
RESULT = const(5)
CHECKPOINT = const(6)
ENROLLMENT = const(8)

# reading flags
CLOCK_UNSYNCED = const(0x01)
POWER_FAIL = const(0x02)
PARTIAL = const(0x04)
REGISTER_RESET = const(0x08)
TAMPER = const(0x10)
SOURCE_ERROR = const(0x20)
CLOCK_STEPPED = const(0x40)
SKIPPED = const(0x80)
FLAG_NAMES = (
    (0x01, "CLOCK_UNSYNCED"), (0x02, "POWER_FAIL"), (0x04, "PARTIAL"), (0x08, "REGISTER_RESET"),
    (0x10, "TAMPER"), (0x20, "SOURCE_ERROR"), (0x40, "CLOCK_STEPPED"), (0x80, "SKIPPED"),
)
ZERO32 = bytes(32)
INTERVALS = (60, 300, 900, 1800, 3600)
RESULT_DONE = const(0)
RESULT_REJECTED = const(1)
RESULT_FAILED = const(2)

# kinds: "u" uint, "i" int, "b8"/"b32"/"b65" fixed-size bstr, "b" any bstr, "t" tstr,
# "m" map, "?" bool. A trailing "?" in the field name marks an optional field.
_U, _B8, _B32, _B65 = "u", "b8", "b32", "b65"
SCHEMAS = {
    READING: {0: _U, 1: _B8, 2: _U, 3: _U, 4: _U, 5: _U, 6: _U, 7: _U, 8: _B32, 9: "m?"},
    BIRTH: {0: _U, 1: _B8, 10: _B65, 11: "t", 12: _U, 13: _U, 14: "t", 15: "t", 4: _U, 16: _B8},
    ACK: {0: _U, 1: _B8, 2: _U, 3: _B32, 4: _U, 17: _B8},
    COMMAND: {0: _U, 1: _B8, 2: _U, 3: "t", 4: "m", 5: _U, 6: "b", 17: _B8},
    RESULT: {0: _U, 1: _B8, 2: _U, 3: _U, 4: "t", 5: _U},
    CHECKPOINT: {0: _U, 17: _B8, 2: _U, 3: _U, 4: _B32, 5: _B32, 6: _U, 7: "u?", 8: "b32?"},
    ENROLLMENT: {0: _U, 1: _B8, 10: _B65, 18: "t", 19: "t", 6: _U, 17: _B8},
}
# the range of every field (docs/PROTOCOL.md section 4a, the same table as the host's):
# an integer's value, a text's UTF-8 length, a byte string's length, a map's entries
SEQ_MAX = 0xFFFFFFFF  # seq and cid travel as u32 on RS485
TIME_MAX = 0xFFFFFFFF  # Unix seconds, until 2106
COUNT_MAX = 2**53 - 1  # heights and sizes: exact in any JSON reader
REGISTER_MAX = 999999999999  # Wh, a 12-digit register
DETAIL_MAX = const(255)
LIMIT_MAX_W = 0x7FFFFFFF
_RANGES = {
    READING: {2: (1, SEQ_MAX), 3: (0, TIME_MAX), 4: (60, 3600), 5: (0, REGISTER_MAX),
              6: (0, REGISTER_MAX), 7: (0, 0xFF), 9: (0, 5)},
    BIRTH: {11: (0, 64), 12: (0, 0xFFFFFFFF), 13: (0, SEQ_MAX), 14: (0, 32), 15: (0, 32),
            4: (60, 3600)},
    ACK: {2: (0, SEQ_MAX), 4: (0, TIME_MAX)},
    COMMAND: {2: (1, SEQ_MAX), 3: (1, 16), 4: (0, 8), 5: (0, TIME_MAX), 6: (0, 32)},
    RESULT: {2: (0, SEQ_MAX), 3: (0, 2), 4: (0, DETAIL_MAX), 5: (0, TIME_MAX)},
    CHECKPOINT: {2: (1, COUNT_MAX), 3: (0, COUNT_MAX), 6: (0, TIME_MAX), 7: (0, TIME_MAX)},
    ENROLLMENT: {18: (6, 7), 19: (0, DETAIL_MAX), 6: (0, TIME_MAX)},
}
# q: v_min, v_max (0.1 V), p_imp_max, p_exp_max (W), temperature (0.1 degC)
_Q_RANGES = {1: (0, 65535), 2: (0, 65535), 3: (0, 0x7FFFFFFF), 4: (0, 0x7FFFFFFF),
             5: (-32768, 32767)}


class FieldError(ValueError):
    reason = "bad_fields"


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _kind_ok(kind, v):
    if kind == "u":
        return _is_int(v) and v >= 0
    if kind == "i":
        return _is_int(v)
    if kind == "t":
        return isinstance(v, str)
    if kind == "m":
        return isinstance(v, dict)
    if kind == "b":
        return isinstance(v, bytes)
    return isinstance(v, bytes) and len(v) == int(kind[1:])


def check_fields(fields):
    """Raise FieldError unless the payload map matches its type's schema and rules."""
    t = fields.get(0)
    schema = SCHEMAS.get(t)
    if schema is None:
        raise FieldError("unknown message type " + str(t))
    for key in fields:
        if key not in schema:
            raise FieldError("type " + str(t) + " has no field " + repr(key))
    for key, kind in schema.items():
        optional = kind.endswith("?")
        if optional:
            kind = kind[:-1]
        if key not in fields:
            if optional:
                continue
            raise FieldError("type " + str(t) + " is missing field " + str(key))
        v = fields[key]
        if not _kind_ok(kind, v):
            raise FieldError("type " + str(t) + " field " + str(key) + " must be " + kind)
        r = _RANGES[t].get(key)
        if r is not None:
            n = v if _is_int(v) else len(v.encode() if isinstance(v, str) else v)
            if n < r[0] or n > r[1]:
                raise FieldError("type " + str(t) + " field " + str(key) + " is outside ["
                                 + str(r[0]) + ", " + str(r[1]) + "]")
    _RULES[t](fields)


def _reading_rules(f):
    if f[4] not in INTERVALS:
        raise FieldError("dur must be one of 60, 300, 900, 1800, 3600")
    if not f[7] & CLOCK_UNSYNCED and f[3] % f[4]:
        raise FieldError("t is not a multiple of dur and CLOCK_UNSYNCED is not set")
    if f[2] == 1 and f[8] != ZERO32:
        raise FieldError("prev must be 32 zero bytes when seq = 1")
    q = f.get(9)
    if q is not None:
        for k, v in q.items():
            r = _Q_RANGES.get(k)
            if r is None or not _is_int(v):
                raise FieldError("q has a bad entry " + repr(k))
            if v < r[0] or v > r[1]:
                raise FieldError("q entry " + str(k) + " is outside [" + str(r[0]) + ", "
                                 + str(r[1]) + "]")


def _pub_matches_dev(f):
    from core.keys import party_id

    if party_id(f[10]) != f[1]:
        raise FieldError("dev is not the id of pub")


def _command_rules(f):
    err = command_args_error(f[3], f[4])
    if err:
        raise FieldError(err)


def _birth_rules(f):
    _pub_matches_dev(f)
    if f[4] not in INTERVALS:
        raise FieldError("dur must be one of 60, 300, 900, 1800, 3600")


def _checkpoint_rules(f):
    if f[2] == 1 and f[5] != ZERO32:
        raise FieldError("prev must be 32 zero bytes at height 1")


def _enrollment_rules(f):
    _pub_matches_dev(f)
    if f[18] not in ("active", "revoked"):
        raise FieldError("status must be 'active' or 'revoked'")


def _none(f):
    pass


_RULES = {
    READING: _reading_rules, BIRTH: _birth_rules, ACK: _none, COMMAND: _command_rules,
    RESULT: _none, CHECKPOINT: _checkpoint_rules, ENROLLMENT: _enrollment_rules,
}


def command_args_error(op, args):
    """None if (op, args) is a valid v1 command, else the reason (SPEC type 4)."""
    if op == "relay":
        if list(args.keys()) != [1] or not isinstance(args[1], bool):
            return "relay takes {1: bool}"
    elif op == "limit":
        if list(args.keys()) != [1] or not _is_int(args[1]) or not 0 <= args[1] <= LIMIT_MAX_W:
            return "limit takes {1: max W in [0, " + str(LIMIT_MAX_W) + "]}"
    elif op == "interval":
        if list(args.keys()) != [1] or args[1] not in INTERVALS or not _is_int(args[1]):
            return "interval takes {1: one of 60, 300, 900, 1800, 3600}"
    elif op == "time":
        if list(args.keys()) != [1] or not _is_int(args[1]) or not 0 <= args[1] <= TIME_MAX:
            return "time takes {1: Unix seconds in [0, " + str(TIME_MAX) + "]}"
    elif op in ("ping", "reboot"):
        if args:
            return op + " takes no arguments"
    elif op == "fw":  # an extension: docs/PROTOCOL.md section 22
        if list(args.keys()) != [1] or not isinstance(args[1], bytes) or len(args[1]) != 32:
            return "fw takes {1: the manifest digest, 32 bytes}"
    else:
        return "unknown op " + repr(op)
    return None


def reading(dev, seq, t, dur, imp, exp, flags, prev, q=None):
    f = {0: READING, 1: dev, 2: seq, 3: t, 4: dur, 5: imp, 6: exp, 7: flags, 8: prev}
    if q:
        f[9] = q
    return f


def birth(dev, pub, fw, boot, last_seq, hw, src, dur, fog):
    return {0: BIRTH, 1: dev, 10: pub, 11: fw, 12: boot, 13: last_seq, 14: hw, 15: src, 4: dur, 16: fog}


def ack(dev, seq, digest, t, fog):
    return {0: ACK, 1: dev, 2: seq, 3: digest, 4: t, 17: fog}


def command(dev, cid, op, args, not_after, ref, fog):
    return {0: COMMAND, 1: dev, 2: cid, 3: op, 4: args, 5: not_after, 6: ref, 17: fog}


def result(dev, cid, status, detail, t):
    return {0: RESULT, 1: dev, 2: cid, 3: status, 4: detail, 5: t}


def flag_names(flags):
    return [name for bit, name in FLAG_NAMES if flags & bit]
