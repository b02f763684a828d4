// Strict deterministic CBOR (SPEC section 2, docs/PROTOCOL.md sections 0.2 and 2): a port of
// meterledger/wire/cbor.py's decoder, check for check and message for message.
//
// Hand-written rather than an npm CBOR library because none enforces these rules exactly:
// cborg (the strictest, with `strict`, `rejectDuplicateMapKeys`, `allowIndefinite: false`)
// does not check that map keys are sorted bytewise, cannot refuse every float and simple
// value, does not bound integers to int64, and its errors do not carry the SPEC's reason
// codes, let alone the first one the firmware's decoder would meet (which the verifier must
// report, in the same order as the Python). The rules fit in this one small file.
//
// Values: integers are BigInt, byte strings Uint8Array, text strings string, arrays Array,
// maps Map (keys BigInt, string or Uint8Array), booleans boolean, a tag a Tag.
import { compare, utf8Decode } from './bytes.js';
import { repr, Tag } from './pyfmt.js';

export const MAX_DEPTH = 8;
export const INT64_MIN = -(2n ** 63n);
export const INT64_MAX = 2n ** 63n - 1n;
// smallest argument each head width may carry (shortest form), by additional info
const MIN_FOR_AI = { 24: 24n, 25: 1n << 8n, 26: 1n << 16n, 27: 1n << 32n };
const WIDTH_FOR_AI = { 24: 1, 25: 2, 26: 4, 27: 8 };

/** A rejection of wire data with its stable reason code (docs/PROTOCOL.md section 3). */
export class ProtocolError extends Error {
  constructor(reason, message) {
    super(message);
    this.reason = reason;
  }
}

export class CBORError extends ProtocolError {}

function truncated(pos) {
  return new CBORError('malformed', `truncated CBOR at byte ${pos}`);
}

function outOfRange(value, end) {
  return new CBORError('out_of_range', `integer ${value} ending at byte ${end} is outside ` +
    '[-2^63, 2^63 - 1]');
}

/** The shortest head for major type `major` with argument `val` (a number or BigInt). */
export function head(major, val) {
  const v = BigInt(val);
  const mt = major << 5;
  if (v < 24n) return Uint8Array.of(mt | Number(v));
  const width = v < 0x100n ? 1 : v < 0x10000n ? 2 : v < 0x100000000n ? 4 : 8;
  const out = new Uint8Array(1 + width);
  out[0] = mt | { 1: 24, 2: 25, 4: 26, 8: 27 }[width];
  for (let i = 0; i < width; i++) out[width - i] = Number((v >> BigInt(8 * i)) & 0xffn);
  return out;
}

function isKeyKind(key) {
  return typeof key === 'bigint' || typeof key === 'string' || key instanceof Uint8Array;
}

// one function per item, the checks in the firmware's order, as the Python's _item
function item(data, pos, depth, tags) {
  if (pos >= data.length) throw truncated(pos);
  const ib = data[pos];
  const major = ib >> 5;
  const ai = ib & 31;
  pos += 1;
  if (major === 7) {
    if (ai === 20) return [false, pos];
    if (ai === 21) return [true, pos];
    if (ai === 31) {
      throw new CBORError('not_deterministic', `indefinite-length break at byte ${pos - 1}`);
    }
    throw new CBORError('forbidden_type',
      `simple value or float not allowed in v1 (byte ${pos - 1})`);
  }
  let val;
  if (ai < 24) {
    val = BigInt(ai);
  } else if (ai < 28) {
    const end = pos + WIDTH_FOR_AI[ai];
    if (end > data.length) throw truncated(pos);
    val = 0n;
    for (let i = pos; i < end; i++) val = (val << 8n) | BigInt(data[i]);
    if (val < MIN_FOR_AI[ai]) {
      throw new CBORError('not_deterministic',
        `integer/length not in shortest form at byte ${pos - 1}`);
    }
    pos = end;
  } else if (ai === 31) {
    throw new CBORError('not_deterministic', `indefinite length at byte ${pos - 1}`);
  } else {
    throw new CBORError('malformed', `reserved additional info at byte ${pos - 1}`);
  }
  const size = BigInt(data.length);
  if (major === 0) {
    if (val > INT64_MAX) throw outOfRange(val, pos);
    return [val, pos];
  }
  if (major === 1) {
    if (val > INT64_MAX) throw outOfRange(-1n - val, pos);
    return [-1n - val, pos];
  }
  if (major === 2 || major === 3) {
    if (BigInt(pos) + val > size) throw truncated(pos);
    const end = pos + Number(val);
    const raw = data.slice(pos, end);
    if (major === 2) return [raw, end];
    try {
      return [utf8Decode(raw), end];
    } catch {
      throw new CBORError('malformed', 'text string is not valid UTF-8');
    }
  }
  if (depth >= MAX_DEPTH) throw new CBORError('malformed', `nesting deeper than ${MAX_DEPTH}`);
  depth += 1;
  if (major === 5) {
    // every key and value takes at least one byte: no huge allocations, and the firmware
    // reports this truncation before looking at any entry
    if (BigInt(pos) + 2n * val > size) throw truncated(pos);
    return map(data, pos, Number(val), depth);
  }
  if (major === 4) {
    if (BigInt(pos) + val > size) throw truncated(pos);
    const arr = [];
    for (let i = 0; i < Number(val); i++) {
      let x;
      [x, pos] = item(data, pos, depth, null);
      arr.push(x);
    }
    return [arr, pos];
  }
  // major 6: a tag, allowed only where the caller says (the COSE envelope)
  if (tags === null || !tags.includes(val)) {
    throw new CBORError('forbidden_type', `tag ${val} not allowed here`);
  }
  let value;
  [value, pos] = item(data, pos, depth, null);
  return [new Tag(Number(val), value), pos];
}

function map(data, pos, count, depth) {
  const out = new Map();
  let last = new Uint8Array(0);
  for (let i = 0; i < count; i++) {
    const start = pos;
    let key;
    [key, pos] = item(data, pos, depth, null);
    if (!isKeyKind(key)) {
      throw new CBORError('forbidden_type', 'map key must be an integer or a string');
    }
    const kb = data.subarray(start, pos);
    const order = compare(kb, last);
    // the empty `last` sorts before every encoded key, as b"" does in the Python
    if (order <= 0 && i > 0) {
      if (order === 0) throw new CBORError('not_deterministic', `duplicate map key ${repr(key)}`);
      throw new CBORError('not_deterministic', `map keys not in sorted order at ${repr(key)}`);
    }
    last = kb;
    if (pos >= data.length) throw truncated(pos);
    let value;
    [value, pos] = item(data, pos, depth, null);
    out.set(key, value);
  }
  return [out, pos];
}

/** Exactly one deterministic CBOR item filling all of `data`; tags (BigInt numbers) are
 * allowed only at the top level and only those listed. Throws CBORError. */
export function decode(data, tags = null) {
  const [obj, pos] = item(data, 0, 0, tags);
  if (pos !== data.length) {
    throw new CBORError('trailing_bytes',
      `${data.length - pos} trailing bytes after the CBOR item`);
  }
  return obj;
}
