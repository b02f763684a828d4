// RFC 9162 section 2.1 Merkle trees, as meterledger/wire/merkle.py verifies them: leaf hash
// SHA-256(0x00 || entry), node hash SHA-256(0x01 || left || right), inclusion proofs
// checked step by step as section 2.1.3.2 writes them. Indices and sizes are BigInt: a
// bundle may claim any index up to 2^63 - 1, and the checks must see it exactly.
import { concat, equal, isBytes, sha256, toHex } from './bytes.js';
import { typeName } from './pyfmt.js';

export const HASH_SIZE = 32;
const LEAF = Uint8Array.of(0);
const NODE = Uint8Array.of(1);
export const EMPTY_ROOT = sha256(new Uint8Array(0));

export class MerkleError extends Error {}

export function leafHash(entry) {
  return sha256(concat(LEAF, entry));
}

export function nodeHash(left, right) {
  return sha256(concat(NODE, left, right));
}

/** MTH of the given leaf hashes: split at the largest power of two below n (RFC 9162). */
export function rootFromLeafHashes(hashes) {
  if (hashes.length === 0) return EMPTY_ROOT;
  if (hashes.length === 1) return hashes[0];
  let k = 1;
  while (k * 2 < hashes.length) k *= 2;
  return nodeHash(rootFromLeafHashes(hashes.slice(0, k)), rootFromLeafHashes(hashes.slice(k)));
}

function short(h) {
  return h.length > 6 ? toHex(h.subarray(0, 6)) + '…' : toHex(h);
}

function checkHash(what, h) {
  if (!isBytes(h)) throw new MerkleError(`${what} is ${typeName(h)}, not bytes`);
  if (h.length !== HASH_SIZE) {
    throw new MerkleError(`${what} is ${h.length} bytes, a SHA-256 hash is ${HASH_SIZE}`);
  }
}

/** The length of PATH(index, D[size]) (RFC 9162 2.1.3.1): one hash per split on the way. */
function expectedInclusionLength(index, size) {
  let [lo, hi, n] = [0n, size, 0];
  while (hi - lo > 1n) {
    let k = 1n;
    while (k * 2n < hi - lo) k *= 2n;
    if (index < lo + k) hi = lo + k;
    else lo += k;
    n += 1;
  }
  return n;
}

/** That `leaf` is leaf `index` of the tree of `size` leaves with `root`; MerkleError
 * saying what is wrong otherwise. */
export function verifyInclusion(leaf, index, size, path, root) {
  index = BigInt(index);
  size = BigInt(size);
  if (size < 1n) throw new MerkleError(`tree size ${size} has no leaves, so nothing is included in it`);
  if (index < 0n) throw new MerkleError(`leaf index ${index} is negative`);
  if (index >= size) throw new MerkleError(`leaf index ${index} is beyond tree size ${size}`); // step 1
  checkHash('leaf hash', leaf);
  checkHash('root', root);
  path.forEach((p, i) => checkHash(`path element ${i}`, p));
  const wrongLength = (kind) => new MerkleError(`path too ${kind}: ${path.length} elements, but ` +
    `leaf ${index} of a tree of size ${size} needs exactly ${expectedInclusionLength(index, size)}`);
  let fn = index; // step 2
  let sn = size - 1n;
  let r = leaf; // step 3
  for (const p of path) { // step 4
    if (sn === 0n) throw wrongLength('long'); // 4a
    if ((fn & 1n) || fn === sn) { // 4b
      r = nodeHash(p, r);
      while (!(fn & 1n) && fn !== 0n) { // 4b.ii
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n; // 4c
    sn >>= 1n;
  }
  if (sn !== 0n) throw wrongLength('short'); // step 5
  if (!equal(r, root)) {
    throw new MerkleError(`root mismatch: the path for leaf ${index} of ${size} leads to ` +
      `${short(r)}, not to the expected root ${short(root)}`);
  }
}
