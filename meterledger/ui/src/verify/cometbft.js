// Offline proof that a CometBFT v0.38 block was committed by its validator set, and that a
// transaction is in it: a port of meterledger/wire/cometbft.py, check for check.
//
// verifyCommit follows types.VerifyCommit (the full check a node makes of a LastCommit, not
// the light client's early exit): every signature that is not absent is verified, one bad
// signature fails the whole commit, signature i must come from validator i of the set in
// CometBFT's order, votes for nil are verified but count no power, and the threshold is
// 3 * signed > 2 * total. ed25519 is @noble/curves with zip215 off (RFC 8032 strict, as
// the Python's OpenSSL): a signature crafted to pass only under CometBFT's more lenient
// ZIP-215 rules is refused, so no commit CometBFT would refuse is ever accepted.
import { ed25519 } from '@noble/curves/ed25519.js';
import { equal, sha256, toHex } from './bytes.js';
import { ProtocolError } from './cbor.js';
import * as pb from './cometbft_proto.js';
import { FLAG_ABSENT, FLAG_COMMIT } from './cometbft_types.js';
import { MerkleError, leafHash, rootFromLeafHashes, verifyInclusion } from './merkle.js';
import { repr } from './pyfmt.js';

export { parseSignedHeader, parseTxProof, parseValidators } from './cometbft_types.js';

/** crypto/merkle.HashFromByteSlices: the RFC 6962 root over the items as leaves. */
function root(items) {
  return rootFromLeafHashes(items.map(leafHash));
}

/** types.Header.Hash: the Merkle root of the 14 fields, each proto-encoded. */
export function headerHash(h) {
  const last = h.lastBlockId;
  return root([
    pb.consensusVersion(h.versionBlock, h.versionApp),
    pb.cdcString(h.chainId),
    pb.cdcInt64(h.height),
    pb.timestamp(h.time.seconds, h.time.nanos),
    pb.blockId(last.hash, last.partsTotal, last.partsHash),
    pb.cdcBytes(h.lastCommitHash),
    pb.cdcBytes(h.dataHash),
    pb.cdcBytes(h.validatorsHash),
    pb.cdcBytes(h.nextValidatorsHash),
    pb.cdcBytes(h.consensusHash),
    pb.cdcBytes(h.appHash),
    pb.cdcBytes(h.lastResultsHash),
    pb.cdcBytes(h.evidenceHash),
    pb.cdcBytes(h.proposerAddress),
  ]);
}

/** types.ValidatorSet.Hash: the root of each validator's SimpleValidator, in set order. */
export function validatorsHash(set) {
  return root(set.validators.map((v) => pb.simpleValidator(v.pubKey, v.power)));
}

function isZeroBlockId(b) {
  return !b.hash.length && b.partsTotal === 0n && !b.partsHash.length;
}

/** types.VoteSignBytes of a precommit; blockId null (or zero) for a vote for nil. */
export function voteSignBytes(chainId, height, round, blockId, timestamp) {
  const canonical = blockId === null || isZeroBlockId(blockId) ? null
    : pb.blockId(blockId.hash, blockId.partsTotal, blockId.partsHash);
  return pb.delimited(pb.canonicalVote(height, round, canonical, timestamp.seconds,
    timestamp.nanos, chainId));
}

function short(b) {
  return toHex(b.subarray(0, 6)).toUpperCase();
}

function checkBlock(chainId, sh, validators) {
  const { header, commit } = sh;
  if (header.chainId !== chainId) {
    throw new ProtocolError('commit_wrong_chain',
      `header is for chain ${repr(header.chainId)}, not ${repr(chainId)}`);
  }
  const blockHash = headerHash(header);
  if (commit.height !== header.height || !equal(commit.blockId.hash, blockHash)) {
    throw new ProtocolError('commit_wrong_block',
      `commit is for block ${short(commit.blockId.hash)} at height ${commit.height}, ` +
      `the header is block ${short(blockHash)} at height ${header.height}`);
  }
  const vh = validatorsHash(validators);
  if (!equal(vh, header.validatorsHash)) {
    throw new ProtocolError('validators_mismatch', `the validators hash to ${short(vh)}, ` +
      `the header commits to ${short(header.validatorsHash)}`);
  }
  if (commit.signatures.length !== validators.validators.length) {
    throw new ProtocolError('commit_wrong_size', `commit has ${commit.signatures.length} ` +
      `signature slots for ${validators.validators.length} validators`);
  }
  return blockHash;
}

