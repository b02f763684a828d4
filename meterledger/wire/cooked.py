"""Cooked data the fog signs: type 10 (estimate and supersession, docs/VEE.md) and type 11
(feeder aggregate, docs/PROTOCOL.md section 18) and type 14 (a generator meter's energy
statement, section 25)."""

from __future__ import annotations

from meterledger.wire.meter import INTERVALS, REGISTER_MAX
from meterledger.wire.schema import (
    COUNT_MAX,
    INT64_MAX,
    INT64_MIN,
    SEQ_MAX,
    TIME_MAX,
    Fields,
    MessageType,
)
from meterledger.wire.schema import bad_fields as _bad
from meterledger.wire.schema import is_int as _is_int

# --- type 10: estimate and supersession (docs/VEE.md; built by fog_node.cooking.vee) ---------------
# One type, two kinds. "estimate": the fog's split of the exact register difference between
# two readings of one meter over the intervals between them. "supersede": a later true
# reading of that meter makes an estimate obsolete (nothing is overwritten; the fog logs new
# estimates for what is still missing). Both are signed by the fog (key 17).
ESTIMATE = 10
ESTIMATE_KINDS = ("estimate", "supersede")
ESTIMATE_METHODS = ("linear", "profile", "none")  # "none": energy unknown (register reset)
# most intervals one estimate covers (fog_node.cooking.vee chunks longer gaps): with every
# uint at its widest the signed message stays within 4096 bytes
MAX_ESTIMATE_IVLS = 128
_ESTIMATE_KEYS = {  # the keys each kind must carry, and no others
    "estimate": frozenset((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17)),
    "supersede": frozenset((0, 1, 2, 3, 11, 12, 13, 17)),
}


def _estimate_rules(f: Fields) -> None:
    kind = f[2]
    keys = _ESTIMATE_KEYS.get(kind)
    if keys is None:
        raise _bad("kind must be 'estimate' or 'supersede'")
    missing, extra = sorted(keys - f.keys()), sorted(f.keys() - keys)
    if missing:
        raise _bad(f"type 10 kind {kind!r} is missing field {missing[0]}")
    if extra:
        raise _bad(f"type 10 kind {kind!r} has no field {extra[0]}")
    if kind == "supersede":
        if f[13] < 1:
            raise _bad("seq of the superseding reading must be >= 1")
        return
    if f[4] not in ESTIMATE_METHODS:
        raise _bad("method must be 'linear', 'profile' or 'none'")
    if f[6] < 1:
        raise _bad("from_seq must be >= 1")
    if f[8] <= f[6]:
        raise _bad("to_seq must be greater than from_seq")
    ivls = f[10]
    if not ivls:
        raise _bad("ivls must not be empty")
    width = 1 if f[4] == "none" else 3
    shape = "[end]" if width == 1 else "[end, imp, exp]"
    last = f[9]
    for i, item in enumerate(ivls):
        if not (isinstance(item, list) and len(item) == width
                and all(_is_int(v) and v >= 0 for v in item)):
            raise _bad(f"ivls item {i} must be {shape} of uints")
        if item[0] > TIME_MAX or any(v > REGISTER_MAX for v in item[1:]):
            raise _bad(f"ivls item {i}: end in [0, {TIME_MAX}], Wh in [0, {REGISTER_MAX}]")
        if item[0] <= last:
            raise _bad(f"ivls item {i} must end after the previous one (or start)")
        last = item[0]


_ESTIMATE_TYPE = MessageType(ESTIMATE, 17, {0: "u", 1: "b8", 2: "t", 3: "u", 4: "t?", 5: "b32?", 6: "u?",
                             7: "b32?", 8: "u?", 9: "u?", 10: "a?", 11: "b32?", 12: "b32?",
                             13: "u?", 17: "b8"}, _estimate_rules,
                             {2: (1, 16), 3: (0, TIME_MAX), 4: (1, 16), 6: (1, SEQ_MAX),
                              8: (1, SEQ_MAX), 9: (0, TIME_MAX), 10: (1, MAX_ESTIMATE_IVLS),
                              13: (1, SEQ_MAX)},
                             {2: "kind", 3: "t", 4: "method", 5: "from", 6: "from_seq", 7: "to",
                              8: "to_seq", 9: "start", 10: "ivls", 11: "est", 12: "by",
                              13: "seq"})


# --- type 11: aggregate (docs/PROTOCOL.md section 18; built by fog_node.cooking.cooker) ----------
# The cooked data of one feeder for one interval, signed by the fog. The entries of one
# interval close (one per reported feeder, in feeder-name order) are hash-chained through
# `prev`, so the checkpoint's `agg` (the digest of the last one) commits to all of them.
# A revision (rev >= 1) is logged when late readings change an interval already reported;
# it names the entry it revises in `replaces`. Nothing is overwritten.
AGGREGATE = 11
AGGREGATE_ALERTS = ("loss_high", "loss_negative", "outage", "voltage_low", "voltage_high",
                    "tamper", "silent")


