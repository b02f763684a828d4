// A JSON reader that keeps what JSON.parse loses and Python's json.loads keeps, because the
// bundle's format rules depend on it: an integer (`1`) is not a float (`1.0`), and integers
// beyond 2^53 stay exact (as BigInt). It accepts what json.loads accepts (NaN, Infinity,
// lone surrogate escapes, duplicate keys with the last one winning) and words its errors
// like it ("Expecting value: line 1 column 1 (char 0)").
//
// Values: safe integers are numbers, larger ones BigInt, numbers with a fraction or an
// exponent are JsonFloat, objects are plain objects (own "__proto__" keys included).
import { JsonFloat } from './pyfmt.js';

// Python's json hits its recursion limit at about this nesting; a bundle needs under 10
export const MAX_JSON_DEPTH = 900;
// CPython's default limit on the digits of an int read from text (sys.int_info)
const MAX_INT_DIGITS = 4300;
const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/y;
const WHITESPACE = /[ \t\n\r]*/y;
const ESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

export class JsonError extends Error {}

/** Nested deeper than Python's json can read (it raises RecursionError there). */
export class JsonDepthError extends Error {}

function fail(msg, text, pos) {
  const before = text.slice(0, pos);
  const line = before.split('\n').length;
  const col = pos - before.lastIndexOf('\n');
  return new JsonError(`${msg}: line ${line} column ${col} (char ${pos})`);
}

class Reader {
  constructor(text) {
    this.text = text;
  }

  skip(pos) {
    WHITESPACE.lastIndex = pos;
    WHITESPACE.test(this.text);
    return WHITESPACE.lastIndex;
  }

  value(pos, depth) {
    const t = this.text;
    const c = t[pos];
    if (c === '"') return this.string(pos + 1);
    if (c === '{' || c === '[') {
      if (depth >= MAX_JSON_DEPTH) throw new JsonDepthError('nested too deeply');
      return c === '{' ? this.object(pos + 1, depth + 1) : this.array(pos + 1, depth + 1);
    }
    for (const [word, v] of [['null', null], ['true', true], ['false', false],
      ['NaN', new JsonFloat(NaN)], ['Infinity', new JsonFloat(Infinity)],
      ['-Infinity', new JsonFloat(-Infinity)]]) {
      if (t.startsWith(word, pos)) return [v, pos + word.length];
    }
    NUMBER.lastIndex = pos;
    const m = NUMBER.exec(t);
    if (m === null) throw fail('Expecting value', t, pos);
    const end = NUMBER.lastIndex;
    if (m[1] !== undefined || m[2] !== undefined) return [new JsonFloat(Number(m[0])), end];
    const digits = m[0].replace('-', '').length;
    if (digits > MAX_INT_DIGITS) {
      throw new JsonError(`Exceeds the limit (${MAX_INT_DIGITS} digits) for integer string ` +
        `conversion: value has ${digits} digits; use sys.set_int_max_str_digits() to ` +
        'increase the limit');
    }
    const big = BigInt(m[0]);
    const safe = big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER);
    return [safe ? Number(big) : big, end];
  }

  string(start) {
    const t = this.text;
    let out = '';
    let pos = start;
    for (;;) {
      if (pos >= t.length) throw fail('Unterminated string starting at', t, start - 1);
      const c = t[pos];
      if (c === '"') return [out, pos + 1];
      if (c.charCodeAt(0) < 0x20) throw fail('Invalid control character at', t, pos);
      if (c !== '\\') {
        out += c;
        pos += 1;
        continue;
      }
      const e = t[pos + 1];
      if (e === undefined) throw fail('Unterminated string starting at', t, start - 1);
      if (e === 'u') {
        const h = t.slice(pos + 2, pos + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(h)) throw fail('Invalid \\uXXXX escape', t, pos + 1);
        out += String.fromCharCode(parseInt(h, 16));
        pos += 6;
      } else if (e in ESCAPES) {
        out += ESCAPES[e];
        pos += 2;
      } else {
        throw fail('Invalid \\escape', t, pos);
      }
    }
  }

  object(pos, depth) {
    const t = this.text;
    const out = {};
    pos = this.skip(pos);
    if (t[pos] === '}') return [out, pos + 1];
    for (;;) {
      if (t[pos] !== '"') {
        throw fail('Expecting property name enclosed in double quotes', t, pos);
      }
      let key;
      [key, pos] = this.string(pos + 1);
      pos = this.skip(pos);
      if (t[pos] !== ':') throw fail("Expecting ':' delimiter", t, pos);
      let value;
      [value, pos] = this.value(this.skip(pos + 1), depth);
      // an own property even for "__proto__", as Python's dict would hold it
      Object.defineProperty(out, key, { value, enumerable: true, writable: true,
        configurable: true });
      pos = this.skip(pos);
      if (t[pos] === '}') return [out, pos + 1];
      if (t[pos] !== ',') throw fail("Expecting ',' delimiter", t, pos);
      pos = this.skip(pos + 1);
    }
  }

  array(pos, depth) {
    const t = this.text;
    const out = [];
    pos = this.skip(pos);
    if (t[pos] === ']') return [out, pos + 1];
    for (;;) {
      let value;
      [value, pos] = this.value(pos, depth);
      out.push(value);
      pos = this.skip(pos);
      if (t[pos] === ']') return [out, pos + 1];
      if (t[pos] !== ',') throw fail("Expecting ',' delimiter", t, pos);
      pos = this.skip(pos + 1);
    }
  }
}

/** json.loads(text): JsonError for text that is not JSON, JsonDepthError when too deep. */
export function parseJson(text) {
  if (text.startsWith('\ufeff')) {
    throw fail('Unexpected UTF-8 BOM (decode using utf-8-sig)', text, 0);
  }
  const r = new Reader(text);
  const [value, end] = r.value(r.skip(0), 0);
  const rest = r.skip(end);
  if (rest !== text.length) throw fail('Extra data', text, rest);
  return value;
}