function signer(i, sig, validators, index, seen) {
  const addr = toHex(sig.validatorAddress);
  const at = index.get(addr);
  if (at === undefined) {
    throw new ProtocolError('commit_unknown_signer',
      `signature ${i} is from ${short(sig.validatorAddress)}, not in the validator set`);
  }
  if (seen.has(addr)) {
    throw new ProtocolError('commit_duplicate_signer',
      `signature ${i}: ${short(sig.validatorAddress)} has already signed`);
  }
  seen.add(addr);
  if (at !== i) {
    throw new ProtocolError('commit_signer_order',
      `signature ${i} is from validator ${at}; slot i belongs to validator i of the set`);
  }
  return validators.validators[at];
}

function ed25519Verifies(signature, msg, pub) {
  try {
    return ed25519.verify(signature, msg, pub, { zip215: false });
  } catch { // a signature of the wrong length, a key that is no point
    return false;
  }
}

function tally(chainId, commit, validators) {
  const index = new Map(validators.validators.map((v, i) => [toHex(v.address), i]));
  const seen = new Set();
  const counted = [];
  commit.signatures.forEach((sig, i) => {
    if (sig.flag === FLAG_ABSENT) return;
    const val = signer(i, sig, validators, index, seen);
    const blockId = sig.flag === FLAG_COMMIT ? commit.blockId : null;
    const msg = voteSignBytes(chainId, commit.height, commit.round, blockId, sig.timestamp);
    if (!ed25519Verifies(sig.signature, msg, val.pubKey)) {
      throw new ProtocolError('commit_bad_signature',
        `signature ${i} by ${short(val.address)} does not verify`);
    }
    if (sig.flag === FLAG_COMMIT) counted.push(val);
  });
  return counted;
}

/** That more than two thirds of the voting power of `validators` signed this header on
 * chain `chainId`: {chainId, height, hash, header, signedPower, totalPower, signers}, or a
 * ProtocolError with the first failing check's reason. */
export function verifyCommit(chainId, signedHeader, validators) {
  const hash = checkBlock(chainId, signedHeader, validators);
  const counted = tally(chainId, signedHeader.commit, validators);
  const signed = counted.reduce((n, v) => n + v.power, 0n);
  const total = validators.totalPower;
  if (3n * signed <= 2n * total) {
    throw new ProtocolError('commit_insufficient_power', `${signed} of ${total} voting power ` +
      'signed the block; more than two thirds is needed');
  }
  const h = signedHeader.header;
  return { chainId: h.chainId, height: h.height, hash, header: h, signedPower: signed,
    totalPower: total, signers: counted.map((v) => v.address) };
}

/** types.Tx.Hash: SHA-256 of the raw transaction. */
export function txHash(tx) {
  return sha256(tx);
}

/** crypto/merkle.Proof.Verify of tx against a verified header's data_hash; ProtocolError
 * "tx_not_in_block" otherwise. */
export function verifyTxProof(tx, proof, dataHash) {
  if (!equal(proof.leafHash, leafHash(txHash(tx)))) {
    throw new ProtocolError('tx_not_in_block',
      `the proof is for leaf ${short(proof.leafHash)}, not for this transaction`);
  }
  try {
    verifyInclusion(proof.leafHash, proof.index, proof.total, proof.aunts, dataHash);
  } catch (e) {
    if (!(e instanceof MerkleError)) throw e;
    throw new ProtocolError('tx_not_in_block', `tx ${proof.index} of ${proof.total}: ${e.message}`);
  }
}
