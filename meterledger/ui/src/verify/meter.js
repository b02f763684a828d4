// SPEC section 4, the meter's message types 1-8 (meterledger/wire/meter.py): schemas, ranges
// (docs/PROTOCOL.md section 4a) and rules. A bundle holds types 1, 6 and 8, but a message of
// any known type is checked against its own schema before its type is compared, as the
// Python does, so every type is here.
import { equal, isBytes } from './bytes.js';
import { partyId } from './keys.js';
import { repr } from './pyfmt.js';
import {
  COUNT_MAX, INTERVALS, SEQ_MAX, TIME_MAX, ZERO32, badFields, isInt, messageType, oneOf, range,
} from './schema.js';

export const READING = 1n;
export const CHECKPOINT = 6n;
export const ENROLLMENT = 8n;
export const REGISTER_MAX = 999_999_999_999n; // Wh: a 12-digit register
const DETAIL_MAX = 255n;
const CLOCK_UNSYNCED = 1n;
const LIMIT_MAX_W = 2n ** 31n - 1n;
const DUR_RANGE = range(60, 3600);
const Q_RANGES = new Map([[1n, range(0, 65535)], [2n, range(0, 65535)],
  [3n, range(0, LIMIT_MAX_W)], [4n, range(0, LIMIT_MAX_W)], [5n, range(-32768, 32767)]]);
const INTERVALS_TEXT = 'dur must be one of 60, 300, 900, 1800, 3600';

const NAMES = {
  1: { 0: 'type', 1: 'dev', 2: 'seq', 3: 't', 4: 'dur', 5: 'imp', 6: 'exp', 7: 'flags', 8: 'prev',
    9: 'q' },
  2: { 0: 'type', 1: 'dev', 10: 'pub', 11: 'fw', 12: 'boot', 13: 'last_seq', 14: 'hw', 15: 'src',
    4: 'dur', 16: 'fog' },
  3: { 0: 'type', 1: 'dev', 2: 'seq', 3: 'digest', 4: 't', 17: 'fog' },
  4: { 0: 'type', 1: 'dev', 2: 'cid', 3: 'op', 4: 'args', 5: 'not_after', 6: 'ref', 17: 'fog' },
  5: { 0: 'type', 1: 'dev', 2: 'cid', 3: 'status', 4: 'detail', 5: 't' },
  6: { 0: 'type', 17: 'fog', 2: 'height', 3: 'size', 4: 'root', 5: 'prev', 6: 't', 7: 'ivl',
    8: 'agg' },
  8: { 0: 'type', 1: 'dev', 10: 'pub', 18: 'status', 19: 'reason', 6: 't', 17: 'fog' },
};

function readingRules(f) {
  const [seq, t, dur, flags] = [2n, 3n, 4n, 7n].map((k) => f.get(k));
  if (!oneOf(dur, INTERVALS)) throw badFields(INTERVALS_TEXT);
  if (!(flags & CLOCK_UNSYNCED) && t % dur !== 0n) {
    throw badFields('t is not a multiple of dur and CLOCK_UNSYNCED is not set');
  }
  if (seq === 1n && !equal(f.get(8n), ZERO32)) {
    throw badFields('prev must be 32 zero bytes when seq = 1');
  }
  for (const [k, v] of f.get(9n) ?? new Map()) {
    const r = isInt(k) ? Q_RANGES.get(k) : undefined;
    if (r === undefined || !isInt(v)) throw badFields(`q has a bad entry ${repr(k)}`);
    if (!(r[0] <= v && v <= r[1])) {
      throw badFields(`q entry ${k} is ${v}, outside [${r[0]}, ${r[1]}]`);
    }
  }
}

function pubMatchesDev(f) { // birth and enrollment: the same keys
  if (!equal(partyId(f.get(10n)), f.get(1n))) throw badFields('dev is not the id of pub');
}

function birthRules(f) {
  pubMatchesDev(f);
  if (!oneOf(f.get(4n), INTERVALS)) throw badFields(INTERVALS_TEXT);
}

function onlyKeyOne(args) {
  return args.size === 1 && args.has(1n);
}

