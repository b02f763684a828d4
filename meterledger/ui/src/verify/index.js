// The audit page's offline verifier (issue 16): paste or upload a proof bundle and see every
// check pass or fail in the browser, with nothing sent anywhere. Plain ES modules over
// @noble/curves and @noble/hashes, so Node imports them as they are (the tests) and esbuild
// bundles them for the page.
//
//   import { verifyBundle } from './verify/index.js';
//   const r = verifyBundle(fileBytesOrText, { trusted: [dispatchPubHex], genesis: null });
//   r.ok, r.version, r.checks[i].{name, what, status: 'pass'|'fail'|'not_run', detail},
//   r.summary: {dev, seq, t, imp, exp, leaf_index, tree_size, fog, checkpoint_height,
//               block_height, sealer, engine} or null
export { CHECKS, checksOf, verifyBundle } from './bundle.js';
export { CONSORTIUM_CHECKS } from './consortium.js';
export { MAX_BUNDLE } from './shape.js';
