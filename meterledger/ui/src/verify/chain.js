// The dispatch chain's messages, types 12 (transaction) and 13 (block header), with every
// body kind's schema and rule (meterledger/wire/chain.py, docs/PROTOCOL.md section 15).
import { equal, isBytes, sha256, utf8 } from './bytes.js';
import { ProtocolError } from './cbor.js';
import { PublicKey } from './keys.js';
import { commandArgsError } from './meter.js';
import { repr } from './pyfmt.js';
import {
  COUNT_MAX, TIME_MAX, ZERO32, isInt, messageType, predicate, range, rangeError,
} from './schema.js';

export const TX = 12n;
export const BLOCK = 13n;
export const ANCHOR = 'anchor';
const ROLES = ['dispatch', 'fog', 'regulator', 'plant', 'market', 'registry', 'notary', 'holder',
  'utility', 'operator'];
const TEXT_MAX = 4096;
// a closed outage record (a fault of kind "outage" with meters, start, end) names at most
const OUTAGE_METERS_MAX = 128;

// body schemas per kind: [key, kind] in the Python's order
const BODIES = {
  register: [[1, 't'], [2, 'b65'], [3, 't']],
  anchor: [[1, 'a'], [2, 'a'], [3, 'a?'], [4, 'a?']],
  instruction: [[1, 'b8'], [2, 't'], [3, 'm'], [4, 'u'], [5, 'a'], [6, 't'], [7, 'b?']],
  report: [[1, 'b32'], [2, 'u'], [3, 'u'], [4, 'u'], [5, 'a'], [6, 't']],
  fault: [[1, 't'], [2, 't'], [3, 'u'], [4, 't'], [5, 'a'], [6, 'a?'], [7, 'u?'], [8, 'u?']],
  rules: [[1, 't'], [2, 'u'], [3, 't'], [4, 'b32']],
};
const TEXT = range(0, TEXT_MAX);
const BODY_RANGES = {
  register: { 1: range(1, 16), 3: range(0, 64) },
  anchor: { 1: TEXT, 2: range(0, 128), 3: TEXT, 4: TEXT },
  instruction: { 2: range(1, 16), 3: range(0, 8), 4: range(0, TIME_MAX), 5: TEXT, 6: TEXT,
    7: range(0, 32) },
  report: { 2: range(0, COUNT_MAX), 3: range(0, COUNT_MAX), 4: range(0, COUNT_MAX), 5: TEXT,
    6: TEXT },
  fault: { 1: range(1, 32), 2: TEXT, 3: range(0, TIME_MAX), 4: TEXT, 5: TEXT,
    6: range(1, OUTAGE_METERS_MAX), 7: range(0, TIME_MAX), 8: range(0, TIME_MAX) },
  rules: { 1: range(1, 64), 2: range(1, COUNT_MAX), 3: TEXT },
};

function bodyError(kind, msg) {
  return new ProtocolError('bad_fields', `${kind} body: ${msg}`);
}

function checkBody(kind, body) {
  const schema = BODIES[kind];
  for (const key of body.keys()) {
    if (!(isInt(key) && schema.some(([k]) => BigInt(k) === key))) {
      throw bodyError(kind, `no field ${repr(key)}`);
    }
  }
  for (const [k, declared] of schema) {
    const key = BigInt(k);
    const optional = declared.endsWith('?');
    const kind_ = optional ? declared.slice(0, -1) : declared;
    if (!body.has(key)) {
      if (optional) continue;
      throw bodyError(kind, `missing field ${k}`);
    }
    const v = body.get(key);
    if (!predicate(kind_)(v)) throw bodyError(kind, `field ${k} must be ${kind_}`);
    const r = BODY_RANGES[kind][k];
    const err = r !== undefined ? rangeError(v, r) : null;
    if (err !== null) throw bodyError(kind, `field ${k} ${err}`);
  }
}

function registerRules(body) {
  if (!ROLES.includes(body.get(1n))) throw bodyError('register', `role must be one of ${ROLES.join(', ')}`);
  try {
    new PublicKey(body.get(2n)); // eslint-disable-line no-new
  } catch (e) {
    throw bodyError('register', `pub: ${e.message}`);
  }
}

function anchorRules(body) {
  if (!body.get(1n).length) throw bodyError(ANCHOR, 'carries no checkpoint');
  for (const [name, items, ok] of [
    ['checkpoints', body.get(1n), isBytes],
    ['proof', body.get(2n), (x) => isBytes(x) && x.length === 32],
    ['aggregates', body.get(3n) ?? [], isBytes],
    ['statements', body.get(4n) ?? [], isBytes]]) {
    if (!items.every(ok)) throw bodyError(ANCHOR, `${name} has an item of the wrong kind`);
  }
}

