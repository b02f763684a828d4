// CometBFT v0.38 blocks, commits, validators and tx proofs, read strictly from the JSON its
// RPC returns, as meterledger/wire/cometbft_types.py reads them (same rules, same order,
// same wording): int64 as a decimal string, int32/uint32 as a JSON number, hashes as hex
// (either case), keys, signatures and transactions as canonical padded base64, times as
// RFC 3339 read exactly to (seconds, nanos). A wrong shape throws ProtocolError with
// bad_header, bad_commit, bad_validators or bad_tx_proof.
import { b64DecodeCanonical, compare, equal, fromHex, sha256, toHex } from './bytes.js';
import { ProtocolError } from './cbor.js';
import { isJsonInt, isObject, pyLen, pySlice, repr, typeName } from './pyfmt.js';

export const [FLAG_ABSENT, FLAG_COMMIT, FLAG_NIL] = [1n, 2n, 3n];
const ADDRESS_SIZE = 20;
const HASH_SIZE = 32;
const ED25519_KEY_TYPE = 'tendermint/PubKeyEd25519';
const MAX_TOTAL_VOTING_POWER = (2n ** 63n - 1n) / 8n;
const MAX_CHAIN_ID_LEN = 50;
const MAX_AUNTS = 100;
const INT64 = [-(2n ** 63n), 2n ** 63n - 1n];
const RFC3339 = /^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?(Z|[+-][0-9]{2}:[0-9]{2})$/;

/** A JSON value of the wrong shape; the public parsers turn it into a ProtocolError. */
class Shape extends Error {}

const KINDS = { str: (v) => typeof v === 'string', int: isJsonInt, dict: isObject,
  list: Array.isArray };

function has(obj, key) {
  return Object.prototype.hasOwnProperty.call(obj, key);
}

function check(value, kind, what) {
  if (!KINDS[kind](value)) throw new Shape(`${what} is ${typeName(value)}, not ${kind}`);
  return value;
}

function get(obj, key, kind) {
  if (!isObject(obj)) throw new Shape(`expected an object holding ${repr(key)}, got ${typeName(obj)}`);
  if (!has(obj, key)) throw new Shape(`${repr(key)} is missing`);
  return check(obj[key], kind, repr(key));
}

/** An int64 as CometBFT writes it: a decimal string, no sign but '-', no leading zero. */
function int64(obj, key, lo = INT64[0], hi = INT64[1]) {
  const s = get(obj, key, 'str');
  const ok = /^-?(0|[1-9][0-9]*)$/.test(s) && lo <= BigInt(s) && BigInt(s) <= hi;
  if (!ok) throw new Shape(`${repr(key)} is ${repr(pySlice(s, 24))}, not a decimal integer in [${lo}, ${hi}]`);
  return BigInt(s);
}

/** An int32/uint32 as CometBFT writes it: a JSON number. */
function number(obj, key, lo, hi) {
  const n = BigInt(get(obj, key, 'int'));
  if (!(lo <= n && n <= hi)) throw new Shape(`${repr(key)} is ${n}, outside [${lo}, ${hi}]`);
  return n;
}

function hex(obj, key, sizes = []) {
  const s = get(obj, key, 'str');
  if (!/^(?:[0-9A-Fa-f]{2})*$/.test(s)) throw new Shape(`${repr(key)} is not hex`);
  const b = fromHex(s);
  if (sizes.length && !sizes.includes(b.length)) {
    throw new Shape(`${repr(key)} is ${b.length} bytes, not ${sizes.join(' or ')}`);
  }
  return b;
}

function b64Text(value, what) {
  const s = check(value, 'str', what);
  const raw = b64DecodeCanonical(s);
  if (raw === null) throw new Shape(`${what} is not canonical padded base64`);
  return raw;
}

function b64(obj, key) {
  return b64Text(get(obj, key, 'str'), repr(key));
}

function daysFromCivil(y, m, d) { // days since 1970-01-01 of a proleptic Gregorian date
  const yy = m <= 2 ? y - 1 : y;
  const era = Math.floor(yy / 400);
  const yoe = yy - era * 400;
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1;
  return era * 146097 + yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy - 719468;
}

