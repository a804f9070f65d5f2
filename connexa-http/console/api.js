// The console's only contact with the server: the REST API under /api/v1
// (docs/http.md). A request carries the Bearer token if the operator pasted
// one; else the browser sends the HttpOnly session cookie, and requests that
// change something carry the session's CSRF token (kept in memory only,
// never in storage). Nothing is cached.

export const STATUSES = [
  "not_tested", "ping_failed", "ping_light", "auth_failed",
  "ping_ok", "speed_ok", "online", "offline",
];

/** An API error: the problem+json body's title/detail and the HTTP status. */
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

const TOKEN_KEY = "connexa.token";
export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** The signed-in account's session: its CSRF token, in memory only. */
export const session = { csrf: null };

function headers(extra = {}, method = "GET") {
  const h = { Accept: "application/json", ...extra };
  const t = token.get();
  if (t) h.Authorization = `Bearer ${t}`;
  else if (session.csrf && !["GET", "HEAD"].includes(method)) h["X-CSRF-Token"] = session.csrf;
  return h;
}

async function fail(res) {
  let problem = null;
  try { problem = await res.json(); } catch { /* not JSON */ }
  throw new ApiError(res.status, problem);
}

export async function request(method, path, { query, json, body, contentType, signal } = {}) {
  const url = new URL(`/api/v1${path}`, location.origin);
  if (query) for (const [k, v] of query) url.searchParams.append(k, v);
  const init = { method, headers: headers({}, method), signal, cache: "no-store", credentials: "same-origin" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
    if (contentType) init.headers["Content-Type"] = contentType;
  }
  const res = await fetch(url, init);
  if (!res.ok) await fail(res);
  return res;
}

async function getJson(path, query) {
  return (await request("GET", path, { query })).json();
}

/**
 * The filter the console holds, turned into query parameters: the same names for
 * list, export and count, so the table and "all matching" always agree.
 */
export function filterQuery(f) {
  const q = [];
  if (f.statuses.length) q.push(["status", f.statuses.join(",")]);
  for (const k of ["ip", "login", "provider", "country", "state", "city", "zip", "comment"]) {
    if (f[k]) q.push([k, f[k]]);
  }
  if (f.min_speed !== "" && f.min_speed != null) q.push(["min_speed", String(f.min_speed)]);
  if (f.max_speed !== "" && f.max_speed != null) q.push(["max_speed", String(f.max_speed)]);
  for (const k of ["fraud_max", "risk", "mismatch", "asn"]) {
    if (f[k] !== "" && f[k] != null) q.push([k, String(f[k])]);
  }
  return q;
}

/** The same filter as the JSON `NodeFilter` body of jobs and services. */
export function filterBody(f) {
  const b = {};
  if (f.statuses.length) b.statuses = [...f.statuses];
  for (const k of ["ip", "login", "provider", "country", "state", "city", "comment"]) {
    if (f[k]) b[k] = f[k];
  }
  if (f.zip) b.zipcode = f.zip;
  if (f.min_speed !== "" && f.min_speed != null) b.min_down_mbps = Number(f.min_speed);
  if (f.max_speed !== "" && f.max_speed != null) b.max_down_mbps = Number(f.max_speed);
  if (f.fraud_max !== "" && f.fraud_max != null) b.fraud_max = Number(f.fraud_max);
  if (f.risk) b.risks = [f.risk];
  if (f.mismatch === "true" || f.mismatch === "false") b.mismatch = f.mismatch === "true";
  if (f.asn !== "" && f.asn != null) b.asn = Number(f.asn);
  return b;
}

/**
 * A selection body: explicit ids, or every node matching a filter (an empty
 * filter must be said as `all: true`, so a typo never selects every node).
 */
function selection(t) {
  if (t.ids) return { ids: t.ids };
  const filter = filterBody(t.filter);
  return Object.keys(filter).length ? { filter } : { all: true };
}

/** Ids per DELETE request (keeps the URL a few kB long). */
const DELETE_CHUNK = 500;
/** Rows per page when collecting the ids of every matching node. */
const ID_PAGE = 10000;

