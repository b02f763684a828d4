// A page's frame: the title bar with the token box, the tabs, and live updates.
//
// A page is a list of sections {id, title, init?(body), load(body), every?}: `init` makes
// what stays (plots, search boxes) once, `load` refreshes the data in it. The visible section's
// `load` runs when it is opened and again every `every` ms (polling, default 5 s) while
// the tab is visible: a dashboard left open on a Pi's fog costs one small request set per
// interval, and nothing while hidden. A load that fails shows why in its section (no
// token, a lower tier, the service unreachable) and the next poll tries again.

import { ApiError, setToken, token } from "./api.js";
import { $, clear, el, notice } from "./dom.js";
import { when, zone } from "./time.js";

const DEFAULT_EVERY = 5000;

function tokenBox(onChange) {
  const input = el("input", {
    type: "password", id: "token", placeholder: "API token (auditor or operator)",
    autocomplete: "off", "aria-label": "API token", value: token(),
  });
  const state = el("span", { id: "token-state", class: "muted" },
    token() ? "token set" : "no token: public data only");
  const form = el("form", {
    id: "token-form",
    onsubmit: (ev) => {
      ev.preventDefault();
      setToken(input.value);
      state.textContent = token() ? "token set" : "no token: public data only";
      onChange();
    },
  }, input, el("button", { type: "submit" }, "Use token"));
  return el("div", { class: "token" }, form, state);
}

// What a failed load shows: a token to give, or the error the service said.
export function failure(e) {
  if (e instanceof ApiError && e.needsToken) {
    return notice(`${e.status === 401 ? "This needs a token" : "This token's tier may not read this"}` +
      ` (${e.message}). Give the auditor or operator token in the box above.`, "warn");
  }
  return notice(e instanceof Error ? e.message : String(e), "error");
}

export function startPage({ service, title, sections, links = [] }) {
  const main = $("main");
  const nav = el("nav", { class: "tabs", role: "tablist" });
  const status = el("span", { id: "live", class: "muted" }, "");
  const header = el("header", {},
    el("h1", {}, title),
    el("div", { class: "links" }, links.map(([text, href]) => el("a", { href }, text))),
    tokenBox(() => refresh(true)),
    el("span", { class: "muted" }, `times in ${zone}`),
    status);
  document.body.prepend(header, nav);
  document.body.dataset.service = service;

  const nodes = new Map();
  for (const s of sections) {
    const node = el("section", { id: s.id, hidden: true, "aria-labelledby": `tab-${s.id}` },
      el("h2", {}, s.title), el("div", { class: "status" }), el("div", { class: "body" }));
    nodes.set(s.id, node);
    main.append(node);
    nav.append(el("a", { href: `#${s.id}`, id: `tab-${s.id}`, role: "tab" }, s.title));
  }

  let current = null;
  let timer = null;
  let running = false;

  let again = false; // a forced refresh asked for while a load ran: run once more after it

  async function refresh(force) {
    if (!current || (document.hidden && !force)) return;
    if (running) {
      again = again || force;
      return;
    }
    running = true;
    const node = nodes.get(current.id);
    const body = node.querySelector(".body");
    const said = node.querySelector(".status");
    try {
      if (!node.dataset.inited && current.init) current.init(body);
      node.dataset.inited = "1";
      await current.load(body, node);
      clear(said);
      node.dataset.loaded = String(Number(node.dataset.loaded || 0) + 1);
      // ms from navigation to the first data drawn: what tools.bench_ui measures
      if (!node.dataset.readyMs) node.dataset.readyMs = String(Math.round(performance.now()));
      node.removeAttribute("data-error");
      status.textContent = `updated ${when(Date.now() / 1000)}`;
    } catch (e) {
      node.dataset.error = e instanceof ApiError ? String(e.status) : "error";
      clear(said).append(failure(e));
      node.dataset.loaded = String(Number(node.dataset.loaded || 0) + 1);
    } finally {
      running = false;
      if (again) {
        again = false;
        refresh(true);
      }
    }
  }

  function show() {
    const id = location.hash.slice(1);
    current = sections.find((s) => s.id === id) || sections[0];
    for (const [sid, node] of nodes) node.hidden = sid !== current.id;
    for (const a of nav.querySelectorAll("a")) {
      a.setAttribute("aria-selected", String(a.id === `tab-${current.id}`));
    }
    clearInterval(timer);
    refresh(true);
    if (current.every !== 0) timer = setInterval(refresh, current.every || DEFAULT_EVERY);
  }

  window.addEventListener("hashchange", show);
  document.addEventListener("visibilitychange", () => refresh(false));
  show();
}
