// The "format" check of a proof bundle: the JSON shape rules of tools/audit.py's
// load_bundle, bundle_version and read_fields, with the same limits and wording. Every
// field comes out by its dotted path, converted: hex to bytes, paths to lists of 32-byte
// hashes, integers to BigInt.
import { fromHex, isBytes, utf8Decode } from './bytes.js';
import { ANCHOR_SHAPE, VERSION as CONSORTIUM_VERSION } from './consortium.js';
import { JsonDepthError, JsonError, parseJson } from './json.js';
import { isJsonInt, isObject, pyLen, pySlice, repr, typeName } from './pyfmt.js';

export const BUNDLE_VERSION = 1;
export const MAX_BUNDLE = 1 << 20; // bytes a bundle file may have; a real one is under 64 KiB
const MAX_PATH = 64; // hashes in an inclusion path: a tree of up to 2^64 entries
const HEX = /^(?:[0-9a-fA-F]{2})*$/;
const UINT_END = 2n ** 63n;
// every key of a version-1 bundle and the kind of its value, in the Python's order (a
// nested list is an object's own shape)
export const SHAPE = [
  ['version', 'uint'], ['reading', 'hex'], ['device_pub', 'hex'],
  ['enrollment', [['entry', 'hex'], ['leaf_index', 'uint'], ['inclusion_path', 'path']]],
  ['leaf_index', 'uint'], ['tree_size', 'uint'], ['inclusion_path', 'path'],
  ['checkpoint', 'hex'], ['fog_pub', 'hex'],
  ['anchor', [['block_height', 'uint'], ['block_header', 'hex'], ['sealer_signature', 'hex'],
    ['transaction', 'hex'], ['tx_index', 'uint'], ['tx_path', 'path']]],
];
export const SHAPE_CONSORTIUM = SHAPE.map(([k, kind]) => [k, k === 'anchor' ? ANCHOR_SHAPE : kind]);

/** Input that is no bundle (check "format"). */
export class FormatError extends Error {}

function has(obj, key) {
  return Object.prototype.hasOwnProperty.call(obj, key);
}

/** repr(v), cut to 40 characters as the Python's _show does. */
export function show(v) {
  const r = repr(v);
  return pyLen(r) <= 40 ? r : pySlice(r, 37) + '...';
}

function value(path, kind, v) {
  if (kind === 'uint') {
    if (isJsonInt(v) && BigInt(v) >= 0n && BigInt(v) < UINT_END) return BigInt(v);
    throw new FormatError(`${path} must be an integer in [0, 2^63-1], not ${show(v)}`);
  }
  if (kind === 'object') { // CometBFT's own JSON, read by cometbft_types.js
    if (isObject(v)) return v;
    throw new FormatError(`${path} must be a JSON object, not ${show(v)}`);
  }
  if (kind === 'hex') {
    if (typeof v === 'string' && HEX.test(v)) return fromHex(v);
    throw new FormatError(`${path} must be a string of hex byte pairs, not ${show(v)}`);
  }
  if (!Array.isArray(v) || v.length > MAX_PATH) {
    throw new FormatError(`${path} must be a list of at most ${MAX_PATH} hashes, not ${show(v)}`);
  }
  return v.map((h, i) => {
    if (typeof h === 'string' && h.length === 64 && HEX.test(h)) return fromHex(h);
    throw new FormatError(`${path}[${i}] must be a 32-byte hash as 64 hex characters, not ` +
      `${show(h)}`);
  });
}

/** Every field by its dotted path, converted; FormatError for a wrong shape or type
 * anywhere, or an unknown key. */
export function readFields(doc, shape = SHAPE, at = '') {
  const what = at.replace(/\.+$/, '') || 'the bundle';
  if (!isObject(doc)) throw new FormatError(`${what} must be a JSON object, not ${typeName(doc)}`);
  for (const key of Object.keys(doc)) {
    if (!shape.some(([k]) => k === key)) {
      throw new FormatError(`${at}${show(key)}: unknown key in ${what} (it has ` +
        `${shape.map(([k]) => k).join(', ')})`);
    }
  }
  const out = {};
  for (const [key, kind] of shape) {
    if (!has(doc, key)) throw new FormatError(`missing ${at}${key}`);
    if (Array.isArray(kind)) Object.assign(out, readFields(doc[key], kind, `${at}${key}.`));
    else out[at + key] = value(at + key, kind, doc[key]);
  }
  return out;
}

/** A JSON document from a file's bytes, pasted text, or an already parsed value, read as
 * Python's json.loads reads it (see json.js); FormatError when it is too large, not UTF-8
 * JSON, or nested too deeply. Pass the text, not a JSON.parse result, for the exact rules:
 * JSON.parse cannot tell 1.0 from 1. */
export function loadJson(input) {
  let text = input;
  if (isBytes(input)) {
    if (input.length > MAX_BUNDLE) {
      throw new FormatError(`${input.length} bytes, more than a bundle has (${MAX_BUNDLE})`);
    }
    // json.loads on bytes detects UTF-8 with a BOM ('utf-8-sig') and drops the BOM
    const bom = input[0] === 0xef && input[1] === 0xbb && input[2] === 0xbf;
    try {
      text = utf8Decode(bom ? input.subarray(3) : input);
    } catch {
      throw new FormatError("not JSON: 'utf-8' codec can't decode the bundle: invalid UTF-8");
    }
  } else if (typeof input === 'string') {
    const size = new TextEncoder().encode(input).length;
    if (size > MAX_BUNDLE) throw new FormatError(`${size} bytes, more than a bundle has (${MAX_BUNDLE})`);
  } else {
    return input;
  }
  try {
    return parseJson(text);
  } catch (e) {
    if (e instanceof JsonDepthError) throw new FormatError('not JSON a bundle can be: nested too deeply');
    if (e instanceof JsonError) throw new FormatError(`not JSON: ${e.message}`);
    throw e;
  }
}

/** 1 (the embedded chain's: a sealer) or 2 (a consortium's); FormatError else. */
export function bundleVersion(doc) {
  const v = isObject(doc) && has(doc, 'version') ? doc.version : null;
  if (!isJsonInt(v) || ![BUNDLE_VERSION, CONSORTIUM_VERSION].includes(Number(v))) {
    throw new FormatError(`not a version-${BUNDLE_VERSION} (embedded chain) or ` +
      `version-${CONSORTIUM_VERSION} (consortium) bundle`);
  }
  return Number(v);
}
