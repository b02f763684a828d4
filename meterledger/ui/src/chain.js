// The dispatch chain's dashboard: blocks and transactions, participants, anchors per fog
// with their lag, the validators, rule sets, suggestions (approved here by a dispatcher
// with the dispatch token) and instructions with their execution reports. Everything is
// the chain's public API but the approval.

import { get, post } from "./lib/api.js";
import { $, badge, clear, el, notice, short, table, updateTable } from "./lib/dom.js";
import { LinePlot } from "./lib/plot.js";
import { failure, startPage } from "./lib/shell.js";
import { when } from "./lib/time.js";

function cards(items) {
  return el("div", { class: "cards" }, items.map(([label, value, id]) =>
    el("div", { class: "card", id }, el("div", { class: "n" }, value), el("div", { class: "l" }, label))));
}

const pretty = (doc) => el("pre", {}, JSON.stringify(doc, null, 1));

// -- overview: the head, the validators, commit latency -------------------------------------
const latency = new LinePlot("Commit latency (submitted to committed)", ["ms"], { unit: "ms" });
const overview = {
  id: "overview", title: "Overview",
  init(body) {
    body.append(el("div", { class: "head" }), el("div", { class: "validators" }), latency.node);
  },
  async load(body) {
    const [head, vals, lat] = await Promise.all([get("/v1/head"), get("/v1/validators"),
      get("/v1/latency", { limit: 200 })]);
    clear($(".head", body)).append(cards([
      ["height", head.height, "head-height"], ["engine", head.engine],
      ["chain", short(head.chain)], ["state root", short(head.state_root)],
    ]));
    const v = clear($(".validators", body));
    if (vals.engine === "cometbft") {
      v.append(el("h3", {}, "Validators"), table([
        ["name", (x) => x.name], ["address", (x) => short(x.address)], ["power", (x) => x.power],
        ["up", (x) => badge(x.up ? "up" : "down", x.up ? "ok" : "bad")],
        ["height", (x) => x.height ?? ""],
        ["signed (last commits, newest first)", (x) => signedRow(vals.commits, x.address)],
      ], vals.validators, { key: (x) => x.name }));
    } else {
      v.append(el("h3", {}, "Sealer"), table([
        ["name", () => vals.sealer.name], ["id", () => vals.sealer.id],
        ["key", () => short(vals.sealer.pub, 12)], ["height", () => vals.height],
      ], [vals]));
    }
    const pts = [...lat.latencies].reverse();
    latency.update([pts.map((p) => p.at), pts.map((p) => p.ms)]);
  },
};

function signedRow(commits, address) {
  return el("span", { class: "signed" }, (commits || []).map((c) =>
    badge(c.signers.includes(address) ? "✓" : "·", c.signers.includes(address) ? "ok" : "bad")));
}

// -- blocks and transactions ------------------------------------------------------------------
const blocks = {
  id: "blocks", title: "Blocks",
  init(body) {
    const input = el("input", { id: "tx-search", size: 66, placeholder: "transaction digest (64 hex)" });
    const found = el("div", { id: "tx-found" });
    body.append(el("form", { class: "inline", id: "tx-form", onsubmit: async (ev) => {
      ev.preventDefault();
      clear(found);
      try {
        const tx = await get(`/v1/tx/${encodeURIComponent(input.value.trim())}`);
        found.append(el("h3", {}, `Transaction in block ${tx.height}, index ${tx.index}`),
          pretty(tx.decoded ?? tx));
      } catch (e) {
        found.append(failure(e));
      }
    } }, input, el("button", { type: "submit" }, "Find transaction")), found,
    el("div", { class: "list" }), el("div", { id: "block-detail" }));
  },
  async load(body) {
    const { blocks: rows } = await get("/v1/blocks", { limit: 50 });
    clear($(".list", body)).append(table([
      ["height", (b) => el("a", { href: "#blocks", onclick: () => showBlock(b.height, body) }, b.height)],
      ["time", (b) => when(b.time)], ["transactions", (b) => b.ntx],
      ["kinds", (b) => Object.entries(b.kinds || {}).map(([k, n]) => `${k} ${n}`).join(", ")],
      ["by", (b) => b.proposer_name || short(b.proposer)], ["hash", (b) => short(b.hash, 12)],
    ], rows, { key: (b) => String(b.height) }));
  },
};

async function showBlock(height, body) {
  const out = clear($("#block-detail", body));
  try {
    const b = await get(`/v1/blocks/${height}`);
    out.append(el("h3", {}, `Block ${height}`), pretty(b.decoded ?? b));
  } catch (e) {
    out.append(failure(e));
  }
}

// -- participants -----------------------------------------------------------------------------
const participants = {
  id: "participants", title: "Participants",
  async load(body) {
    const { participants: rows } = await get("/v1/participants");
    clear(body).append(table([
      ["name", (p) => p.name], ["role", (p) => p.role], ["id", (p) => p.id],
      ["key", (p) => short(p.pub, 12)], ["last nonce", (p) => p.nonce],
    ], rows, { key: (p) => p.id }));
  },
};

