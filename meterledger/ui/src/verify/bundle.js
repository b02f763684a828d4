// Offline verification of a proof bundle (SPEC section 9), an independent port of
// tools/audit.py verify_bundle (and, for a consortium's version-2 bundle,
// tools/audit_consortium.py): the same checks, evaluated in the same order, each failure
// named by the same check with the same detail, so the audit page and
// `python -m tools.audit verify` always give one verdict.
//
// verifyBundle never throws for a bad bundle: it reports every check as "pass", "fail"
// (the first that failed, with its detail) or "not_run" (after the failure, or started
// but not finished when it happened: the Python reads the reading's envelope, part of
// reading_signature, before device_id, and the checkpoint's before fog_id).
import { equal, isBytes, pyFromHex, toHex } from './bytes.js';
import { ProtocolError } from './cbor.js';
import { ANCHOR, BLOCK, TX } from './chain.js';
import { CONSORTIUM_CHECKS, GenesisError, VERSION as CONSORTIUM_VERSION, loadGenesis,
  verifyAnchor } from './consortium.js';
import { parse, verify } from './cose.js';
import { PublicKey } from './keys.js';
import { MerkleError, leafHash, verifyInclusion } from './merkle.js';
import { CHECKPOINT, ENROLLMENT, READING } from './meter.js';
import { repr } from './pyfmt.js';
import { FormatError, SHAPE, SHAPE_CONSORTIUM, bundleVersion, loadJson, readFields } from './shape.js';

// [check name, what it establishes], in the order verify runs them (tools.audit.CHECKS)
export const CHECKS = [
  ['format', 'the bundle has every field and no other, as hex, hashes and integers of the ' +
    'right size (a failure is an input error: exit 2)'],
  ['device_id', 'the meter id is the id of device_pub'],
  ['reading_signature', 'the reading is a type-1 message signed by device_pub'],
  ['fog_id', 'the checkpoint is signed by the id of fog_pub'],
  ['enrollment', 'a type-8 decision signed by the fog enrolled this meter and key as active'],
  ['enrollment_order', 'the enrollment entry precedes the reading in the log'],
  ['checkpoint_signature', 'the checkpoint is a type-6 message signed by fog_pub'],
  ['tree_size', "tree_size is the checkpoint's size"],
  ['reading_inclusion', "the reading is entry leaf_index of the checkpoint's tree"],
  ['enrollment_inclusion', 'the enrollment decision is in the same tree'],
  ['anchor_signature', 'the anchor is a type-12 anchor transaction signed by fog_pub'],
  ['anchor_head', "the anchor's newest checkpoint is this checkpoint"],
  ['block_signature', 'the block header is a type-13 message signed by a trusted key'],
  ['block_height', 'the block header has the bundle\'s block height'],
  ['chain_id', 'transaction and block belong to the same chain'],
  ['tx_inclusion', 'the anchor is transaction tx_index of the sealed block'],
];

/** The checks of a bundle of this version: the sealer's (1) or the consortium's (2). */
export function checksOf(version) {
  if (version !== CONSORTIUM_VERSION) return CHECKS;
  const cut = CHECKS.findIndex(([name]) => name === 'block_signature');
  return CHECKS.slice(0, cut).concat(CONSORTIUM_CHECKS);
}

class CheckFailed extends Error {
  constructor(check, detail) {
    super(`${check}: ${detail}`);
    this.check = check;
    this.detail = detail;
  }
}

/** The verdict so far: which checks passed, and the one that failed. */
class Run {
  constructor() {
    this.list = CHECKS;
    this.passed = new Set();
  }

  pass(name) {
    this.passed.add(name);
  }

  fail(name, detail) {
    throw new CheckFailed(name, detail);
  }

  check(name, ok, detail) {
    if (!ok) this.fail(name, detail);
  }

  result(version, failed, summary) {
    const checks = this.list.map(([name, what]) => {
      const status = failed !== null && failed.check === name ? 'fail'
        : this.passed.has(name) ? 'pass' : 'not_run';
      return { name, what, status, detail: status === 'fail' ? failed.detail : '' };
    });
    return { ok: failed === null, version, checks, summary };
  }
}

function parsed(run, name, raw) {
  try {
    return parse(raw, { schema: false });
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    return run.fail(name, `${e.reason}: ${e.message}`);
  }
}

