// The fog node's dashboard: its meters (and enrollment of pending ones by an operator),
// feeders with their load curves and alerts, VEE, checkpoints and anchors, the RS485 bus,
// and what was rejected. Feeder aggregates and checkpoints are public; anything about one
// household's meter is the auditor tier, as on the API.

import { get, post } from "./lib/api.js";
import { $, badge, clear, el, energy, notice, short, table, updateTable } from "./lib/dom.js";
import { LinePlot } from "./lib/plot.js";
import { failure, startPage } from "./lib/shell.js";
import { when } from "./lib/time.js";

function cards(items) {
  return el("div", { class: "cards" }, items.map(([label, value, id]) =>
    el("div", { class: "card", id }, el("div", { class: "n" }, value), el("div", { class: "l" }, label))));
}

const STATE = { active: "ok", pending: "warn", revoked: "bad" };

// -- overview ---------------------------------------------------------------------------------
const overview = {
  id: "overview", title: "Overview",
  async load(body) {
    // a fog that has sealed nothing yet answers 404 for its checkpoint: shown, not an error
    const [cp, health, cps] = await Promise.all([
      get("/v1/checkpoint").catch((e) => { if (e.status === 404) return null; throw e; }),
      fetch("/healthz", { cache: "no-store" }).then((r) => r.json()),
      get("/v1/checkpoints", { limit: 1 })]);
    clear(body).append(cards([
      ["health", health.ok ? "ok" : `fault: ${health.storage?.fault}`, "health"],
      ["log entries", health.log_size, "log-size"], ["checkpoint", cp ? cp.height : 0, "cp-height"],
      ["anchored up to checkpoint", cps.anchored_height ?? "no chain", "anchored"],
    ]), cp ? table([["fog id", () => cp.fog_id], ["fog key", () => short(cp.fog_pub, 16)],
      ["checkpoint time", () => when(cp.t)], ["root", () => cp.root]], [cp])
      : notice("no checkpoint sealed yet"));
  },
};

// -- meters -----------------------------------------------------------------------------------
const curve = new LinePlot("Load curve of the selected meter", ["import Wh", "export Wh"], { unit: "Wh" });

async function showCurve(dev, body) {
  const said = clear($(".curve-said", body));
  try {
    const c = await get("/v1/curve", { dev, limit: 96 });
    const pts = [...c.points].sort((a, b) => a.ivl - b.ivl);
    curve.node.dataset.dev = dev;
    curve.update([pts.map((p) => p.ivl), pts.map((p) => p.imp), pts.map((p) => p.exp)]);
  } catch (e) {
    said.append(failure(e));
  }
}

async function enroll(pub, said) {
  clear(said);
  try {
    await post("/v1/enroll", { pub });
    said.append(notice(`enrollment of ${short(pub, 12)} queued: the fog logs the decision`, "ok"));
  } catch (e) {
    said.append(failure(e));
  }
}

