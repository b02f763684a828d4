// The payload schema language of docs/PROTOCOL.md section 4 (meterledger/wire/schema.py):
// kinds "u" uint, "i" int, "b" any bstr, "b8"/"b32"/"b65" bstr of that length, "t" tstr,
// "m" map, "a" array, "bool"; a trailing "?" marks an optional key. Ranges are inclusive:
// an integer's value, a text's UTF-8 length, a byte string's length, a map's or array's
// entries. Schemas are lists of [key, kind] so that fields are checked in the Python's
// order (a JS object would iterate integer keys in ascending order instead).
import { isBytes, utf8 } from './bytes.js';
import { ProtocolError } from './cbor.js';
import { repr } from './pyfmt.js';

export const SEQ_MAX = 2n ** 32n - 1n; // seq and cid travel as u32 on RS485
export const TIME_MAX = 2n ** 32n - 1n; // Unix seconds, u32
export const COUNT_MAX = 2n ** 53n - 1n; // exact in every JSON reader
export const ZERO32 = new Uint8Array(32);
export const INTERVALS = [60n, 300n, 900n, 1800n, 3600n];

export function badFields(msg) {
  return new ProtocolError('bad_fields', msg);
}

export function isInt(v) {
  return typeof v === 'bigint';
}

const PREDICATES = {
  u: (v) => isInt(v) && v >= 0n,
  i: isInt,
  b: isBytes,
  t: (v) => typeof v === 'string',
  m: (v) => v instanceof Map,
  a: (v) => Array.isArray(v),
  bool: (v) => typeof v === 'boolean',
};

export function predicate(kind) {
  const pred = PREDICATES[kind];
  if (pred !== undefined) return pred;
  const size = Number(kind.slice(1)); // "b8", "b32", "b65": a byte string of that length
  return (v) => isBytes(v) && v.length === size;
}

/** What is wrong with `value` for its range, or null. */
export function rangeError(value, [lo, hi]) {
  if (isInt(value)) return lo <= value && value <= hi ? null : `is ${value}, outside [${lo}, ${hi}]`;
  let n;
  let what;
  if (typeof value === 'string') [n, what] = [utf8(value).length, 'bytes of UTF-8'];
  else if (isBytes(value)) [n, what] = [value.length, 'bytes'];
  else if (value instanceof Map) [n, what] = [value.size, 'entries'];
  else if (Array.isArray(value)) [n, what] = [value.length, 'entries'];
  else return null;
  const big = BigInt(n);
  return lo <= big && big <= hi ? null : `has ${n} ${what}, outside [${lo}, ${hi}]`;
}

/** 'type 1 field 2 (seq)': how errors name a field. */
export function fieldLabel(t, key, names) {
  const name = names && isInt(key) ? names[Number(key)] : undefined;
  return `type ${t} field ${repr(key)}` + (name ? ` (${name})` : '');
}

/** A message type: number, signer key, schema [[key, kind]...], rule, ranges {key: [lo, hi]},
 * field names {key: name}. */
export function messageType(type, signerField, schema, rule = null, ranges = {}, names = {}) {
  return { type, signerField, schema, rule, ranges, names,
    keys: new Set(schema.map(([k]) => BigInt(k))) };
}

/** bad_fields unless `fields` has exactly the keys of the schema (optional ones may be
 * absent) with the right kinds, each within its range. */
export function checkSchema(mt, fields) {
  const t = mt.type;
  for (const key of fields.keys()) {
    if (!(isInt(key) && mt.keys.has(key))) throw badFields(`type ${t} has no field ${repr(key)}`);
  }
  for (const [k, declared] of mt.schema) {
    const key = BigInt(k);
    let kind = declared;
    const present = fields.has(key);
    if (kind.endsWith('?')) {
      if (!present) continue;
      kind = kind.slice(0, -1);
    } else if (!present) {
      throw badFields(`type ${t} is missing field ${k}`);
    }
    const v = fields.get(key);
    if (!predicate(kind)(v)) throw badFields(`${fieldLabel(t, key, mt.names)} must be ${kind}`);
    const r = mt.ranges[k];
    if (r !== undefined) {
      const err = rangeError(v, r);
      if (err !== null) throw badFields(`${fieldLabel(t, key, mt.names)} ${err}`);
    }
  }
}

/** Python's `x in (a, b, ...)` for the integer tuples the rules use. */
export function oneOf(v, list) {
  return list.some((x) => x === v);
}

export function range(lo, hi) {
  return [BigInt(lo), BigInt(hi)];
}