function signed(run, name, raw, key, type) {
  let m;
  try {
    m = verify(raw, key);
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    run.fail(name, `${e.reason}: ${e.message}`);
  }
  run.check(name, m.type === type, `message type ${m.type}, expected ${type}`);
  return m.fields;
}

function proof(run, name, fn) {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof MerkleError)) throw e;
    run.fail(name, e.message);
  }
}

/** An integer for JSON: a number when exact, else its decimal text. */
function jsonInt(n) {
  return n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n.toString();
}

/** The trusted dispatch keys (hex text or bytes), as the CLI's --trust reads them. */
function trustedKeys(trusted) {
  return trusted.map((t) => {
    const raw = isBytes(t) ? t : typeof t === 'string' ? pyFromHex(t.trim()) : null;
    if (raw === null) throw new FormatError(`--trust: ${repr(t)} is not a key in hex`);
    try {
      return new PublicKey(raw);
    } catch (e) {
      throw new FormatError(`--trust: ${e.message}`);
    }
  });
}

function readGenesis(genesis) {
  try {
    return loadGenesis(loadJson(genesis));
  } catch (e) {
    if (e instanceof GenesisError) throw new FormatError(e.message);
    if (e instanceof FormatError) throw new FormatError(`the validators' genesis.json: ${e.message}`);
    throw e;
  }
}

// long: every check of a bundle in the order the Python evaluates them
function checkBundle(run, doc, trusted, genesis) {
  const version = bundleVersion(doc);
  run.list = checksOf(version);
  if (version === CONSORTIUM_VERSION && genesis === null) {
    throw new FormatError("a consortium's bundle (version 2) is checked against the network's " +
      'genesis.json: give --validators');
  }
  if (version === 1 && !trusted.length) {
    throw new FormatError("an embedded chain's bundle (version 1) is checked against the " +
      'dispatch key: give --trust');
  }
  const v = readFields(doc, version === 1 ? SHAPE : SHAPE_CONSORTIUM);
  const [reading, enrRaw, enrIndex] = [v.reading, v['enrollment.entry'], v['enrollment.leaf_index']];
  const [leafIndex, treeSize, cpRaw] = [v.leaf_index, v.tree_size, v.checkpoint];
  const [blockHeight, txRaw] = [v['anchor.block_height'], v['anchor.transaction']];
  let devPub;
  let fogPub;
  try {
    devPub = new PublicKey(v.device_pub);
    fogPub = new PublicKey(v.fog_pub);
  } catch (e) {
    throw new FormatError(`a public key is not a P-256 point: ${e.message}`);
  }
  run.pass('format');

  const kid = parsed(run, 'reading_signature', reading).kid;
  run.check('device_id', equal(kid, devPub.id),
    `reading is from meter ${toHex(kid)}, device_pub is meter ${devPub.idHex}`);
  run.pass('device_id');
  const rf = signed(run, 'reading_signature', reading, devPub, READING);
  run.pass('reading_signature');
  const cpKid = parsed(run, 'checkpoint_signature', cpRaw).kid;
  run.check('fog_id', equal(cpKid, fogPub.id),
    `checkpoint is signed by ${toHex(cpKid)}, fog_pub is ${fogPub.idHex}`);
  run.pass('fog_id');
  const ef = signed(run, 'enrollment', enrRaw, fogPub, ENROLLMENT);
  run.check('enrollment', equal(ef.get(1n), devPub.id) && equal(ef.get(10n), devPub.raw),
    'the decision names another meter or key');
  run.check('enrollment', ef.get(18n) === 'active',
    `the decision says ${repr(ef.get(18n))}, not 'active'`);
  run.pass('enrollment');
  run.check('enrollment_order', enrIndex < leafIndex,
    `enrollment is entry ${enrIndex}, the reading entry ${leafIndex}`);
  run.pass('enrollment_order');
  const cf = signed(run, 'checkpoint_signature', cpRaw, fogPub, CHECKPOINT);
  run.pass('checkpoint_signature');
  run.check('tree_size', cf.get(3n) === treeSize,
    `checkpoint size is ${cf.get(3n)}, bundle says ${treeSize}`);
  run.pass('tree_size');
  proof(run, 'reading_inclusion', () => verifyInclusion(leafHash(reading), leafIndex, treeSize,
    v.inclusion_path, cf.get(4n)));
  run.pass('reading_inclusion');
  proof(run, 'enrollment_inclusion', () => verifyInclusion(leafHash(enrRaw), enrIndex, treeSize,
    v['enrollment.inclusion_path'], cf.get(4n)));
  run.pass('enrollment_inclusion');
  const tf = signed(run, 'anchor_signature', txRaw, fogPub, TX);
  run.check('anchor_signature', tf.get(3n) === ANCHOR, `transaction kind is ${repr(tf.get(3n))}`);
  run.pass('anchor_signature');
  const carried = tf.get(4n).get(1n);
  run.check('anchor_head', equal(carried[carried.length - 1], cpRaw),
    'the checkpoint is not the newest one the anchor carries');
  run.pass('anchor_head');
  const done = (height, sealer, engine) => ({
    dev: devPub.idHex, seq: jsonInt(rf.get(2n)), t: jsonInt(rf.get(3n)), imp: jsonInt(rf.get(5n)),
    exp: jsonInt(rf.get(6n)), leaf_index: jsonInt(leafIndex), tree_size: jsonInt(treeSize),
    fog: fogPub.idHex, checkpoint_height: jsonInt(cf.get(2n)), block_height: jsonInt(height),
    sealer, engine });
  if (genesis !== null && version === CONSORTIUM_VERSION) {
    const c = verifyAnchor(v, tf.get(6n), genesis, run);
    return done(blockHeight, c.signers, 'cometbft');
  }

  const headerRaw = v['anchor.block_header'];
  const [txIndex, txPath] = [v['anchor.tx_index'], v['anchor.tx_path']];
  const hm = parsed(run, 'block_signature', headerRaw);
  const key = trusted.find((k) => equal(k.id, hm.kid));
  run.check('block_signature', key !== undefined,
    `block sealed by ${toHex(hm.kid)}, which is not a trusted key`);
  const hf = signed(run, 'block_signature', headerRaw, key, BLOCK);
  run.check('block_signature', equal(v['anchor.sealer_signature'], hm.signature),
    "sealer_signature is not the header's signature");
  run.pass('block_signature');
  run.check('block_height', hf.get(2n) === blockHeight,
    `header is block ${hf.get(2n)}, bundle says ${blockHeight}`);
  run.pass('block_height');
  run.check('chain_id', equal(tf.get(6n), hf.get(7n)),
    'the transaction names another chain than the block');
  run.pass('chain_id');
  run.check('tx_inclusion', txIndex < hf.get(5n),
    `tx_index ${txIndex} but the block holds ${hf.get(5n)}`);
  proof(run, 'tx_inclusion', () => verifyInclusion(leafHash(txRaw), txIndex, hf.get(5n), txPath,
    hf.get(4n)));
  run.pass('tx_inclusion');
  return done(blockHeight, toHex(hm.kid), 'embedded');
}

