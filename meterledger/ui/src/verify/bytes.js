// Byte helpers for the verifier. Plain Uint8Array code: the audit page runs in a browser,
// so nothing here may use Node's Buffer, and hashing is @noble/hashes (WebCrypto is absent
// on a fog served over plain http on a LAN address).
import { sha256 as nobleSha256 } from '@noble/hashes/sha2.js';

const HEX_DIGITS = '0123456789abcdef';
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
// padded base64 in the alphabet only: the shape Python's b64decode(validate=True) accepts
const B64_SHAPE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const UTF8_ENCODER = new TextEncoder();
// fatal: invalid UTF-8 is an error, as Python's bytes.decode() is strict; ignoreBOM: a
// leading U+FEFF is part of the text (the default decoder would silently drop it)
const UTF8_DECODER = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export function isBytes(v) {
  return v instanceof Uint8Array;
}

export function sha256(data) {
  return nobleSha256(data);
}

export function toHex(bytes) {
  let out = '';
  for (const b of bytes) out += HEX_DIGITS[b >> 4] + HEX_DIGITS[b & 15];
  return out;
}

/** Bytes of a string already known to be hex pairs (callers validate the shape first). */
export function fromHex(text) {
  const out = new Uint8Array(text.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(2 * i, 2), 16);
  return out;
}

/** Python's bytes.fromhex: hex pairs, ASCII whitespace allowed between them; null if not. */
export function pyFromHex(text) {
  const compact = text.replace(/^[ \t\n\r\f\v]+|[ \t\n\r\f\v]+$/g, '');
  if (!/^(?:[0-9a-fA-F]{2}[ \t\n\r\f\v]*)*$/.test(compact)) return null;
  return fromHex(compact.replace(/[ \t\n\r\f\v]/g, ''));
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equal(a, b) {
  if (!isBytes(a) || !isBytes(b) || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Bytewise order, shorter prefix first: Python's bytes comparison (CBOR key order). */
export function compare(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

export function utf8(text) {
  return UTF8_ENCODER.encode(text);
}

/** Strict UTF-8 decoding; throws on invalid input. */
export function utf8Decode(bytes) {
  return UTF8_DECODER.decode(bytes);
}

export function bigFromBytes(bytes) {
  let v = 0n;
  for (const b of bytes) v = (v << 8n) | BigInt(b);
  return v;
}

export function b64Encode(bytes) {
  let out = '';
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    out += B64[n >> 18] + B64[(n >> 12) & 63];
    out += i + 1 < bytes.length ? B64[(n >> 6) & 63] : '=';
    out += i + 2 < bytes.length ? B64[n & 63] : '=';
  }
  return out;
}

/** Standard padded base64 in its one canonical spelling (as Go writes it), else null:
 * the shape check plus re-encoding catches non-zero spare bits, as the Python does. */
export function b64DecodeCanonical(text) {
  if (typeof text !== 'string' || !B64_SHAPE.test(text)) return null;
  const pad = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0;
  const out = new Uint8Array((text.length / 4) * 3 - pad);
  let at = 0;
  for (let i = 0; i < text.length; i += 4) {
    let n = 0;
    for (let j = 0; j < 4; j++) {
      const c = text[i + j];
      n = (n << 6) | (c === '=' ? 0 : B64.indexOf(c));
    }
    for (const shift of [16, 8, 0]) if (at < out.length) out[at++] = (n >> shift) & 255;
  }
  return b64Encode(out) === text ? out : null;
}