function instructionRules(body) {
  const op = body.get(2n);
  const err = commandArgsError(op, body.get(3n));
  if (err) throw bodyError('instruction', err);
  if (op === 'time' || op === 'reboot') {
    throw bodyError('instruction', `op ${repr(op)} is the fog's own business, not dispatch's`);
  }
  if (!body.get(5n).every((x) => isBytes(x) && x.length === 8)) {
    throw bodyError('instruction', 'devs must be 8-byte meter ids');
  }
}

function rulesRules(body) {
  if (!equal(body.get(4n), sha256(utf8(body.get(3n))))) {
    throw bodyError('rules', "digest is not the SHA-256 of the text's UTF-8 bytes");
  }
}

function entriesRules(kind) {
  return (body) => {
    if (!body.get(5n).every((x) => isInt(x) && x >= 0n && x <= COUNT_MAX)) {
      throw bodyError(kind, `entries must be log indices (uint <= ${COUNT_MAX})`);
    }
  };
}

function lessBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i += 1) {
    if (a[i] !== b[i]) return a[i] < b[i];
  }
  return a.length < b.length;
}

// as meterledger.wire.chain._fault_rules: keys 6-8 all or none, of an "outage"
function faultRules(body) {
  entriesRules('fault')(body);
  const closed = [6n, 7n, 8n].filter((k) => body.has(k));
  if (!closed.length) return;
  if (closed.length !== 3) {
    throw bodyError('fault', 'meters (6), start (7) and end (8) come all together or not at all');
  }
  if (body.get(1n) !== 'outage') {
    throw bodyError('fault', `meters, start and end make a closed outage record: kind must be 'outage', not ${repr(body.get(1n))}`);
  }
  const meters = body.get(6n);
  if (!meters.every((x) => isBytes(x) && x.length === 8)) {
    throw bodyError('fault', 'meters must be 8-byte meter ids');
  }
  if (meters.some((m, i) => i > 0 && !lessBytes(meters[i - 1], m))) {
    throw bodyError('fault', 'meters must be sorted ascending, each once');
  }
  if (body.get(7n) >= body.get(8n)) {
    throw bodyError('fault', `an outage's start (${body.get(7n)}) must be before its end (${body.get(8n)})`);
  }
  if (body.get(8n) > body.get(3n)) {
    throw bodyError('fault', `an outage's end (${body.get(8n)}) is after the report's time t (${body.get(3n)}): report an outage once it has ended`);
  }
}

const BODY_RULES = {
  register: registerRules, anchor: anchorRules, instruction: instructionRules,
  rules: rulesRules, report: entriesRules('report'), fault: faultRules,
};

function txRules(f) {
  const kind = f.get(3n);
  if (!Object.prototype.hasOwnProperty.call(BODIES, kind)) {
    throw new ProtocolError('bad_fields', `unknown transaction kind ${repr(kind)}`);
  }
  checkBody(kind, f.get(4n));
  BODY_RULES[kind](f.get(4n));
}

function blockRules(f) {
  if (f.get(2n) === 0n && !equal(f.get(3n), ZERO32)) {
    throw new ProtocolError('bad_fields', 'prev must be 32 zero bytes at height 0 (genesis)');
  }
}

export const CHAIN_TYPES = [
  messageType(12, 1, [[0, 'u'], [1, 'b8'], [2, 'u'], [3, 't'], [4, 'm'], [5, 'u'], [6, 'b8']],
    txRules, { 2: range(1, COUNT_MAX), 3: range(1, 16), 4: range(0, 16), 5: range(0, TIME_MAX) },
    { 1: 'from', 2: 'nonce', 3: 'kind', 4: 'body', 5: 't', 6: 'chain' }),
  messageType(13, 1, [[0, 'u'], [1, 'b8'], [2, 'u'], [3, 'b32'], [4, 'b32'], [5, 'u'], [6, 'u'],
    [7, 'b8']], blockRules, { 2: range(0, COUNT_MAX), 5: range(0, COUNT_MAX), 6: range(0, TIME_MAX) },
  { 1: 'sealer', 2: 'height', 3: 'prev', 4: 'txroot', 5: 'ntx', 6: 't', 7: 'chain' }),
];