function validDate(y, m, d) {
  const leap = (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
  return y >= 1 && m >= 1 && m <= 12 && d >= 1 && d <= days[m - 1];
}

/** RFC 3339 (Go's RFC3339Nano) to exact {seconds, nanos} (BigInt); an offset is applied. */
export function parseTime(s) {
  const m = typeof s === 'string' ? RFC3339.exec(s) : null;
  if (m === null) throw new Shape(`time ${repr(pySlice(String(s), 40))} is not RFC 3339`);
  const [y, mo, d, h, mi, sec] = m.slice(1, 7).map(Number);
  if (h > 23 || mi > 59 || sec > 59) throw new Shape(`time ${repr(s)} has no such time of day`);
  if (!validDate(y, mo, d)) throw new Shape(`time ${repr(s)} has no such date`);
  const zone = m[8];
  let offset = zone === 'Z' ? 0 : (Number(zone.slice(1, 3)) * 60 + Number(zone.slice(4, 6))) * 60;
  if (zone[0] === '-') offset = -offset;
  const nanos = BigInt((m[7] ?? '').padEnd(9, '0'));
  const seconds = BigInt(daysFromCivil(y, mo, d)) * 86400n + BigInt(h * 3600 + mi * 60 + sec - offset);
  return { seconds, nanos };
}

export const ZERO_TIME = parseTime('0001-01-01T00:00:00Z'); // the time of an absent vote

function time(obj, key) {
  return parseTime(get(obj, key, 'str'));
}

function blockIdOf(obj) {
  const parts = get(obj, 'parts', 'dict');
  const hash = hex(obj, 'hash', [0, HASH_SIZE]);
  const partsTotal = number(parts, 'total', 0n, 2n ** 32n - 1n);
  return { hash, partsTotal, partsHash: hex(parts, 'hash', [0, HASH_SIZE]) };
}

function parseWith(reason, what, fn) {
  try {
    return fn();
  } catch (e) {
    if (e instanceof Shape) throw new ProtocolError(reason, `${what}: ${e.message}`);
    throw e;
  }
}

function header(h) {
  const version = get(h, 'version', 'dict');
  const chainId = get(h, 'chain_id', 'str');
  if (!(pyLen(chainId) > 0 && pyLen(chainId) <= MAX_CHAIN_ID_LEN)) {
    throw new Shape(`chain_id is ${pyLen(chainId)} characters, not 1 to ${MAX_CHAIN_ID_LEN}`);
  }
  const hashes = {};
  for (const k of ['last_commit_hash', 'data_hash', 'next_validators_hash', 'consensus_hash',
    'last_results_hash', 'evidence_hash']) hashes[k] = hex(h, k, [0, HASH_SIZE]);
  return {
    versionBlock: int64(version, 'block', 0n),
    versionApp: int64(version, 'app', 0n),
    chainId,
    height: int64(h, 'height', 1n),
    time: time(h, 'time'),
    lastBlockId: blockIdOf(get(h, 'last_block_id', 'dict')),
    lastCommitHash: hashes.last_commit_hash,
    dataHash: hashes.data_hash,
    validatorsHash: hex(h, 'validators_hash', [HASH_SIZE]),
    nextValidatorsHash: hashes.next_validators_hash,
    consensusHash: hashes.consensus_hash,
    appHash: hex(h, 'app_hash'),
    lastResultsHash: hashes.last_results_hash,
    evidenceHash: hashes.evidence_hash,
    proposerAddress: hex(h, 'proposer_address', [ADDRESS_SIZE]),
  };
}

function commitSig(i, s) {
  const flag = number(s, 'block_id_flag', 0n, 255n);
  const validatorAddress = hex(s, 'validator_address');
  const timestamp = time(s, 'timestamp');
  const present = has(s, 'signature') && s.signature !== null && s.signature !== undefined;
  const signature = present ? b64(s, 'signature') : new Uint8Array(0);
  if (flag === FLAG_ABSENT) {
    const zero = timestamp.seconds === ZERO_TIME.seconds && timestamp.nanos === ZERO_TIME.nanos;
    if (validatorAddress.length || signature.length || !zero) {
      throw new Shape(`signature ${i} is absent yet carries an address, time or signature`);
    }
  } else if (flag === FLAG_COMMIT || flag === FLAG_NIL) {
    if (validatorAddress.length !== ADDRESS_SIZE || !signature.length) {
      throw new Shape(`signature ${i} has no ${ADDRESS_SIZE}-byte address or no signature`);
    }
  } else {
    throw new Shape(`signature ${i} has unknown block_id_flag ${flag}`);
  }
  return { flag, validatorAddress, timestamp, signature };
}

function commit(c) {
  const blockId = blockIdOf(get(c, 'block_id', 'dict'));
  if (blockId.hash.length !== HASH_SIZE) {
    throw new Shape('block_id.hash is not a 32-byte hash: a commit is for a block');
  }
  const sigs = get(c, 'signatures', 'list');
  const height = int64(c, 'height', 1n);
  const round = number(c, 'round', 0n, 2n ** 31n - 1n);
  return { height, round, blockId, signatures: sigs.map((s, i) => commitSig(i, s)) };
}

/** The `signed_header` of a /commit answer (or that answer's `result`). */
export function parseSignedHeader(obj) {
  if (isObject(obj) && has(obj, 'signed_header')) obj = obj.signed_header;
  const h = parseWith('bad_header', 'header', () => header(get(obj, 'header', 'dict')));
  const c = parseWith('bad_commit', 'commit', () => commit(get(obj, 'commit', 'dict')));
  return { header: h, commit: c };
}

function pyTruthy(v) {
  if (v === null || v === undefined || v === false || v === 0 || v === 0n || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (isObject(v)) return Object.keys(v).length > 0;
  return true;
}

function validator(i, v) {
  const key = get(v, 'pub_key', 'dict');
  if (get(key, 'type', 'str') !== ED25519_KEY_TYPE) {
    throw new Shape(`validator ${i} key is ${repr(pySlice(key.type, 40))}, only ${ED25519_KEY_TYPE}`);
  }
  const pub = b64(key, 'value');
  if (pub.length !== 32) throw new Shape(`validator ${i} ed25519 key is ${pub.length} bytes, not 32`);
  const power = int64(v, has(v, 'power') ? 'power' : 'voting_power', 1n, MAX_TOTAL_VOTING_POWER);
  const address = sha256(pub).slice(0, ADDRESS_SIZE);
  if (pyTruthy(has(v, 'address') ? v.address : '') && !equal(hex(v, 'address'), address)) {
    throw new Shape(`validator ${i} address is not SHA-256(pub_key)[:20] = ${toHex(address)}`);
  }
  return { address, pubKey: pub, power };
}

function validatorSet(obj) {
  const entries = Array.isArray(obj) ? obj : get(obj, 'validators', 'list');
  if (isObject(obj) && has(obj, 'total') && int64(obj, 'total') !== BigInt(entries.length)) {
    throw new Shape(`a page of ${entries.length} of ${obj.total} validators, not the set`);
  }
  const vals = entries.map((v, i) => validator(i, v));
  if (!vals.length) throw new Shape('the validator set is empty');
  if (new Set(vals.map((v) => toHex(v.address))).size !== vals.length) {
    throw new Shape('a validator is listed twice');
  }
  const total = vals.reduce((n, v) => n + v.power, 0n);
  if (total > MAX_TOTAL_VOTING_POWER) throw new Shape(`total voting power is above ${MAX_TOTAL_VOTING_POWER}`);
  // CometBFT's set order: voting power descending, then address ascending
  vals.sort((a, b) => (a.power !== b.power ? (a.power > b.power ? -1 : 1)
    : compare(a.address, b.address)));
  return { validators: vals, totalPower: total };
}

/** The validators of a genesis.json, of a /validators answer, or a list of entries. */
export function parseValidators(obj) {
  return parseWith('bad_validators', 'validators', () => validatorSet(obj));
}

function txProof(obj) {
  if (isObject(obj) && has(obj, 'proof') && !has(obj, 'root_hash')) obj = obj.proof;
  const inner = get(obj, 'proof', 'dict');
  const aunts = has(inner, 'aunts') && inner.aunts !== null ? get(inner, 'aunts', 'list') : [];
  if (aunts.length > MAX_AUNTS) throw new Shape(`${aunts.length} aunts, more than ${MAX_AUNTS}`);
  const decoded = aunts.map((a, i) => b64Text(a, `aunt ${i}`));
  if (decoded.some((a) => a.length !== HASH_SIZE)) throw new Shape('an aunt is not a 32-byte hash');
  const leaf = b64(inner, 'leaf_hash');
  if (leaf.length !== HASH_SIZE) throw new Shape('leaf_hash is not a 32-byte hash');
  const total = int64(inner, 'total', 1n);
  const index = int64(inner, 'index', 0n);
  return [b64(obj, 'data'), { total, index, leafHash: leaf, aunts: decoded }];
}

/** [tx, proof] from a /tx?prove=true answer (or its `proof`); its root_hash is not read:
 * the proof is checked against the data hash of a verified header instead. */
export function parseTxProof(obj) {
  return parseWith('bad_tx_proof', 'tx proof', () => txProof(obj));
}