const meters = {
  id: "meters", title: "Meters",
  init(body) {
    body.append(el("div", { class: "totals" }), el("div", { id: "enroll-said", "aria-live": "polite" }),
      el("h3", {}, "Waiting for enrollment"), el("div", { class: "pending" }),
      el("h3", {}, "Meters"), el("div", { class: "list" }), el("div", { class: "curve-said" }), curve.node);
  },
  async load(body) {
    // pending meters asked for apart: the first page of all meters (1,000 by id) may not
    // hold them on a big fog
    const [m, waiting] = await Promise.all([get("/v1/meters"), get("/v1/meters", { state: "pending" })]);
    clear($(".totals", body)).append(cards(Object.entries(m.totals).map(([k, v]) => [k, v, `total-${k}`])
      .concat([["quarantined messages", m.quarantined, "quarantined"]])));
    const said = $("#enroll-said", body);
    updateTable($(".pending", body), [
      ["meter", (p) => p.dev], ["key", (p) => short(p.pub, 12)],
      ["firmware", (p) => p.birth?.fw ?? ""], ["hardware", (p) => p.birth?.hw ?? ""],
      ["seen", (p) => when(p.last_seen)],
      ["", (p) => el("button", { class: "enroll", onclick: () => enroll(p.pub, said) }, "Enroll")],
    ], waiting.meters, { key: (p) => p.dev, empty: "no meter is waiting" });
    clear($(".list", body)).append(table([
      ["meter", (x) => el("a", { href: "#meters", onclick: () => showCurve(x.dev, body) }, x.dev)],
      ["state", (x) => badge(x.state, STATE[x.state])], ["last seen", (x) => when(x.last_seen)],
      ["last seq", (x) => x.last_seq], ["gaps", (x) => x.gaps], ["firmware", (x) => x.birth?.fw ?? ""],
      ["spool backlog (at its birth)", (x) => x.birth ? x.birth.backlog : ""],
      ["rejected", (x) => (x.rejected ? badge(x.rejected, "bad") : 0)],
    ], m.meters.filter((x) => x.state !== "pending"), { key: (x) => x.dev }));
  },
};

// -- feeders ----------------------------------------------------------------------------------
const feederPlots = new Map();
const feeders = {
  id: "feeders", title: "Feeders",
  init(body) {
    body.append(el("div", { class: "grid plots" }), el("h3", {}, "Alerts"), el("div", { class: "alerts" }));
  },
  async load(body) {
    const { feeders: rows } = await get("/v1/feeders", { limit: 96 });
    const grid = $(".plots", body);
    for (const f of rows) {
      let p = feederPlots.get(f.feeder);
      if (!p) {
        p = new LinePlot(`Feeder ${f.feeder}`, ["import Wh", "export Wh", "loss Wh"], { unit: "Wh" });
        p.node.dataset.feeder = f.feeder;
        feederPlots.set(f.feeder, p);
        grid.append(p.node);
      }
      const pts = [...f.points].sort((a, b) => a.ivl - b.ivl);
      p.update([pts.map((x) => x.ivl), pts.map((x) => x.imp), pts.map((x) => x.exp), pts.map((x) => x.loss)]);
      p.node.dataset.estimated = String(pts.filter((x) => x.includes_estimates).length);
    }
    // faults and alerts name meters: the auditor tier, so the curves stay public without it
    const alerts = $(".alerts", body);
    try {
      const a = await get("/v1/alerts", { limit: 50 });
      clear(alerts).append(el("h3", {}, "Faults"), table([
        ["kind", (x) => badge(x.kind, x.open ? "bad" : "warn")], ["feeder", (x) => x.feeder],
        ["from", (x) => when(x.start)], ["to", (x) => (x.end ? when(x.end) : "open")],
        ["meters", (x) => x.meters], ["detail", (x) => x.detail],
      ], a.faults, { empty: "no faults" }), el("h3", {}, "Alerts"), table([
        ["when", (x) => when(x.t)], ["kind", (x) => badge(x.kind, "warn")],
        ["meter", (x) => short(x.dev ?? "", 8)], ["detail", (x) => x.detail],
      ], a.alerts, { empty: "no alerts" }));
    } catch (e) {
      clear(alerts).append(failure(e));
    }
  },
};

// -- VEE --------------------------------------------------------------------------------------
const vee = {
  id: "vee", title: "VEE",
  async load(body) {
    const v = await get("/v1/vee", { limit: 100 });
    clear(body).append(el("h3", {}, "Findings"), table([
      ["meter", (x) => short(x.dev, 8)], ["seq", (x) => x.seq], ["interval end", (x) => when(x.t)],
      ["rule", (x) => x.rule], ["severity", (x) => badge(x.severity, x.severity === "error" ? "bad" : "warn")],
      ["detail", (x) => x.detail],
    ], v.findings, { key: (x) => String(x.id), empty: "no findings" }), el("h3", {}, "Estimates"), table([
      ["meter", (x) => short(x.dev, 8)], ["readings", (x) => `seq ${x.from_seq} to ${x.to_seq}`],
      ["from", (x) => when(x.start)], ["to", (x) => when(x.end)], ["method", (x) => x.method],
      ["import", (x) => energy(x.imp)], ["export", (x) => energy(x.exp)],
      ["", (x) => (x.superseded_by ? badge("superseded", "muted") : "")],
    ], v.estimates, { key: (x) => x.digest, empty: "no estimates" }));
  },
};

