// Python's repr() and type names for the values a verifier meets (JSON and CBOR), so that a
// failed check's detail reads exactly as `python -m tools.audit verify` words it: the tests
// compare the two implementations detail for detail, and an auditor comparing the page with
// the CLI sees one wording.
import { isBytes } from './bytes.js';

/** A JSON number written with a fraction or exponent: Python reads it as a float, never as
 * an int, so the verifier must tell `1.0` from `1` (JSON.parse cannot). */
export class JsonFloat {
  constructor(value) {
    this.value = value;
  }
}

/** A CBOR tag and its value (only tag 18, the COSE envelope, is ever accepted). */
export class Tag {
  constructor(tag, value) {
    this.tag = tag;
    this.value = value;
  }
}

export function isJsonInt(v) {
  return typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v));
}

export function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !isBytes(v) &&
    !(v instanceof JsonFloat) && !(v instanceof Map) && !(v instanceof Tag);
}

export function typeName(v) {
  if (v === null || v === undefined) return 'NoneType';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v))) return 'int';
  if (typeof v === 'number' || v instanceof JsonFloat) return 'float';
  if (typeof v === 'string') return 'str';
  if (Array.isArray(v)) return 'list';
  if (isBytes(v)) return 'bytes';
  if (v instanceof Tag) return 'Tag';
  return 'dict';
}

/** repr(float): shortest round-trip digits, positional for exponents -4..15, else d.ddde+XX. */
export function floatRepr(x) {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, expText] = x.toExponential().split('e');
  const exp = Number(expText);
  const sign = mantissa.startsWith('-') ? '-' : '';
  const digits = mantissa.replace('-', '').replace('.', '');
  if (exp < -4 || exp >= 16) {
    const frac = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${frac}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  const whole = digits.slice(0, exp + 1).padEnd(exp + 1, '0');
  const frac = digits.slice(exp + 1);
  return `${sign}${whole}.${frac || '0'}`;
}

function quoteFor(hasSingle, hasDouble) {
  return hasSingle && !hasDouble ? '"' : "'";
}

function hex2(n) {
  return n.toString(16).padStart(2, '0');
}

// what str.isprintable() refuses: control, format, surrogate, private, unassigned,
// separator characters (but the space)
const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

export function strRepr(s) {
  const q = quoteFor(s.includes("'"), s.includes('"'));
  let out = q;
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === '\\' || ch === q) out += '\\' + ch;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch === ' ' || !NOT_PRINTABLE.test(ch)) out += ch;
    else if (c <= 0xff) out += '\\x' + hex2(c);
    else if (c <= 0xffff) out += '\\u' + c.toString(16).padStart(4, '0');
    else out += '\\U' + c.toString(16).padStart(8, '0');
  }
  return out + q;
}

export function bytesRepr(b) {
  const q = quoteFor(b.includes(0x27), b.includes(0x22));
  let out = 'b' + q;
  for (const c of b) {
    if (c === 0x5c || c === q.charCodeAt(0)) out += '\\' + String.fromCharCode(c);
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c === 0x09) out += '\\t';
    else if (c < 0x20 || c >= 0x7f) out += '\\x' + hex2(c);
    else out += String.fromCharCode(c);
  }
  return out + q;
}

export function repr(v) {
  if (v === null || v === undefined) return 'None';
  if (v === true) return 'True';
  if (v === false) return 'False';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') return Number.isInteger(v) ? BigInt(v).toString() : floatRepr(v);
  if (v instanceof JsonFloat) return floatRepr(v.value);
  if (typeof v === 'string') return strRepr(v);
  if (isBytes(v)) return bytesRepr(v);
  if (Array.isArray(v)) return `[${v.map(repr).join(', ')}]`;
  if (v instanceof Tag) return `Tag(tag=${v.tag}, value=${repr(v.value)})`;
  const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
  return `{${entries.map(([k, x]) => `${repr(k)}: ${repr(x)}`).join(', ')}}`;
}

/** Python's s[:n] on a str: code points, not UTF-16 units. */
export function pySlice(s, n) {
  return Array.from(s).slice(0, n).join('');
}

export function pyLen(s) {
  return Array.from(s).length;
}