/** null if (op, args) is a valid v1 command (SPEC type 4), else what is wrong. */
export function commandArgsError(op, args) {
  const one = onlyKeyOne(args);
  const a = args.get(1n);
  if (op === 'relay') {
    if (!one || typeof a !== 'boolean') return 'relay takes {1: bool}';
  } else if (op === 'limit') {
    if (!one || !isInt(a) || !(a >= 0n && a <= LIMIT_MAX_W)) {
      return `limit takes {1: max W in [0, ${LIMIT_MAX_W}]}`;
    }
  } else if (op === 'interval') {
    if (!one || !isInt(a) || !oneOf(a, INTERVALS)) {
      return 'interval takes {1: one of 60, 300, 900, 1800, 3600}';
    }
  } else if (op === 'time') {
    if (!one || !isInt(a) || !(a >= 0n && a <= TIME_MAX)) {
      return `time takes {1: Unix seconds in [0, ${TIME_MAX}]}`;
    }
  } else if (op === 'ping' || op === 'reboot') {
    if (args.size) return `${op} takes no arguments`;
  } else {
    return `unknown op ${repr(op)}`;
  }
  return null;
}

function commandRules(f) {
  const op = f.get(3n);
  const args = f.get(4n);
  let err;
  if (op === 'fw') { // firmware updates (docs/PROTOCOL.md section 22): a meter-bound op only
    const a = args.get(1n);
    err = onlyKeyOne(args) && isBytes(a) && a.length === 32 ? null
      : 'fw takes {1: the manifest digest, 32 bytes}';
  } else {
    err = commandArgsError(op, args);
  }
  if (err) throw badFields(err);
}

function checkpointRules(f) {
  if (f.get(2n) === 1n && !equal(f.get(5n), ZERO32)) {
    throw badFields('prev must be 32 zero bytes at height 1');
  }
}

function enrollmentRules(f) {
  pubMatchesDev(f);
  if (!['active', 'revoked'].includes(f.get(18n))) {
    throw badFields("status must be 'active' or 'revoked'");
  }
}

const T = range(0, TIME_MAX);
export const METER_TYPES = [
  messageType(1, 1, [[0, 'u'], [1, 'b8'], [2, 'u'], [3, 'u'], [4, 'u'], [5, 'u'], [6, 'u'],
    [7, 'u'], [8, 'b32'], [9, 'm?']], readingRules,
  { 2: range(1, SEQ_MAX), 3: T, 4: DUR_RANGE, 5: range(0, REGISTER_MAX),
    6: range(0, REGISTER_MAX), 7: range(0, 0xff), 9: range(0, 5) }, NAMES[1]),
  messageType(2, 1, [[0, 'u'], [1, 'b8'], [10, 'b65'], [11, 't'], [12, 'u'], [13, 'u'],
    [14, 't'], [15, 't'], [4, 'u'], [16, 'b8']], birthRules,
  { 11: range(0, 64), 12: range(0, 2n ** 32n - 1n), 13: range(0, SEQ_MAX), 14: range(0, 32),
    15: range(0, 32), 4: DUR_RANGE }, NAMES[2]),
  messageType(3, 17, [[0, 'u'], [1, 'b8'], [2, 'u'], [3, 'b32'], [4, 'u'], [17, 'b8']], null,
    { 2: range(0, SEQ_MAX), 4: T }, NAMES[3]),
  messageType(4, 17, [[0, 'u'], [1, 'b8'], [2, 'u'], [3, 't'], [4, 'm'], [5, 'u'], [6, 'b'],
    [17, 'b8']], commandRules,
  { 2: range(1, SEQ_MAX), 3: range(1, 16), 4: range(0, 8), 5: T, 6: range(0, 32) }, NAMES[4]),
  messageType(5, 1, [[0, 'u'], [1, 'b8'], [2, 'u'], [3, 'u'], [4, 't'], [5, 'u']], null,
    { 2: range(0, SEQ_MAX), 3: range(0, 2), 4: range(0, DETAIL_MAX), 5: T }, NAMES[5]),
  messageType(6, 17, [[0, 'u'], [17, 'b8'], [2, 'u'], [3, 'u'], [4, 'b32'], [5, 'b32'],
    [6, 'u'], [7, 'u?'], [8, 'b32?']], checkpointRules,
  { 2: range(1, COUNT_MAX), 3: range(0, COUNT_MAX), 6: T, 7: T }, NAMES[6]),
  messageType(8, 17, [[0, 'u'], [1, 'b8'], [10, 'b65'], [18, 't'], [19, 't'], [6, 'u'],
    [17, 'b8']], enrollmentRules,
  { 18: range(6, 7), 19: range(0, DETAIL_MAX), 6: T }, NAMES[8]),
];
