// The consortium's part of a proof bundle (version 2), as tools/audit_consortium.py checks
// it: the anchor's block is proven by CometBFT's signed header and the validators'
// precommits, against the validator set of the network's genesis.json, instead of one
// sealer's signature (docs/PROTOCOL.md section 23).
import { equal, pyFromHex, toHex } from './bytes.js';
import { ProtocolError } from './cbor.js';
import {
  parseSignedHeader, parseTxProof, parseValidators, verifyCommit, verifyTxProof,
} from './cometbft.js';
import { parse } from './cose.js';
import { isObject, repr } from './pyfmt.js';

export const VERSION = 2;
// the bundle's anchor section of a version-2 bundle: [key, kind] in the Python's order
export const ANCHOR_SHAPE = [['block_height', 'uint'], ['transaction', 'hex'],
  ['tx_index', 'uint'], ['signed_header', 'object'], ['tx_proof', 'object']];
// the checks that take the place of the sealer's (block_signature .. tx_inclusion)
export const CONSORTIUM_CHECKS = [
  ['commit', 'validators of the genesis holding more than 2/3 of its voting power signed ' +
    'the block for its chain id (CometBFT\'s canonical precommits, ed25519)'],
  ['block_height', 'the committed block has the bundle\'s block height'],
  ['chain_id', 'the transaction names the chain that genesis.json\'s first transaction ' +
    'created'],
  ['tx_inclusion', 'the anchor is a transaction of the committed block (its data hash)'],
];

/** A genesis.json that cannot be used to verify; the message says why. */
export class GenesisError extends Error {}

function item(obj, key) {
  if (!isObject(obj)) throw new GenesisError(`${repr(key)}: not inside a JSON object`);
  if (!Object.prototype.hasOwnProperty.call(obj, key)) throw new GenesisError(repr(key));
  return obj[key];
}

/** The genesis transaction in app_state: {"meterledger": {"genesis_tx": HEX}}. */
function genesisTx(appState) {
  const inner = isObject(appState) ? appState.meterledger : undefined;
  const text = isObject(inner) ? inner.genesis_tx : undefined;
  const raw = typeof text === 'string' ? pyFromHex(text) : null;
  if (raw === null) {
    throw new ProtocolError('bad_genesis', 'app_state must be {"meterledger": {"genesis_tx": HEX}}');
  }
  return raw;
}

/** What a verifier trusts of a consortium, from its parsed genesis.json: CometBFT's chain
 * id, its validators, and the dispatch chain id its genesis transaction created. */
export function loadGenesis(doc) {
  let name;
  let chain;
  let validators;
  try {
    chain = parse(genesisTx(item(doc, 'app_state')), { schema: false }).kid;
    name = item(doc, 'chain_id');
    validators = parseValidators(doc);
  } catch (e) {
    if (!(e instanceof GenesisError || e instanceof ProtocolError)) throw e;
    throw new GenesisError('the validators\' file is not a MeterLedger consortium\'s ' +
      `genesis.json: ${e.message}`);
  }
  if (typeof name !== 'string') {
    throw new GenesisError('the validators\' genesis.json: chain_id is not a string');
  }
  return { chainName: name, chain, validators };
}

/** The consortium checks on a bundle's fields `v`, reported to `run` (bundle.js): run.pass
 * each that holds, run.fail(check, detail), which throws, at the first that fails.
 * Returns {height, signers}. */
export function verifyAnchor(v, txChain, genesis, run) {
  const fail = (check, detail) => run.fail(check, detail);
  const reasoned = (check, fn) => {
    try {
      return fn();
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      return fail(check, `${e.reason}: ${e.message}`);
    }
  };
  const [signed, [txInProof, proof]] = reasoned('commit', () => [
    parseSignedHeader(v['anchor.signed_header']), parseTxProof(v['anchor.tx_proof'])]);
  const block = reasoned('commit', () => verifyCommit(genesis.chainName, signed,
    genesis.validators));
  run.pass('commit');
  if (block.height !== v['anchor.block_height']) {
    fail('block_height', `the committed block is height ${block.height}, the bundle says ` +
      `${v['anchor.block_height']}`);
  }
  run.pass('block_height');
  if (!equal(txChain, genesis.chain)) {
    fail('chain_id', `the transaction is for chain ${toHex(txChain)}, the genesis created ` +
      `chain ${toHex(genesis.chain)}`);
  }
  run.pass('chain_id');
  const raw = v['anchor.transaction'];
  if (!equal(txInProof, raw)) fail('tx_inclusion', 'tx_proof proves another transaction');
  // every transaction of a committed block was accepted (honest validators reject a
  // proposal holding one the rules refuse), so its receipt index is its place in the block
  if (v['anchor.tx_index'] !== proof.index) {
    fail('tx_inclusion', `tx_index ${v['anchor.tx_index']}, but the proof puts it at ` +
      `${proof.index}`);
  }
  reasoned('tx_inclusion', () => verifyTxProof(raw, proof, block.header.dataHash));
  run.pass('tx_inclusion');
  return { height: block.height, signers: `${block.signers.length} of ` +
    `${genesis.validators.validators.length} validators (${block.signedPower}/` +
    `${block.totalPower} power)` };
}
