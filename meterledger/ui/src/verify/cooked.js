// The fog's cooked data, types 10 (estimate and supersession, docs/VEE.md) and 11 (feeder
// aggregate, docs/PROTOCOL.md section 18), as meterledger/wire/cooked.py defines them. A
// bundle never holds one where it expects a reading, checkpoint or decision, but a message
// is checked against its own type's schema before its type is compared (as in the Python).
import { repr } from './pyfmt.js';
import { REGISTER_MAX } from './meter.js';
import {
  COUNT_MAX, INTERVALS, SEQ_MAX, TIME_MAX, badFields, isInt, messageType, oneOf, range,
} from './schema.js';
import { INT64_MAX, INT64_MIN } from './cbor.js';

const METHODS = ['linear', 'profile', 'none'];
const MAX_ESTIMATE_IVLS = 128;
const ALERTS = ['loss_high', 'loss_negative', 'outage', 'voltage_low', 'voltage_high', 'tamper',
  'silent'];
const ESTIMATE_KEYS = { // the keys each kind must carry, and no others
  estimate: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17],
  supersede: [0, 1, 2, 3, 11, 12, 13, 17],
};

function estimateRules(f) {
  const kind = f.get(2n);
  const keys = kind === 'estimate' || kind === 'supersede' ? ESTIMATE_KEYS[kind] : undefined;
  if (keys === undefined) throw badFields("kind must be 'estimate' or 'supersede'");
  const have = [...f.keys()].map(Number);
  const missing = keys.filter((k) => !have.includes(k));
  const extra = have.filter((k) => !keys.includes(k)).sort((a, b) => a - b);
  if (missing.length) throw badFields(`type 10 kind ${repr(kind)} is missing field ${missing[0]}`);
  if (extra.length) throw badFields(`type 10 kind ${repr(kind)} has no field ${extra[0]}`);
  if (kind === 'supersede') {
    if (f.get(13n) < 1n) throw badFields('seq of the superseding reading must be >= 1');
    return;
  }
  const method = f.get(4n);
  if (!METHODS.includes(method)) throw badFields("method must be 'linear', 'profile' or 'none'");
  if (f.get(6n) < 1n) throw badFields('from_seq must be >= 1');
  if (f.get(8n) <= f.get(6n)) throw badFields('to_seq must be greater than from_seq');
  const ivls = f.get(10n);
  if (!ivls.length) throw badFields('ivls must not be empty');
  const width = method === 'none' ? 1 : 3;
  const shape = width === 1 ? '[end]' : '[end, imp, exp]';
  let last = f.get(9n);
  ivls.forEach((it, i) => {
    if (!(Array.isArray(it) && it.length === width && it.every((v) => isInt(v) && v >= 0n))) {
      throw badFields(`ivls item ${i} must be ${shape} of uints`);
    }
    if (it[0] > TIME_MAX || it.slice(1).some((v) => v > REGISTER_MAX)) {
      throw badFields(`ivls item ${i}: end in [0, ${TIME_MAX}], Wh in [0, ${REGISTER_MAX}]`);
    }
    if (it[0] <= last) throw badFields(`ivls item ${i} must end after the previous one (or start)`);
    last = it[0];
  });
}

function aggregateRules(f) {
  const g = (k) => f.get(BigInt(k));
  if (!g(1)) throw badFields('feeder name must not be empty');
  if (!oneOf(g(3), INTERVALS) || g(2) % g(3) !== 0n) {
    throw badFields('dur must be a v1 interval and ivl a multiple of it');
  }
  if (g(7) + g(8) > g(6)) throw badFields("measured + estimated meters exceed the feeder's meters");
  if (g(9) > g(4) + g(5)) throw badFields("estimated Wh exceed the interval's import + export");
  if (f.has(11n) !== f.has(12n) || (f.has(11n) && g(11) > g(12))) {
    throw badFields('v_min and v_max come together, v_min <= v_max');
  }
  const alerts = g(13);
  if (!alerts.every((a) => typeof a === 'string' && ALERTS.includes(a))) {
    throw badFields(`alerts must be drawn from ${ALERTS.join(', ')}`);
  }
  const sorted = [...alerts].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (new Set(alerts).size !== alerts.length || sorted.some((a, i) => a !== alerts[i])) {
    throw badFields('alerts must be sorted and distinct');
  }
  if ((g(16) === 0n) === f.has(18n)) throw badFields('replaces is present exactly when rev >= 1');
  const groups = g(20);
  if (groups !== undefined && !(groups.length && groups.every((x) => typeof x === 'string' && x))) {
    throw badFields("merged must list the merged feeders' names");
  }
}

const T = range(0, TIME_MAX);
export const COOKED_TYPES = [
  messageType(10, 17, [[0, 'u'], [1, 'b8'], [2, 't'], [3, 'u'], [4, 't?'], [5, 'b32?'], [6, 'u?'],
    [7, 'b32?'], [8, 'u?'], [9, 'u?'], [10, 'a?'], [11, 'b32?'], [12, 'b32?'], [13, 'u?'],
    [17, 'b8']], estimateRules,
  { 2: range(1, 16), 3: T, 4: range(1, 16), 6: range(1, SEQ_MAX), 8: range(1, SEQ_MAX), 9: T,
    10: range(1, MAX_ESTIMATE_IVLS), 13: range(1, SEQ_MAX) },
  { 2: 'kind', 3: 't', 4: 'method', 5: 'from', 6: 'from_seq', 7: 'to', 8: 'to_seq', 9: 'start',
    10: 'ivls', 11: 'est', 12: 'by', 13: 'seq' }),
  messageType(11, 17, [[0, 'u'], [1, 't'], [2, 'u'], [3, 'u'], [4, 'u'], [5, 'u'], [6, 'u'],
    [7, 'u'], [8, 'u'], [9, 'u'], [10, 'i?'], [11, 'u?'], [12, 'u?'], [13, 'a'], [14, 'u'],
    [15, 'b32'], [16, 'u'], [17, 'b8'], [18, 'b32?'], [19, 'b32'], [20, 'a?']], aggregateRules,
  { 1: range(1, 64), 2: T, 3: range(60, 3600), 4: range(0, INT64_MAX), 5: range(0, INT64_MAX),
    6: range(0, COUNT_MAX), 7: range(0, COUNT_MAX), 8: range(0, COUNT_MAX),
    9: range(0, INT64_MAX), 10: range(INT64_MIN, INT64_MAX), 11: range(0, 65535),
    12: range(0, 65535), 13: range(0, ALERTS.length), 14: range(0, COUNT_MAX),
    16: range(0, COUNT_MAX), 20: range(1, 4096) },
  { 1: 'feeder', 2: 'ivl', 3: 'dur', 4: 'imp', 5: 'exp', 6: 'meters', 7: 'measured',
    8: 'estimated', 9: 'est_wh', 10: 'loss', 11: 'v_min', 12: 'v_max', 13: 'alerts', 14: 'size',
    15: 'prev', 16: 'rev', 18: 'replaces', 19: 'members', 20: 'merged' }),
];