// -- checkpoints and anchors ------------------------------------------------------------------
const cpPlot = new LinePlot("Log size at each checkpoint", ["entries"], { unit: "entries" });
const checkpoints = {
  id: "checkpoints", title: "Checkpoints",
  init(body) {
    body.append(cpPlot.node, el("div", { class: "list" }));
  },
  async load(body) {
    const { checkpoints: rows } = await get("/v1/checkpoints", { limit: 200 });
    const pts = [...rows].reverse();
    cpPlot.update([pts.map((c) => c.t), pts.map((c) => c.size)]);
    clear($(".list", body)).append(table([
      ["height", (c) => c.height], ["time", (c) => when(c.t)], ["size", (c) => c.size],
      ["root", (c) => short(c.root, 12)],
      ["anchor", (c) => (!c.anchor ? badge("not yet", "warn") : c.anchor.state === "landed"
        ? `block ${c.anchor.block_height} (${short(c.anchor.digest)})` : badge(c.anchor.state, "warn"))],
    ], rows.slice(0, 50), { key: (c) => String(c.height) }));
  },
};

// -- RS485 bus --------------------------------------------------------------------------------
const bus = {
  id: "bus", title: "RS485 bus",
  async load(body) {
    const { bus: b } = await get("/v1/bus");
    if (b === null) {
      clear(body).append(notice("this fog runs no RS485 bus (its meters talk MQTT)"));
      return;
    }
    const c = b.counters;
    clear(body).append(cards([["port", `${b.port} @ ${b.baud}`], ["requests", c.requests],
      ["answers", c.answers], ["timeouts", c.timeouts, "bus-timeouts"], ["CRC errors", c.crc_errors],
      ["garbage", c.garbage]]), table([
      ["address", (a) => a.address], ["meter", (a) => a.dev ?? "unknown"],
      ["state", (a) => badge(a.state, a.state === "answering" ? "ok" : a.state === "silent" ? "bad" : "")],
      ["missed visits", (a) => a.missed_visits], ["silent for", (a) => (a.silent_s == null ? "" : `${a.silent_s.toFixed(1)} s`)],
    ], b.addresses, { key: (a) => String(a.address) }));
  },
};

// -- rejections -------------------------------------------------------------------------------
const rejPlot = new LinePlot("Rejected messages per interval", ["rejected"], { unit: "messages" });
const rejections = {
  id: "rejections", title: "Rejections",
  init(body) {
    body.append(el("div", { class: "list" }), rejPlot.node);
  },
  async load(body) {
    const r = await get("/v1/rejections");
    clear($(".list", body)).append(table([
      ["reason", (x) => badge(x.reason, "bad")], ["count", (x) => x.count],
      ["last", (x) => when(x.last.t)], ["meter", (x) => x.last.dev ?? "unknown"],
      ["detail", (x) => x.last.detail], ["example (hex)", (x) => short(x.last.raw ?? "", 24)],
      ["what to do", (x) => x.hint ?? ""],
    ], r.reasons, { key: (x) => x.reason, empty: "nothing rejected" }));
    const s = r.series;
    rejPlot.update([s.counts.map((_, i) => s.start + i * s.interval_s), s.counts]);
  },
};

startPage({
  service: "fog", title: "MeterLedger fog node",
  links: [["Audit a bundle", "/ui/audit.html"], ["API", "/openapi.json"]],
  sections: [overview, meters, feeders, vee, checkpoints, bus, rejections],
});
document.body.dataset.ready = "1";