/**
 * Verify a proof bundle offline. `input` is the bundle file's bytes (Uint8Array), its
 * text, or an already parsed object (then JSON's int/float distinction is lost);
 * `trusted` the dispatch chain's public keys (65-byte hex or bytes) for a version-1
 * bundle; `genesis` the consortium's genesis.json (parsed, text or bytes) for version 2.
 * Returns {ok, version, checks: [{name, what, status, detail}], summary}; never throws.
 */
export function verifyBundle(input, options = {}) {
  const run = new Run();
  let version = null;
  try {
    const { trusted = [], genesis = null } = options ?? {};
    const keys = trustedKeys(Array.isArray(trusted) ? trusted : [trusted]);
    const gen = genesis === null || genesis === undefined ? null : readGenesis(genesis);
    const doc = loadJson(input);
    try {
      version = bundleVersion(doc);
    } catch { /* reported by checkBundle, as "format" */ }
    const summary = checkBundle(run, doc, keys, gen);
    return run.result(version, null, summary);
  } catch (e) {
    if (e instanceof CheckFailed) return run.result(version, e, null);
    if (e instanceof FormatError) return run.result(version, new CheckFailed('format', e.message), null);
    // a bug or an unforeseen input: fail the first check not yet passed, saying so
    const [at] = run.list.find(([name]) => !run.passed.has(name)) ?? run.list[run.list.length - 1];
    return run.result(version, new CheckFailed(at, `internal error: ${e && e.message}`), null);
  }
}
