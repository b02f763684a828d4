// The audit page: a proof bundle checked in the browser, every check of `tools.audit
// verify` shown pass or fail. A pasted or uploaded bundle never leaves the page (the page's
// CSP allows no other origin, and this code sends it nowhere); only "fetch the bundle of a
// reading" asks this fog for one, with the auditor token.

import { get, getText } from "./lib/api.js";
import { $, badge, clear, el, energy, notice, table } from "./lib/dom.js";
import { startPage } from "./lib/shell.js";
import { when } from "./lib/time.js";
import { verifyBundle } from "./verify/index.js";

const STATUS = { pass: ["pass", "ok"], fail: ["FAIL", "bad"], not_run: ["not run", "muted"] };

// which service serves this page: the chain answers /v1/head, a fog /v1/checkpoint
async function whoServes() {
  try {
    const head = await get("/v1/head");
    return { service: "chain", head };
  } catch {
    return { service: "fog", head: null };
  }
}

// The trust the page offers to fill in: the key or validator set this chain announces.
// An auditor who has the key from elsewhere replaces it: the check is only as good as the
// trust, and the page says where it came from.
async function announcedTrust(serving) {
  if (serving.service !== "chain") return { trusted: "", genesis: null };
  const v = await get("/v1/validators").catch(() => null);
  if (v && v.engine === "cometbft" && v.genesis) return { trusted: "", genesis: v.genesis };
  return { trusted: serving.head.sealer_pub, genesis: null };
}

function showResult(out, result) {
  clear(out);
  const head = result.ok
    ? notice(`The bundle verifies: every check passed (${result.checks.length}).`, "ok")
    : notice(`The bundle does NOT verify: check ${result.checks.find((c) => c.status === "fail")?.name} failed.`, "error");
  out.append(head, table([
    ["check", (c) => c.name],
    ["result", (c) => badge(...STATUS[c.status])],
    ["what it establishes", (c) => c.what],
    ["detail", (c) => c.detail || ""],
  ], result.checks, { key: (c) => c.name }));
  const s = result.summary;
  if (s) {
    out.append(el("h3", {}, "The reading"), table([
      ["meter", () => s.dev], ["seq", () => s.seq], ["interval end", () => when(s.t)],
      ["import", () => energy(s.imp)], ["export", () => energy(s.exp)],
      ["log entry", () => `${s.leaf_index} of ${s.tree_size}`], ["fog", () => s.fog],
      ["checkpoint", () => s.checkpoint_height], ["block", () => s.block_height],
      ["committed by", () => s.sealer], ["engine", () => s.engine],
    ], [s]));
  }
  out.dataset.result = result.ok ? "pass" : "fail";
}

// The bundle goes to the verifier as text, not parsed here: JSON.parse cannot tell 1.0
// from 1 and rounds integers above 2^53, and the format check must see what the CLI sees.
function verifyText(text, trust, out) {
  const keys = trust.keys.value.split(/[\s,]+/).filter(Boolean);
  const genesis = trust.genesis.value.trim() ? trust.genesis.value : null;
  showResult(out, verifyBundle(text, { trusted: keys, genesis }));
}

function auditSection(serving, announced) {
  const out = el("div", { id: "result", "aria-live": "polite" });
  const text = el("textarea", { id: "bundle", rows: 10, spellcheck: "false",
    placeholder: "paste a proof bundle (JSON), or choose its file" });
  const file = el("input", { type: "file", id: "bundle-file", accept: ".json,application/json" });
  file.addEventListener("change", async () => {
    if (file.files.length) text.value = await file.files[0].text();
  });
  const trust = {
    keys: el("input", { id: "trusted", size: 70, value: announced.trusted,
      placeholder: "trusted dispatch-chain key(s), hex" }),
    genesis: el("textarea", { id: "genesis", rows: 3, spellcheck: "false",
      placeholder: "a consortium's validator set (genesis.json), for a version-2 bundle" }),
  };
  if (announced.genesis) trust.genesis.value = JSON.stringify(announced.genesis);
  const origin = announced.trusted || announced.genesis
    ? "Filled in with what this chain announces; an auditor replaces it with the key or validator set they got from the chain's operators."
    : "";
  const form = el("form", { id: "verify-form", onsubmit: (ev) => {
    ev.preventDefault();
    try {
      verifyText(text.value, trust, out);
    } catch (e) { // a fault of the page's own code: said, never a silent nothing
      clear(out).append(notice(`the verifier failed: ${e.message}`, "error"));
      out.dataset.result = "error";
    }
  } }, text, el("div", {}, file),
  el("label", {}, "Trusted key(s) ", trust.keys), el("label", {}, "Validator set ", trust.genesis),
  el("p", { class: "muted" }, origin),
  el("button", { type: "submit", id: "run-verify" }, "Verify in this browser"));
  const parts = [form];
  if (serving.service === "fog") {
    const dev = el("input", { id: "pick-dev", size: 18, placeholder: "meter id (hex)" });
    const seq = el("input", { id: "pick-seq", size: 8, type: "number", min: 0, placeholder: "seq" });
    const said = el("span", { class: "status" });
    parts.unshift(el("form", { id: "pick-form", onsubmit: async (ev) => {
      ev.preventDefault();
      clear(said);
      try {
        text.value = await getText("/v1/bundle", { dev: dev.value.trim(), seq: seq.value });
      } catch (e) {
        said.append(notice(e.message, "error"));
      }
    } }, el("label", {}, "Fetch the bundle of a reading: ", dev, seq),
    el("button", { type: "submit", id: "pick" }, "Fetch (auditor token)"), said));
  }
  return { parts, out };
}

async function main() {
  const serving = await whoServes();
  const announced = await announcedTrust(serving);
  const { parts, out } = auditSection(serving, announced);
  startPage({
    service: serving.service, title: "MeterLedger audit",
    links: [["Dashboard", "/ui/"]],
    sections: [{ id: "verify", title: "Verify a proof bundle", every: 0,
      init: (body) => body.append(...parts, out), load: async () => {} }],
  });
  $("body").dataset.ready = "1";
}

main();
