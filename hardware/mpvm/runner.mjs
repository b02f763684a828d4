#!/usr/bin/env node
// Run a Python script inside the real MicroPython VM (the WebAssembly port, npm package
// @micropython/micropython-webassembly-pyscript) under Node.
//
//   node hardware/mpvm/runner.mjs [--firmware DIR] [--heap BYTES]
//                                 [--file VMPATH=HOSTPATH ...] SCRIPT.py|-
//
// * --firmware DIR  copies the host tree DIR (.py plus small .json/.bin data files, no
//                   __pycache__) to /fw in the VM's in-memory filesystem and puts "/fw"
//                   first on sys.path, so `from core import cbor` works as on a board.
// * --file V=H      copies host file H to VM path V (parent directories are created);
//                   may be repeated.
// * --heap BYTES    initial MicroPython GC heap (default 2 MiB). Accepts a k/m suffix.
// * /flash is created (empty, writable) before the script runs.
// * VM stdout/stderr go to this process's stdout/stderr, line buffered; a trailing
//   partial line is flushed at the end (and before a traceback is printed).
// * An uncaught Python exception prints the MicroPython traceback to stderr and exits 1;
//   SystemExit(n) exits n (SystemExit() / SystemExit(None) exits 0). Bad usage exits 2.
//
// About --heap (checked on 1.27.0, pyscript build): the `heapsize` option of
// loadMicroPython is only the size of the *first* GC heap area. This build has
// MICROPY_GC_SPLIT_HEAP_AUTO: when a collection cannot satisfy an allocation the GC
// mallocs another area (up to "max new split" = 128 MiB each) and the wasm memory grows
// up to 2 GiB, so --heap does NOT cap memory and a MemoryError will practically never
// occur. Consequences:
//   - gc.mem_free() = free bytes in the current areas + 134217728 (the max new split);
//     with --heap 65536 it reports ~134 MB.
//   - micropython.mem_info() prints "GC: total: ..., used: ..., free: ..., max new split".
//   - To show code fits a device budget, measure gc.mem_alloc() (peak after gc.collect())
//     and compare it with the budget yourself.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, "..", "..");
const PKG = "@micropython/micropython-webassembly-pyscript";
const DATA_EXTS = new Set([".py", ".json", ".bin"]);
const MAX_DATA_FILE = 256 * 1024; // non-.py files larger than this are skipped
const DEFAULT_HEAP = 2 * 1024 * 1024;

function usage(msg) {
  if (msg) process.stderr.write(`runner.mjs: ${msg}\n`);
  process.stderr.write(
    "usage: node runner.mjs [--firmware DIR] [--heap BYTES] [--file VMPATH=HOSTPATH ...] SCRIPT.py|-\n",
  );
  process.exit(2);
}

function parseSize(text) {
  const m = /^(\d+)([kKmM]?)$/.exec(text);
  if (!m) usage(`bad heap size: ${text}`);
  const mult = { "": 1, k: 1024, m: 1024 * 1024 }[m[2].toLowerCase()];
  return parseInt(m[1], 10) * mult;
}

function parseArgs(argv) {
  const opts = { firmware: null, heap: DEFAULT_HEAP, files: [], script: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--firmware") opts.firmware = next();
    else if (a === "--heap") opts.heap = parseSize(next());
    else if (a === "--file") {
      const spec = next();
      const eq = spec.indexOf("=");
      if (eq <= 0 || eq === spec.length - 1) usage(`--file wants VMPATH=HOSTPATH, got ${spec}`);
      const vmPath = spec.slice(0, eq);
      if (!vmPath.startsWith("/")) usage(`VM path must be absolute: ${vmPath}`);
      opts.files.push([vmPath, spec.slice(eq + 1)]);
    } else if (a === "-h" || a === "--help") usage();
    else if (a === "--") {
      if (i + 1 < argv.length) opts.script = argv[++i];
      if (i + 1 < argv.length) usage("too many arguments");
    } else if (a.startsWith("--")) usage(`unknown option ${a}`);
    else if (opts.script === null) opts.script = a;
    else usage("too many arguments");
  }
  if (opts.script === null) usage("no script given");
  return opts;
}

// Resolve the npm package from the repo's node_modules whatever the cwd is, falling back
// to Node's normal resolution (NODE_PATH, parent directories).
function resolvePackage() {
  const bases = [path.join(REPO_ROOT, "package.json"), path.join(process.cwd(), "noop.js")];
  for (const base of bases) {
    try {
      return createRequire(base).resolve(PKG);
    } catch {
      // try the next base
    }
  }
  process.stderr.write(
    `runner.mjs: npm package ${PKG} not found in ${path.join(REPO_ROOT, "node_modules")};` +
      " run `make setup` (or `npm ci` in the repo root)\n",
  );
  process.exit(3);
}

