// Small DOM helpers. Every value from a service is set as text, never as HTML: a meter's
// rejected message or a rule set's text is data a stranger may have written.

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export const $ = (sel, root = document) => root.querySelector(sel);

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

// A table: `columns` are [header, row => cell] pairs; a cell is text or a node.
// `key` (row => string) names each row in data-key, for tests and links.
export function table(columns, rows, { key, empty = "nothing yet" } = {}) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map(([h]) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", { dataset: key ? { key: key(r) } : {} },
      columns.map(([, cell]) => el("td", {}, cell(r)))))));
}

// A message in place of a section's content: why it is empty (no token, unreachable).
export function notice(text, kind = "info") {
  return el("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

// A value with a status colour: ok, warn, bad.
export function badge(text, kind) {
  return el("span", { class: `badge ${kind || ""}` }, text);
}

export function short(hex, n = 8) {
  if (typeof hex !== "string") return String(hex ?? "");
  return hex.length > 2 * n ? hex.slice(0, n) + "…" + hex.slice(-4) : hex;
}

// Wh as the unit a reader expects: Wh, kWh or MWh, three significant digits.
export function energy(wh) {
  if (wh === null || wh === undefined) return "";
  const a = Math.abs(wh);
  if (a >= 1e6) return (wh / 1e6).toFixed(2) + " MWh";
  if (a >= 1e3) return (wh / 1e3).toFixed(2) + " kWh";
  return wh + " Wh";
}

// A table in `holder` brought up to `rows` in place: a row whose data did not change keeps
// its element (and its button), so a poll never replaces a button under the user's pointer;
// nothing is touched when no row changed.
export function updateTable(holder, columns, rows, { key, empty = "nothing yet" }) {
  if (!rows.length) {
    clear(holder).append(el("p", { class: "empty" }, empty));
    return;
  }
  let t = holder.querySelector("table");
  if (!t) {
    t = el("table", {}, el("thead", {}, el("tr", {}, columns.map(([h]) => el("th", {}, h)))),
      el("tbody", {}));
    clear(holder).append(t);
  }
  const body = t.tBodies[0];
  const old = new Map([...body.rows].map((r) => [r.dataset.key, r]));
  const next = rows.map((r) => {
    const k = key(r);
    const sig = JSON.stringify(r);
    const have = old.get(k);
    if (have && have.dataset.sig === sig) return have;
    return el("tr", { dataset: { key: k, sig } }, columns.map(([, cell]) => el("td", {}, cell(r))));
  });
  const same = next.length === body.rows.length && next.every((r, i) => r === body.rows[i]);
  if (!same) body.replaceChildren(...next);
}