def _aggregate_rules(f: Fields) -> None:
    if not f[1]:
        raise _bad("feeder name must not be empty")
    if f[3] not in INTERVALS or f[2] % f[3]:
        raise _bad("dur must be a v1 interval and ivl a multiple of it")
    if f[7] + f[8] > f[6]:
        raise _bad("measured + estimated meters exceed the feeder's meters")
    if f[9] > f[4] + f[5]:
        raise _bad("estimated Wh exceed the interval's import + export")
    if (11 in f) != (12 in f) or (11 in f and f[11] > f[12]):
        raise _bad("v_min and v_max come together, v_min <= v_max")
    if not all(isinstance(a, str) and a in AGGREGATE_ALERTS for a in f[13]):
        raise _bad(f"alerts must be drawn from {', '.join(AGGREGATE_ALERTS)}")
    if len(set(f[13])) != len(f[13]) or list(f[13]) != sorted(f[13]):
        raise _bad("alerts must be sorted and distinct")
    if (f[16] == 0) == (18 in f):
        raise _bad("replaces is present exactly when rev >= 1")
    groups = f.get(20)
    if groups is not None and not (groups and all(isinstance(g, str) and g for g in groups)):
        raise _bad("merged must list the merged feeders' names")


_AGGREGATE_TYPE = MessageType(AGGREGATE, 17, {0: "u", 1: "t", 2: "u", 3: "u", 4: "u", 5: "u", 6: "u", 7: "u",
                              8: "u", 9: "u", 10: "i?", 11: "u?", 12: "u?", 13: "a", 14: "u",
                              15: "b32", 16: "u", 17: "b8", 18: "b32?", 19: "b32", 20: "a?"},
              _aggregate_rules,
              # sums of members' Wh: up to 9 million meters at REGISTER_MAX fit in int64
              {1: (1, 64), 2: (0, TIME_MAX), 3: (INTERVALS[0], INTERVALS[-1]),
               4: (0, INT64_MAX), 5: (0, INT64_MAX), 6: (0, COUNT_MAX), 7: (0, COUNT_MAX),
               8: (0, COUNT_MAX), 9: (0, INT64_MAX), 10: (INT64_MIN, INT64_MAX),
               11: (0, 65535), 12: (0, 65535), 13: (0, len(AGGREGATE_ALERTS)),
               14: (0, COUNT_MAX), 16: (0, COUNT_MAX), 20: (1, 4096)},
              {1: "feeder", 2: "ivl", 3: "dur", 4: "imp", 5: "exp", 6: "meters", 7: "measured",
               8: "estimated", 9: "est_wh", 10: "loss", 11: "v_min", 12: "v_max", 13: "alerts",
               14: "size", 15: "prev", 16: "rev", 18: "replaces", 19: "members",
               20: "merged"})



# --- type 14: energy statement (docs/PROTOCOL.md section 25; built by fog_node.cooking) --------
# One generator meter's energy in one interval, signed by the fog: what the green-certificate
# and carbon chains count. Emitted only for the meters the fog's config names as generators
# (a generator is not a household: its own data may leave the fog). `entries` are the log
# indices the energy comes from: for a measured statement, the meter's consecutive readings
# from the interval's start to its end (energy = the register differences of the first and
# the last); for an estimated one (est = 1), the live type-10 estimates that cover it.
STATEMENT = 14
MAX_STATEMENT_ENTRIES = 64


def _statement_rules(f: Fields) -> None:
    if f[3] not in INTERVALS or f[2] % f[3]:
        raise _bad("dur must be a v1 interval and ivl a multiple of it")
    if f[6] not in (0, 1):
        raise _bad("est must be 0 (measured) or 1 (estimated)")
    entries = f[7]
    if not all(_is_int(x) and 0 <= x < f[8] for x in entries):
        raise _bad("entries must be log indices below size")
    if list(entries) != sorted(set(entries)):
        raise _bad("entries must be ascending and distinct")
    if f[6] == 0 and len(entries) < 2:
        raise _bad("a measured statement names at least two readings")


_STATEMENT_TYPE = MessageType(STATEMENT, 17, {0: "u", 1: "b8", 2: "u", 3: "u", 4: "u", 5: "u",
                                              6: "u", 7: "a", 8: "u", 17: "b8"},
                              _statement_rules,
                              {2: (0, TIME_MAX), 3: (INTERVALS[0], INTERVALS[-1]),
                               4: (0, REGISTER_MAX), 5: (0, REGISTER_MAX), 6: (0, 1),
                               7: (1, MAX_STATEMENT_ENTRIES), 8: (1, COUNT_MAX)},
                              {1: "meter", 2: "ivl", 3: "dur", 4: "imp", 5: "exp", 6: "est",
                               7: "entries", 8: "size"})

TYPES = (_ESTIMATE_TYPE, _AGGREGATE_TYPE, _STATEMENT_TYPE)
