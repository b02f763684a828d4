// SPEC section 3: COSE_Sign1 (ES256) envelopes, parsed with every reject rule in the
// firmware's order and with its reason codes (docs/PROTOCOL.md section 3), as
// meterledger/wire/cose.py parse() and verify() do. The Python's fast paths (a reading's
// fixed layout, the envelope's one encoding) only skip work the strict path would do
// with the same result, so this port has the strict path alone.
import { bigFromBytes, concat, equal, isBytes, sha256, utf8 } from './bytes.js';
import { CBORError, ProtocolError, decode, head } from './cbor.js';
import { HALF_N, N } from './keys.js';
import { Tag } from './pyfmt.js';
import { isInt } from './schema.js';
import { checkFields, signerField } from './types.js';

export const MAX_MESSAGE = 4096;
export const PROTECTED = Uint8Array.of(0xa1, 0x01, 0x26); // {1: -7}, alg ES256
const TAG_SIGN1 = 18n;
const KID = 4n;
// ToBeSigned up to the payload bstr: ["Signature1", h'A10126', h'', ...
const TBS_PREFIX = concat(Uint8Array.of(0x84, 0x6a), utf8('Signature1'),
  Uint8Array.of(0x43, 0xa1, 0x01, 0x26, 0x40));

export function toBeSigned(payload) {
  return concat(TBS_PREFIX, head(2, payload.length), payload);
}

/** SPEC section 3: a message's digest is SHA-256 over all its bytes, tag included. */
export function digest(raw) {
  return sha256(raw);
}

function rewrap(e, where) {
  if (e instanceof CBORError) return new CBORError(e.reason, `${where}: ${e.message}`);
  return e;
}

/** (kid, payload, signature) of a well-formed envelope, else the firmware's reason. */
function envelope(raw) {
  let env;
  try {
    env = decode(raw, [TAG_SIGN1]);
  } catch (e) {
    throw rewrap(e, 'envelope');
  }
  if (!(env instanceof Tag) || BigInt(env.tag) !== TAG_SIGN1) {
    throw new ProtocolError('bad_tag', 'not a tagged COSE_Sign1 (CBOR tag 18)');
  }
  const arr = env.value;
  if (!Array.isArray(arr) || arr.length !== 4) {
    throw new ProtocolError('bad_structure', 'COSE_Sign1 must be an array of 4 items');
  }
  const [prot, unprotected, payload, sig] = arr;
  if (!equal(prot, PROTECTED)) {
    throw new ProtocolError('bad_protected',
      "protected header must be h'A10126' (alg ES256 only)");
  }
  if (!(unprotected instanceof Map) || unprotected.size !== 1 || !unprotected.has(KID)) {
    throw new ProtocolError('bad_kid', 'unprotected header must be exactly {4: kid}');
  }
  const kid = unprotected.get(KID);
  if (!isBytes(kid) || kid.length !== 8) {
    throw new ProtocolError('bad_kid', 'kid must be a byte string of 8 bytes');
  }
  if (!isBytes(payload)) throw new ProtocolError('bad_structure', 'payload must be a byte string');
  if (!isBytes(sig) || sig.length !== 64) {
    throw new ProtocolError('bad_signature_encoding', 'signature must be 64 bytes (r || s)');
  }
  return [kid, payload, sig];
}

/** Every SPEC section 3 check but the signature, in the firmware's order; with `schema`
 * also the payload's schema (bad_fields). Returns {raw, kid, payload, fields, signature,
 * type}; throws ProtocolError. */
export function parse(raw, { schema = true } = {}) {
  if (raw.length > MAX_MESSAGE) {
    throw new ProtocolError('too_large',
      `message is ${raw.length} bytes, more than ${MAX_MESSAGE}`);
  }
  const [kid, payload, signature] = envelope(raw);
  let fields;
  try {
    fields = decode(payload);
  } catch (e) {
    throw rewrap(e, 'payload');
  }
  const t = fields instanceof Map ? fields.get(0n) : undefined;
  if (!isInt(t)) {
    throw new ProtocolError('bad_payload', 'payload must be a map with an integer type at key 0');
  }
  const signerKey = signerField(t);
  if (signerKey === undefined) throw new ProtocolError('unknown_type', `unknown message type ${t}`);
  if (!equal(fields.get(signerKey), kid)) {
    throw new ProtocolError('kid_mismatch',
      `kid does not equal the payload's signer field (key ${signerKey})`);
  }
  const r = bigFromBytes(signature.subarray(0, 32));
  const s = bigFromBytes(signature.subarray(32));
  if (!(r >= 1n && r < N && s >= 1n && s < N)) {
    throw new ProtocolError('sig_out_of_range', 'signature r or s outside [1, n-1]');
  }
  if (s > HALF_N) throw new ProtocolError('high_s', 'signature s is not low-S (s > n/2)');
  const m = { raw, kid, payload, fields, signature, type: t };
  if (schema) checkFields(fields);
  return m;
}

/** The signer and signature checks of a parse()d message, then (by default) its schema. */
export function verifyMessage(m, key, { schema = true } = {}) {
  if (!equal(m.kid, key.id)) {
    throw new ProtocolError('kid_mismatch', 'message was signed by a different party');
  }
  if (!key.verify(m.signature, toBeSigned(m.payload))) {
    throw new ProtocolError('bad_signature', 'ECDSA signature does not verify');
  }
  if (schema) checkFields(m.fields);
  return m;
}

/** parse() + kid == key.id + ECDSA signature + schema, reasons in the table's order. */
export function verify(raw, key, { schema = true } = {}) {
  return verifyMessage(parse(raw, { schema: false }), key, { schema });
}