// Line-buffered byte sink. We do the buffering ourselves on raw bytes (the loader's own
// `linebuffer` decodes each line to a string and silently drops a trailing partial line),
// so output is byte exact and flush() can emit the remainder.
class LineSink {
  constructor(stream) {
    this.stream = stream;
    this.buf = Buffer.alloc(4096);
    this.len = 0;
  }
  put(bytes) {
    for (const c of bytes) {
      if (this.len === this.buf.length) {
        // a very long line: don't hold it all, just pass it through
        this.flush();
      }
      this.buf[this.len++] = c;
      if (c === 10) this.flush();
    }
  }
  flush() {
    if (this.len > 0) {
      this.stream.write(Buffer.from(this.buf.subarray(0, this.len)));
      this.len = 0;
    }
  }
}

function vmMkdirs(FS, dir) {
  if (dir && dir !== "/") FS.mkdirTree(dir);
}

function copyTree(FS, hostDir, vmDir) {
  vmMkdirs(FS, vmDir);
  const entries = fs.readdirSync(hostDir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const ent of entries) {
    if (ent.name === "__pycache__" || ent.name.startsWith(".")) continue;
    const host = path.join(hostDir, ent.name);
    const vm = `${vmDir}/${ent.name}`;
    let st;
    try {
      st = fs.statSync(host); // follows symlinks
    } catch {
      continue; // dangling symlink
    }
    if (st.isDirectory()) copyTree(FS, host, vm);
    else if (st.isFile()) {
      const ext = path.extname(ent.name).toLowerCase();
      if (!DATA_EXTS.has(ext)) continue;
      if (ext !== ".py" && st.size > MAX_DATA_FILE) continue;
      FS.writeFile(vm, fs.readFileSync(host));
    }
  }
}

function readScript(spec) {
  try {
    return spec === "-" ? fs.readFileSync(0, "utf8") : fs.readFileSync(spec, "utf8");
  } catch (e) {
    usage(`cannot read script ${spec}: ${e.message}`);
  }
}

// SystemExit's traceback text ends with "SystemExit: <arg>"; map it to an exit status.
function systemExitCode(message, stderrSink) {
  const m = /SystemExit:(?: (.*))?\s*$/.exec(message);
  const arg = m && m[1] !== undefined ? m[1].trim() : "";
  if (arg === "" || arg === "None") return 0;
  if (/^-?\d+$/.test(arg)) return parseInt(arg, 10) & 0xff;
  stderrSink.put(Buffer.from(arg + "\n")); // sys.exit("message") prints it, like CPython
  stderrSink.flush();
  return 1;
}

// A closed pipe (e.g. `| head`) ends the run quietly, like a process killed by SIGPIPE.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (e) => {
    if (e && e.code === "EPIPE") process.exit(141);
    throw e;
  });
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const code = readScript(opts.script);
  const { loadMicroPython } = await import(pathToFileURL(resolvePackage()).href);

  const out = new LineSink(process.stdout);
  const err = new LineSink(process.stderr);
  const mp = await loadMicroPython({
    heapsize: opts.heap,
    linebuffer: false, // we buffer bytes ourselves, see LineSink
    stdout: (bytes) => out.put(bytes),
    stderr: (bytes) => err.put(bytes),
  });
  const FS = mp.FS;

  vmMkdirs(FS, "/flash");
  if (opts.firmware !== null) {
    const dir = path.resolve(opts.firmware);
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
      usage(`firmware directory not found: ${dir}`);
    }
    copyTree(FS, dir, "/fw");
  }
  for (const [vmPath, hostPath] of opts.files) {
    let data;
    try {
      data = fs.readFileSync(hostPath);
    } catch (e) {
      usage(`cannot read --file ${hostPath}: ${e.message}`);
    }
    vmMkdirs(FS, path.posix.dirname(vmPath));
    FS.writeFile(vmPath, data);
  }

  let status = 0;
  try {
    if (opts.firmware !== null) mp.runPython("import sys\nsys.path.insert(0, '/fw')\ndel sys");
    // A line "#--- next call ---#" splits the script into separate runPython calls, which
    // share globals. This port's GC only reclaims memory between calls (inside a call it
    // cannot scan the WebAssembly stack for roots), so heap measurements use this seam.
    for (const chunk of code.split(/^#--- next call ---#$/m)) mp.runPython(chunk);
  } catch (e) {
    out.flush();
    err.flush();
    if (!e || e.name !== "PythonError") throw e;
    if (e.type === "SystemExit") status = systemExitCode(String(e.message), err);
    else {
      let msg = String(e.message);
      if (!msg.endsWith("\n")) msg += "\n";
      process.stderr.write(msg);
      status = 1;
    }
  } finally {
    out.flush();
    err.flush();
  }
  // Let pending writes on pipes drain instead of process.exit().
  process.exitCode = status;
}

main().catch((e) => {
  process.stderr.write(`runner.mjs: internal error: ${e && e.stack ? e.stack : e}\n`);
  process.exitCode = 4;
});
