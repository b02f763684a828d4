// The dashboard's one client of a service's JSON API: the browser's twin of
// meterledger.clients (same paths, same bearer token, same error envelope). Pages read
// nothing else: what a page shows, its user could read with curl and the same token.

const TOKEN_KEY = "meterledger.token";

// The token the user typed, kept in this tab only (sessionStorage): closing the tab
// forgets it, and no other site can read it.
export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value.trim());
  else sessionStorage.removeItem(TOKEN_KEY);
}

// An answer that is not a 2xx: `status`, and the service's message (the fog answers
// {"error": message}, the chain {"error": code, "detail": message}).
export class ApiError extends Error {
  constructor(status, doc, path) {
    const said = doc && typeof doc === "object"
      ? (doc.detail ? `${doc.error}: ${doc.detail}` : String(doc.error ?? ""))
      : "";
    super(`${path}: HTTP ${status}${said ? ": " + said : ""}`);
    this.status = status;
    this.doc = doc;
    this.code = doc && typeof doc === "object" ? doc.error : undefined;
  }

  // 401 or 403: the token is missing or of a lower tier than the endpoint's
  get needsToken() {
    return this.status === 401 || this.status === 403;
  }
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? "?" + s : "";
}

async function call(method, path, params, body, asText = false) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const url = path + query(params);
  let resp;
  try {
    resp = await fetch(url, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", credentials: "omit",
    });
  } catch (e) {
    throw new ApiError(0, { error: `the service is unreachable (${e.message})` }, url);
  }
  const text = await resp.text();
  if (resp.ok && asText) return text;
  let doc = null;
  try {
    doc = JSON.parse(text);
  } catch {
    doc = { error: "the answer is not JSON" };
  }
  if (!resp.ok) throw new ApiError(resp.status, doc, url);
  return doc;
}

export const get = (path, params) => call("GET", path, params);
// the answer's text as sent (a proof bundle: parsing it here could change what is checked)
export const getText = (path, params) => call("GET", path, params, undefined, true);
export const post = (path, body, params) => call("POST", path, params, body ?? {});