export const api = {
  stats: () => getJson("/stats"),
  /** Who is signed in (`{principal, csrf_token?}`), by token or by session cookie. */
  me: () => getJson("/session"),
  /** Signs in with a name and a password: the server sets the session cookie. */
  signIn: async (name, password) => (await request("POST", "/session", { json: { name, password } })).json(),
  /** Ends the session on the server (the cookie is removed). */
  signOut: () => request("DELETE", "/session"),
  changePassword: (current, next) => request("POST", "/session/password", { json: { current, new: next } }),
  /** The signed-in token: name, role (viewer, operator, admin), scope. */
  token: () => getJson("/token"),
  nodes: (filter, { page, limit, sort, desc }) =>
    getJson("/nodes", [...filterQuery(filter), ["offset", String((page - 1) * limit)], ["limit", String(limit)],
      ["sort", sort], ["desc", String(desc)]]),
  count: async (filter) => (await getJson("/nodes", [...filterQuery(filter), ["limit", "1"]])).total,
  /**
   * The ids of every node matching `filter`, in id order. Follows the cursor
   * (`next_after`), so nodes deleted or added meanwhile never make it skip one.
   */
  matchingIds: async (filter) => {
    const ids = [];
    for (let after = null; ;) {
      const query = [...filterQuery(filter), ["limit", String(ID_PAGE)], ["sort", "id"]];
      if (after !== null) query.push(["after", String(after)]);
      const page = await getJson("/nodes", query);
      for (const n of page.items) ids.push(n.id);
      if (page.next_after == null) return ids;
      after = page.next_after;
    }
  },
  node: (id, reveal) => getJson(`/nodes/${id}`, reveal ? [["reveal", "true"]] : []),
  history: (id) => getJson(`/nodes/${id}/history`),
  /**
   * Deletes exactly these ids (in chunks); `{deleted, missing}` added up. Ids
   * that no longer exist are reported as missing, never replaced by others.
   */
  deleteIds: async (ids, onProgress) => {
    const out = { deleted: 0, missing: [] };
    for (let i = 0; i < ids.length; i += DELETE_CHUNK) {
      const chunk = ids.slice(i, i + DELETE_CHUNK);
      const r = await (await request("DELETE", "/nodes", { query: [["ids", chunk.join(",")]] })).json();
      out.deleted += r.deleted;
      out.missing.push(...(r.missing || []));
      if (onProgress) onProgress(Math.min(ids.length, i + DELETE_CHUNK), ids.length);
    }
    return out;
  },
  startJob: async (kind, t, options = {}) => (await request("POST", "/jobs", { json: { kind, ...selection(t), ...options } })).json(),
  addNode: async (body) => (await request("POST", "/nodes", { json: body })).json(),
  editNode: async (id, patch) => (await request("PATCH", `/nodes/${id}`, { json: patch })).json(),
  cancelAll: async () => (await request("POST", "/jobs/cancel")).json(),
  retestFailed: async (id, options = {}) => (await request("POST", `/jobs/${id}/retest-failed`, { json: options })).json(),
  values: (field, prefix) => getJson("/nodes/values", [["field", field], ["limit", "20"], ...(prefix ? [["prefix", prefix]] : [])]),
  /** Starts (`extra.kind`: socks, tun or openvpn) or stops the services of a selection. */
  services: async (action, t, extra = {}) => (await request("POST", `/services/${action}`, { json: { ...selection(t), ...extra } })).json(),
  /** The `.ovpn` profile of a node's openvpn service (admin): the response, to download. */
  serviceProfile: (id) => request("GET", `/services/${id}/profile`),
  /** The running services (nodes with their `service`, counters included). */
  serviceList: () => getJson("/services", [["limit", "1000"], ["sort", "id"]]),
  /** Audit rows, newest first (admin): `limit`, older than `before`, of one `action`. */
  audit: ({ limit = 100, before = null, action = "" } = {}) => {
    const q = [["limit", String(limit)]];
    if (before != null) q.push(["before", String(before)]);
    if (action) q.push(["action", action]);
    return getJson("/audit", q);
  },
  /** Asks for a restart of these nodes' services: `{matched, restarting, not_running}`. */
  restartServices: async (ids) => (await request("POST", "/services/restart", { json: { ids } })).json(),
  jobs: () => getJson("/jobs", [["limit", "50"]]),
  /** The worker processes: heartbeats, items in flight, services held. */
  workers: () => getJson("/workers"),
  job: (id) => getJson(`/jobs/${id}`),
  cancel: (id) => request("POST", `/jobs/${id}/cancel`),
  /**
   * Imports a list. Small bodies answer the report (`{summary, job}`); a large
   * file is imported in the background: the answer is the import's state
   * (`{id, state: "running", ...}`), whose progress `importStatus` reads.
   * `source` names the list in the report (a file's name).
   */
  import: async (body, onConflict, source) =>
    (await request("POST", "/import", {
      query: [["on_conflict", onConflict], ...(source ? [["source", source]] : [])],
      body, contentType: "text/plain; charset=utf-8",
    })).json(),
  importStatus: (id) => getJson(`/imports/${encodeURIComponent(id)}`),
  export: async (format, t) => {
    const q = [["format", format]];
    if (t.ids) q.push(["ids", t.ids.join(",")]);
    else q.push(...filterQuery(t.filter));
    return request("GET", "/export", { query: q });
  },
};

/**
 * Server-Sent Events over fetch (EventSource cannot send an Authorization
 * header). Yields `{id, event, data}`; on a dropped connection it reconnects
 * with `Last-Event-ID`, so no event is lost. Ends when the server closes the
 * stream after its final event, or when `signal` aborts. `resumeAfter` is an
 * event id seen earlier (e.g. before a page reload): the stream starts after it.
 */
export async function* events(path, signal, resumeAfter = null) {
  let lastId = resumeAfter;
  let failures = 0;
  for (;;) {
    let res;
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastId !== null) h["Last-Event-ID"] = lastId;
      res = await fetch(`/api/v1${path}`, { headers: h, signal, cache: "no-store" });
    } catch (e) {
      if (signal && signal.aborted) return;
      if (++failures > 20) throw e;
      await sleep(Math.min(500 * failures, 5000));
      continue;
    }
    if (!res.ok) await fail(res);
    failures = 0;
    let ended = false;
    try {
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      let ev = { id: null, event: "message", data: [] };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { ended = true; break; }
        buf += value;
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + (buf[nl] === "\r" && buf[nl + 1] === "\n" ? 2 : 1));
          if (line === "") {
            if (ev.data.length) {
              if (ev.id !== null) lastId = ev.id;
              yield { id: ev.id, event: ev.event, data: ev.data.join("\n") };
            }
            ev = { id: null, event: "message", data: [] };
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "data") ev.data.push(val);
          else if (field === "event") ev.event = val;
          else if (field === "id") ev.id = val;
        }
      }
    } catch (e) {
      if (signal && signal.aborted) return;
    }
    if (ended) return;
    await sleep(500);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
