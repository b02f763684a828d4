// SPEC section 1 in the browser: P-256 public keys (SEC1 uncompressed, validated as
// meterledger/wire/keys.py does) and party ids; ECDSA verification is @noble/curves, since
// WebCrypto (crypto.subtle) is missing on a page served over plain http.
import { p256 } from '@noble/curves/nist.js';
import { bigFromBytes, isBytes, sha256, toHex } from './bytes.js';
import { ProtocolError } from './cbor.js';
import { typeName } from './pyfmt.js';

export const N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551n;
export const HALF_N = N >> 1n;
export const FIELD_PRIME = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFFn;

/** SPEC section 1: the first 8 bytes of SHA-256 of the 65-byte public key. */
export function partyId(pub) {
  return sha256(pub).slice(0, 8);
}

export class PublicKey {
  constructor(raw) {
    // a value straight from a payload may be anything: only a byte string can be a key
    if (!isBytes(raw)) {
      throw new ProtocolError('bad_public_key',
        `public key must be a byte string, not ${typeName(raw)}`);
    }
    if (raw.length !== 65 || raw[0] !== 4) {
      throw new ProtocolError('bad_public_key',
        'public key must be 65 bytes SEC1 uncompressed (0x04 || X || Y)');
    }
    const x = bigFromBytes(raw.subarray(1, 33));
    const y = bigFromBytes(raw.subarray(33));
    if (x >= FIELD_PRIME || y >= FIELD_PRIME) {
      throw new ProtocolError('bad_public_key', 'public key is not a point on P-256');
    }
    try {
      p256.Point.fromBytes(raw); // checks the curve equation
    } catch {
      throw new ProtocolError('bad_public_key', 'public key is not a point on P-256');
    }
    this.raw = raw.slice();
    this.id = partyId(this.raw);
    this.idHex = toHex(this.id);
  }

  /** ECDSA P-256/SHA-256 over data, signature r || s (64 bytes); no low-S rule here (the
   * envelope's parse already refused high-S), as in the Python. */
  verify(signature, data) {
    try {
      return p256.verify(signature, data, this.raw, { prehash: true, lowS: false });
    } catch {
      return false;
    }
  }
}
