// The browser verifier (meterledger/ui/src/verify) from the command line, for the tests:
//   node tests/ui/verify_bundle.mjs BUNDLE.json... [--trust HEX]... [--validators GENESIS.json]
// prints verifyBundle's result as JSON, one line per bundle (several bundles in one run
// spare the tests a Node start per case). Run it from the repository root, so that the
// bare '@noble/...' imports resolve from its node_modules. Exit 0 all verified, 1 one or
// more rejected, 2 usage.
import { readFileSync } from 'node:fs';
import { verifyBundle } from '../../meterledger/ui/src/verify/index.js';

function usage(msg) {
  process.stderr.write(`${msg}\nusage: verify_bundle.mjs BUNDLE.json... [--trust HEX]... ` +
    '[--validators GENESIS.json]\n');
  process.exit(2);
}

const args = process.argv.slice(2);
const trusted = [];
const files = [];
let genesis = null;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--trust' || args[i] === '--validators') {
    if (i + 1 >= args.length) usage(`${args[i]} needs a value`);
    if (args[i] === '--trust') trusted.push(args[++i]);
    else genesis = new Uint8Array(readFileSync(args[++i]));
  } else {
    files.push(args[i]);
  }
}
if (!files.length) usage('no bundle given');
let allOk = true;
for (const file of files) {
  // the file's bytes, as the page gets an upload: JSON's own rules (1.0 is not 1) apply
  const result = verifyBundle(new Uint8Array(readFileSync(file)), { trusted, genesis });
  allOk &&= result.ok;
  process.stdout.write(JSON.stringify(result) + '\n');
}
process.exit(allOk ? 0 : 1);