// -- anchors per fog, with their lag ----------------------------------------------------------
const lagPlots = new Map();
const anchors = {
  id: "anchors", title: "Anchors",
  init(body) {
    body.append(el("div", { class: "list" }), el("div", { class: "grid plots" }));
  },
  async load(body) {
    const { fogs } = await get("/v1/fogs", { limit: 96 });
    clear($(".list", body)).append(table([
      ["fog", (f) => f.name ? `${f.name} (${f.id})` : f.id], ["anchors", (f) => f.anchors],
      ["newest", (f) => f.newest ? `block ${f.newest.height}, ${when(f.newest.time)}` : "none"],
      ["log size", (f) => f.newest?.size ?? ""],
      ["lag of the newest", (f) => (f.newest ? `${f.newest.lag} s` : "")],
    ], fogs, { key: (f) => f.id }));
    const grid = $(".plots", body);
    for (const f of fogs) {
      let p = lagPlots.get(f.id);
      if (!p) {
        p = new LinePlot(`Anchor lag of fog ${f.name || f.id} (block time − checkpoint time)`,
          ["lag s"], { unit: "s" });
        p.node.dataset.fog = f.id;
        lagPlots.set(f.id, p);
        grid.append(p.node);
      }
      p.update([f.series.map((a) => a.time), f.series.map((a) => a.lag)]);
    }
  },
};

// -- dispatch: rules, suggestions, instructions -----------------------------------------------
async function decide(id, action, said) {
  clear(said);
  try {
    const r = await post(`/v1/suggestions/${id}/${action}`);
    said.append(notice(action === "approve"
      ? `approved: instruction ${short(r.instruction, 12)} in block ${r.height}` : "dismissed", "ok"));
  } catch (e) {
    said.append(failure(e));
  }
}

const dispatch = {
  id: "dispatch", title: "Dispatch",
  init(body) {
    body.append(el("div", { id: "decision", "aria-live": "polite" }), el("h3", {}, "Suggestions"),
      el("div", { class: "suggestions" }), el("h3", {}, "Instructions and execution reports"),
      el("div", { class: "instructions" }), el("h3", {}, "Rule sets"), el("div", { class: "rules" }));
  },
  async load(body) {
    const [sug, ins, rules] = await Promise.all([get("/v1/suggestions", { limit: 50 }),
      get("/v1/dispatch", { limit: 50 }), get("/v1/rules")]);
    const said = $("#decision", body);
    updateTable($(".suggestions", body), [
      ["state", (s) => badge(s.state, s.state === "open" ? "warn" : s.state === "approved" ? "ok" : "")],
      ["feeder", (s) => s.feeder], ["rule", (s) => `${s.rules_name}/${s.rule}`],
      ["triggered by", (s) => el("span", {}, `${s.metric}: `, (s.aggregates || []).map((a) =>
        el("div", { title: `aggregate ${a.digest}, anchored in block ${a.height}` },
          `${a.value} at ${when(a.ivl)} (block ${a.height})`)))],
      ["suggests", (s) => `${s.op} ${JSON.stringify(s.args)}`], ["why", (s) => s.why],
      ["", (s) => s.state !== "open" ? (s.instruction ? short(s.instruction, 10) : "") : el("span", {},
        el("button", { class: "approve", onclick: () => decide(s.id, "approve", said) }, "Approve"), " ",
        el("button", { class: "dismiss", onclick: () => decide(s.id, "dismiss", said) }, "Dismiss"))],
    ], [...sug.suggestions].reverse(), { key: (s) => s.id, empty: "no suggestions" }); // newest first
    clear($(".instructions", body)).append(table([
      ["block", (i) => i.height], ["time", (i) => when(i.time)], ["fog", (i) => short(i.fog)],
      ["instruction", (i) => pretty(i.decoded?.body ?? i.decoded ?? {})],
      ["reports", (i) => i.reports?.length
        ? i.reports.map((r) => pretty(r.decoded?.body ?? r.decoded ?? {})) : badge("no report yet", "warn")],
    ], ins.instructions, { key: (i) => i.digest, empty: "no instructions" }));
    clear($(".rules", body)).append(table([
      ["name", (r) => r.name], ["version", (r) => r.version], ["block", (r) => r.height],
      ["text", (r) => el("pre", {}, r.text)],
    ], rules.rules, { key: (r) => `${r.name}/${r.version}` }));
  },
};

startPage({
  service: "chain", title: "MeterLedger dispatch chain",
  links: [["Audit a bundle", "/ui/audit.html"], ["API", "/openapi.json"]],
  sections: [overview, blocks, participants, anchors, dispatch],
});
document.body.dataset.ready = "1";
