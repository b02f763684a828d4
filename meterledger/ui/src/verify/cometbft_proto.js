// The few protobuf encodings CometBFT v0.38 hashes and signs, written out by hand as
// meterledger/wire/cometbft_proto.py does (a protobuf library would be far larger than the
// five messages involved): a field is varint(number << 3 | wire type) then its value;
// proto3 scalars at their default are left out; a non-nullable embedded message is
// always written; a negative int64 is the varint of its 64-bit two's complement.
import { concat, utf8 } from './bytes.js';

const PRECOMMIT = 2n; // tendermint.types.SignedMsgType PRECOMMIT_TYPE
const U64 = 1n << 64n;
const EMPTY = new Uint8Array(0);
const [VARINT, FIXED64, LEN] = [0n, 1n, 2n];

/** Base-128 varint, low 7 bits first; a negative n (an int64) as its two's complement. */
export function varint(n) {
  let v = BigInt(n);
  if (v < -(1n << 63n) || v >= U64) throw new RangeError(`${v} fits neither int64 nor uint64`);
  v = ((v % U64) + U64) % U64;
  const out = [];
  while (v >= 0x80n) {
    out.push(Number((v & 0x7fn) | 0x80n));
    v >>= 7n;
  }
  out.push(Number(v));
  return Uint8Array.from(out);
}

function key(field, wireType) {
  return varint((BigInt(field) << 3n) | wireType);
}

export function fieldVarint(field, n) {
  return BigInt(n) !== 0n ? concat(key(field, VARINT), varint(n)) : EMPTY;
}

export function fieldSfixed64(field, n) {
  const v = BigInt(n);
  if (v === 0n) return EMPTY;
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigInt64(0, v, true);
  return concat(key(field, FIXED64), out);
}

/** A bytes, string or embedded-message field; empty at b"" unless `always`. */
export function fieldBytes(field, value, always = false) {
  if (!value.length && !always) return EMPTY;
  return concat(key(field, LEN), varint(value.length), value);
}

/** libs/protoio.MarshalDelimited: varint(length) then the message. */
export function delimited(message) {
  return concat(varint(message.length), message);
}

export function timestamp(seconds, nanos) {
  return concat(fieldVarint(1, seconds), fieldVarint(2, nanos));
}

export function consensusVersion(block, app) {
  return concat(fieldVarint(1, block), fieldVarint(2, app));
}

/** BlockID {hash = 1; PartSetHeader = 2 (non-nullable) {total = 1; hash = 2}}; the
 * Canonical twins encode the same. */
export function blockId(hash, partsTotal, partsHash) {
  const parts = concat(fieldVarint(1, partsTotal), fieldBytes(2, partsHash));
  return concat(fieldBytes(1, hash), fieldBytes(2, parts, true));
}

/** CanonicalVote of a precommit, not yet delimited; canonicalBlockId null for nil. */
export function canonicalVote(height, round, canonicalBlockId, seconds, nanos, chainId) {
  return concat(fieldVarint(1, PRECOMMIT), fieldSfixed64(2, height), fieldSfixed64(3, round),
    canonicalBlockId === null ? EMPTY : fieldBytes(4, canonicalBlockId, true),
    fieldBytes(5, timestamp(seconds, nanos), true), fieldBytes(6, utf8(chainId)));
}

/** SimpleValidator {PublicKey {ed25519 = 1} = 1; voting_power = 2}: what the set hashes. */
export function simpleValidator(ed25519Key, power) {
  return concat(fieldBytes(1, fieldBytes(1, ed25519Key, true), true), fieldVarint(2, power));
}

export function cdcString(s) {
  return fieldBytes(1, utf8(s));
}

export function cdcInt64(n) {
  return fieldVarint(1, n);
}

export function cdcBytes(b) {
  return fieldBytes(1, b);
}
