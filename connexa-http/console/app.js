// Connexa console: a single page over the REST API. No framework, no build step;
// every element is created with the DOM API, never parsed from strings of HTML.
import { api, events, token, session, ApiError, STATUSES, sleep } from "./api.js";

// Count Content-Security-Policy violations where tests (and curious operators) can see them.
document.addEventListener("securitypolicyviolation", (e) => {
  const root = document.documentElement;
  root.dataset.cspViolations = String(Number(root.dataset.cspViolations || 0) + 1);
  console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
});

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** h("td", {class: "num", dataset: {label: "ID"}}, "12") */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c != null) el.append(c instanceof Node ? c : String(c));
  return el;
}

const STATUS_LABEL = {
  not_tested: "Not tested", ping_failed: "Ping failed", ping_light: "Ping light",
  auth_failed: "Auth failed", ping_ok: "Ping OK", speed_ok: "Speed OK",
  online: "Online", offline: "Offline",
};
const STATUS_TONE = {
  not_tested: "", ping_failed: "st-bad", ping_light: "st-info", auth_failed: "st-warn",
  ping_ok: "st-info", speed_ok: "st-ok", online: "st-ok", offline: "st-bad",
};
const ACTION_LABEL = {
  light: "Run a light test on", auth: "Run an auth test on", speed: "Run a speed test on",
  pipeline: "Run a pipeline test on", geo: "Look up where they really are:",
  fraud: "Look up the fraud score of", service_start: "Start a service for",
  service_stop: "Stop the service of", export: "Export", delete: "Delete",
};
const FILTER_FIELDS = ["ip", "login", "provider", "country", "state", "city", "zip", "comment", "min_speed", "max_speed", "fraud_max", "risk", "mismatch", "asn"];
const EXACT_FILTERS = new Set(["min_speed", "max_speed", "fraud_max", "risk", "mismatch", "asn"]);

const state = {
  filter: { statuses: [], ...Object.fromEntries(FILTER_FIELDS.map((k) => [k, ""])) },
  page: 1, limit: 50, sort: "id", desc: false,
  total: 0, rows: [],
  selected: new Set(),
  revealed: new Map(),
  jobs: new Map(), // id -> {el, abort, finished}
  restarting: new Set(), // node ids whose service restart is awaited
  loadSeq: 0,
  editing: null, // the node whose detail drawer is open
};

// --- small helpers --------------------------------------------------------------

function toast(msg, bad = false) {
  const t = $("#toast");
  t.textContent = msg;
  t.classList.toggle("bad", bad);
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), bad ? 8000 : 4000);
}

function errorText(e) {
  if (e instanceof ApiError) return `${e.message} (HTTP ${e.status})`;
  return String(e && e.message ? e.message : e);
}

async function guard(fn) {
  try { return await fn(); } catch (e) {
    if (e instanceof ApiError && e.status === 401) { signOut("Your session ended or your token was refused; sign in again."); return undefined; }
    toast(errorText(e), true);
    return undefined;
  }
}

const nf = new Intl.NumberFormat();
const fmtTime = (t) => (t ? new Date(t).toLocaleString() : "never");
const fmtNum = (n, unit) => (n == null ? "—" : `${Number(n).toFixed(n < 10 ? 2 : 1)} ${unit}`);
function fmtDuration(s) {
  if (s == null || !isFinite(s)) return "—";
  if (s < 1) return "< 1 s";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
const plural = (n, word) => `${nf.format(n)} ${word}${n === 1 ? "" : "s"}`;

function describeFilter(f) {
  const parts = [];
  if (f.statuses.length) parts.push(`status ${f.statuses.join(" or ")}`);
  for (const k of FILTER_FIELDS) if (f[k] !== "" && f[k] != null) parts.push(`${k.replace("_", " ")} ${EXACT_FILTERS.has(k) ? "" : "contains "}${f[k]}`);
  return parts.length ? parts.join(", ") : "no filter (every node)";
}

// --- sign-in ------------------------------------------------------------------------

async function signIn(t) {
  session.csrf = null;
  token.set(t);
  try {
    await api.stats();
  } catch (e) {
    token.clear();
    throw e;
  }
  showConsole();
}

/** Signs in with a name and a password: the server sets an HttpOnly cookie;
 * the CSRF token stays in memory (a reload asks `GET /session` again). */
async function signInWithPassword(name, password) {
  token.clear();
  const s = await api.signIn(name, password);
  session.csrf = s.csrf_token;
  showConsole();
}

/** Removes every private thing from the page (tables, cards, dialogs). */
function clearPrivate() {
  for (const id of ["#rows", "#service-rows", "#worker-rows", "#history-rows", "#cards", "#job-list", "#import-report", "#audit-rows", "#audit-count"]) {
    const e = $(id);
    if (e) e.replaceChildren();
  }
  for (const d of $$("dialog[open]")) d.close();
  state.rows = [];
  state.selected.clear();
}

function signOut(msg) {
  for (const j of state.jobs.values()) j.abort.abort();
  state.jobs.clear();
  clearPrivate();
  token.clear();
  session.csrf = null;
  delete document.documentElement.dataset.role;
  $("#console").hidden = true;
  for (const id of ["#add-node-open", "#import-open", "#refresh", "#sign-out", "#password-open"]) $(id).hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = msg || "";
  $("#password-signin-error").textContent = msg || "";
  $("#token").value = "";
  $("#account-password").value = "";
  $("#account-name").focus();
}

/** The Sign out button: ends a session on the server, then loads the page
 * afresh in place (no history entry keeps what was shown). */
async function signOutClicked() {
  const hadSession = !token.get() && session.csrf;
  if (hadSession) {
    try { await api.signOut(); } catch { /* ended already */ }
  }
  signOut();
  if (hadSession) location.replace(location.pathname);
}

/**
 * Marks the page with the token's role (`<html data-role=…>`): app.css hides
 * the controls the role may not use. The server refuses them anyway; until the
 * role is known, everything shows.
 */
async function loadRole() {
  try {
    const me = await api.me();
    const role = me.principal.role;
    document.documentElement.dataset.role = role;
    if (role === "admin") guard(() => loadAudit(false));
  } catch {
    delete document.documentElement.dataset.role;
  }
}

function showConsole() {
  loadRole();
  $("#signin").hidden = true;
  $("#console").hidden = false;
  for (const id of ["#add-node-open", "#import-open", "#refresh", "#sign-out"]) $(id).hidden = false;
  $("#password-open").hidden = !session.csrf;
  refresh();
  attachRunningJobs();
}

// --- status cards -------------------------------------------------------------------

function renderCards(stats) {
  const counts = Object.fromEntries((stats.by_status || []).map((s) => [s.status, s.count]));
  const active = state.filter.statuses;
  const cards = [
    h("button", {
      type: "button", class: "card", "aria-pressed": String(active.length === 0),
      dataset: { status: "" }, onclick: () => setStatuses([]),
    }, h("span", { class: "n", dataset: { count: "" } }, nf.format(stats.total ?? 0)), h("span", { class: "label" }, "All nodes")),
  ];
  for (const s of STATUSES) {
    cards.push(h("button", {
      type: "button", class: `card ${STATUS_TONE[s]}`, "aria-pressed": String(active.includes(s)),
      dataset: { status: s }, onclick: () => toggleStatus(s),
    }, h("span", { class: "n", dataset: { count: "" } }, nf.format(counts[s] ?? 0)), h("span", { class: "label" }, STATUS_LABEL[s])));
  }
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.status : undefined;
  $("#cards").replaceChildren(...cards);
  if (focused !== undefined) { const c = $(`#cards [data-status="${focused}"]`); if (c) c.focus(); }
}

function toggleStatus(s) {
  const set = new Set(state.filter.statuses);
  if (set.has(s)) set.delete(s); else set.add(s);
  setStatuses(STATUSES.filter((x) => set.has(x)));
}

function setStatuses(list) {
  state.filter.statuses = list;
  state.page = 1;
  refresh();
}

// --- table --------------------------------------------------------------------------

async function loadNodes() {
  const seq = ++state.loadSeq;
  const res = await api.nodes(state.filter, state);
  if (seq !== state.loadSeq) return; // a newer request is on its way
  state.total = res.total;
  state.rows = res.items;
  const pages = Math.max(1, Math.ceil(res.total / state.limit));
  if (state.page > pages && res.total > 0) { state.page = pages; return loadNodes(); }
  renderTable();
}

function renderTable() {
  // Live refreshes must not steal the keyboard focus from a row's control.
  const active = document.activeElement;
  const activeRow = active && active.closest ? active.closest("#rows tr[data-id]") : null;
  const activeIndex = activeRow ? $$("button, input", activeRow).indexOf(active) : -1;
  const rows = state.rows.map(renderRow);
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: "12", class: "empty" }, "No node matches.")));
  $("#rows").replaceChildren(...rows);
  if (activeRow && activeIndex >= 0) {
    const again = $(`#rows tr[data-id="${activeRow.dataset.id}"]`);
    const control = again && $$("button, input", again)[activeIndex];
    if (control) control.focus();
  }
  const first = state.total === 0 ? 0 : (state.page - 1) * state.limit + 1;
  const last = Math.min(state.total, state.page * state.limit);
  const pages = Math.max(1, Math.ceil(state.total / state.limit));
  $("#count").textContent = `${plural(state.total, "node")} match`;
  $("#count").dataset.total = String(state.total);
  $("#page-info").textContent = `${nf.format(first)}–${nf.format(last)} of ${nf.format(state.total)} (page ${state.page} of ${pages})`;
  $("#prev").disabled = state.page <= 1;
  $("#next").disabled = state.page >= pages;
  $("#scope-matching").textContent = `all matching the filter (${nf.format(state.total)})`;
  for (const th of $$("#node-table th[data-sort]")) {
    th.setAttribute("aria-sort", th.dataset.sort === state.sort ? (state.desc ? "descending" : "ascending") : "none");
  }
  $("#filter-summary").textContent = describeFilter(state.filter);
  syncSelection();
}

function renderRow(n) {
  const sel = state.selected.has(n.id);
  const revealed = state.revealed.get(n.id);
  const pw = h("span", { class: "pw" }, revealed ?? "••••••");
  const reveal = h("button", {
    type: "button", "aria-label": `${revealed ? "Hide" : "Show"} the password of node ${n.id}`,
    "aria-pressed": String(revealed != null), dataset: { reveal: String(n.id) }, class: "needs-admin",
    onclick: () => toggleReveal(n.id),
  }, revealed ? "Hide" : "Show");
  const loc = [n.city, n.state, n.country].filter(Boolean).join(", ") + (n.zip ? ` ${n.zip}` : "");
  const geo = n.geo ? [n.geo.city, n.geo.region, n.geo.country_code].filter(Boolean).join(", ") : "";
  const really = n.geo ? h("div", { class: `muted geo${n.geo.location_mismatch ? " mismatch" : ""}`,
    title: n.geo.location_mismatch ? "The seller's location differs from the lookup" : "Where the lookup puts it" },
  `${n.geo.location_mismatch ? "≠ " : "⌖ "}${geo || "unknown"}${n.geo.asn != null ? ` · AS${n.geo.asn}` : ""}${n.fraud ? ` · fraud ${n.fraud.score}` : ""}`) : null;
  const speed = n.speed_down_mbps == null ? "—" : `${fmtNum(n.speed_down_mbps, "Mbit/s")}`;
  return h("tr", { class: sel ? "selected" : "", dataset: { id: String(n.id), status: n.status } },
    h("td", { class: "sel", dataset: { label: "Select" } }, h("input", {
      type: "checkbox", checked: sel, "aria-label": `Select node ${n.id} (${n.ip})`,
      onchange: (e) => { if (e.target.checked) state.selected.add(n.id); else state.selected.delete(n.id); e.target.closest("tr").classList.toggle("selected", e.target.checked); syncSelection(); },
    })),
    h("td", { class: "num", dataset: { label: "ID" } }, String(n.id)),
    h("td", { class: "num", dataset: { label: "Address" } }, n.port === 1723 ? n.ip : `${n.ip}:${n.port}`),
    h("td", { dataset: { label: "Login" } }, n.login),
    h("td", { class: "pwcell", dataset: { label: "Password" } }, h("span", {}, pw, reveal)),
    h("td", { dataset: { label: "Status" } }, h("span", { class: `badge ${STATUS_TONE[n.status] || ""}` }, STATUS_LABEL[n.status] || n.status)),
    h("td", { dataset: { label: "Location" } }, loc || "—", really),
    h("td", { class: "num", dataset: { label: "Speed" } }, speed),
    h("td", { class: "num", dataset: { label: "Ping" } }, n.ping_ms == null ? "—" : `${Math.round(n.ping_ms)} ms`),
    h("td", { class: "num", dataset: { label: "Last check" } }, n.last_checked_at ? h("time", { datetime: n.last_checked_at }, fmtTime(n.last_checked_at)) : "never"),
    h("td", { class: "err", dataset: { label: "Last error" } }, n.last_error || "—"),
    h("td", { dataset: { label: "History" } }, h("button", {
      type: "button", "aria-label": `History of node ${n.id}`, onclick: () => openHistory(n.id),
    }, "History")),
  );
}

async function toggleReveal(id) {
  if (state.revealed.has(id)) state.revealed.delete(id);
  else {
    const n = await guard(() => api.node(id, true));
    if (!n) return;
    state.revealed.set(id, n.password);
  }
  const i = state.rows.findIndex((r) => r.id === id);
  if (i >= 0) {
    const old = $(`#rows tr[data-id="${id}"]`);
    const fresh = renderRow(state.rows[i]);
    old.replaceWith(fresh);
    $(`[data-reveal="${id}"]`, fresh).focus();
  }
}

function syncSelection() {
  const n = state.selected.size;
  $("#scope-selected").textContent = `selected rows (${nf.format(n)})`;
  const boxes = $$("#rows input[type=checkbox]");
  const all = $("#select-page");
  all.checked = boxes.length > 0 && boxes.every((b) => b.checked);
  all.indeterminate = !all.checked && boxes.some((b) => b.checked);
}

async function refresh() {
  await guard(async () => {
    const [stats] = await Promise.all([api.stats(), loadNodes(), loadServices(), loadWorkers()]);
    renderCards(stats);
  });
}

// --- audit trail (admin) -------------------------------------------------------------

const AUDIT_PAGE = 100;
let auditSeq = 0;
/** Loads the newest audit rows (or, with `more`, the next older page). */
async function loadAudit(more = false) {
  const seq = ++auditSeq;
  const body = $("#audit-rows");
  const last = more ? body.lastElementChild : null;
  const before = last && last.dataset.id ? Number(last.dataset.id) : null;
  const rows = await api.audit({ limit: AUDIT_PAGE, before, action: $("#audit-action").value.trim() });
  if (seq !== auditSeq) return;
  const trs = rows.map((r) => h("tr", { dataset: { id: String(r.id), action: r.action, actor: r.actor } },
    h("td", { dataset: { label: "When" } }, h("time", { datetime: r.at }, fmtTime(r.at))),
    h("td", { dataset: { label: "Who" } }, r.actor),
    h("td", { dataset: { label: "From" } }, r.source || "—"),
    h("td", { dataset: { label: "Action" } }, h("code", {}, r.action)),
    h("td", { class: "num", dataset: { label: "Count" } }, r.count == null ? "—" : nf.format(r.count)),
    h("td", { class: "target", dataset: { label: "Target" } }, r.target || "—")));
  if (more) {
    body.append(...trs);
  } else {
    body.replaceChildren(...(trs.length ? trs : [h("tr", {}, h("td", { colspan: "6", class: "empty" }, "No audit rows."))]));
  }
  $("#audit-more").hidden = rows.length < AUDIT_PAGE;
  $("#audit-count").textContent = `${nf.format($$("#audit-rows tr[data-id]").length)} rows shown`;
}

// --- workers ------------------------------------------------------------------------

let workersSeq = 0;
/** Loads the worker processes: name, host, roles, heartbeat age, load. */
async function loadWorkers() {
  const seq = ++workersSeq;
  const list = await api.workers();
  if (seq !== workersSeq) return;
  const now = Date.now();
  const rows = list.map((w) => {
    const age = Math.max(0, (now - Date.parse(w.last_heartbeat)) / 1000);
    const held = w.max_services == null ? nf.format(w.services_held || 0) : `${nf.format(w.services_held || 0)} / ${nf.format(w.max_services)}`;
    return h("tr", { dataset: { name: w.name, alive: String(w.alive), servicesHeld: String(w.services_held || 0), itemsInFlight: String(w.items_in_flight) } },
      h("td", { class: "target", dataset: { label: "Name" } }, w.name),
      h("td", { class: "target", dataset: { label: "Host" } }, `${w.host} (pid ${w.pid})`),
      h("td", { dataset: { label: "Roles" } }, w.roles.join(", ") || "—", (w.labels || []).length ? h("span", { class: "muted" }, ` · ${w.labels.join(", ")}`) : null),
      h("td", { dataset: { label: "State" } }, h("span", { class: `badge ${w.alive ? "st-ok" : "st-bad"}` }, w.alive ? "alive" : "dead")),
      h("td", { class: "num", dataset: { label: "Heartbeat" } }, h("time", { datetime: w.last_heartbeat, title: fmtTime(w.last_heartbeat) }, `${age.toFixed(1)} s ago`)),
      h("td", { class: "num", dataset: { label: "In flight" } }, nf.format(w.items_in_flight)),
      h("td", { class: "num", dataset: { label: "Services" } }, held));
  });
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: "7", class: "empty" }, "No worker is registered. Start `connexa run` or `connexa-http serve`.")));
  $("#worker-rows").replaceChildren(...rows);
  const alive = list.filter((w) => w.alive).length;
  $("#workers-count").textContent = `${nf.format(alive)} alive of ${nf.format(list.length)}`;
}

// --- services -----------------------------------------------------------------------

function fmtBytes(n) {
  if (n == null) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

let servicesSeq = 0;
async function loadServices() {
  const seq = ++servicesSeq;
  const res = await api.serviceList();
  if (seq !== servicesSeq) return;
  renderServices(res);
}

function renderServices(res) {
  const rows = res.items.map((n) => {
    const s = n.service;
    const c = s.counters || null;
    const restarting = state.restarting.has(n.id);
    return h("tr", {
      dataset: {
        node: String(n.id), status: n.status, port: String(s.port),
        connections: c ? String(c.connections) : "", connectionsTotal: c ? String(c.connections_total) : "",
        bytesUp: c ? String(c.bytes_up) : "", bytesDown: c ? String(c.bytes_down) : "",
        started: c && c.started_at ? c.started_at : "",
      },
    },
    h("td", { class: "num", dataset: { label: "Node" } }, String(n.id)),
    h("td", { dataset: { label: "Status" } }, h("span", { class: `badge ${STATUS_TONE[n.status] || ""}` }, STATUS_LABEL[n.status] || n.status),
      n.service_wanted ? null : h("span", { class: "muted" }, " stopping")),
    h("td", { dataset: { label: "Proxy" } }, s.kind === "openvpn" ? "OpenVPN " : s.kind === "tun" ? "TUN " : null,
      h("code", {}, s.kind === "tun" ? s.host : `${s.host}:${s.port}`)),
    h("td", { dataset: { label: "Worker" } }, s.worker || "—"),
    h("td", { dataset: { label: "User" } }, s.username),
    h("td", { class: "num", dataset: { label: "Connections" } }, c ? nf.format(c.connections) : "—"),
    h("td", { class: "num", dataset: { label: "Total" } }, c ? nf.format(c.connections_total) : "—"),
    h("td", { class: "num", dataset: { label: "Up" } }, c ? fmtBytes(c.bytes_up) : "—"),
    h("td", { class: "num", dataset: { label: "Down" } }, c ? fmtBytes(c.bytes_down) : "—"),
    h("td", { class: "num", dataset: { label: "Started" } }, c && c.started_at ? h("time", { datetime: c.started_at }, fmtTime(c.started_at)) : "—"),
    h("td", { class: "err", dataset: { label: "Last error" } }, (c && c.last_error) || "—"),
    h("td", { dataset: { label: "Actions" } }, h("button", {
      type: "button", class: "service-restart needs-operator", disabled: restarting || !n.service_wanted,
      "aria-label": `Restart the service of node ${n.id}`, onclick: () => restartService(n.id, c && c.started_at),
    }, restarting ? "Restarting…" : "Restart"),
    s.kind === "openvpn" ? h("button", {
      type: "button", class: "service-profile needs-admin",
      "aria-label": `Download the OpenVPN profile of node ${n.id}`, onclick: () => downloadProfile(n.id),
    }, "Profile (.ovpn)") : null));
  });
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: "12", class: "empty" }, "No service runs. Select verified nodes and choose “Start service”.")));
  $("#service-rows").replaceChildren(...rows);
  $("#services-count").textContent = `${plural(res.total, "service")} running`;
  $("#services-count").dataset.total = String(res.total);
}

/** Downloads the `.ovpn` profile of node `id`'s openvpn service (it holds the client's key). */
async function downloadProfile(id) {
  await guard(async () => {
    const res = await api.serviceProfile(id);
    const url = URL.createObjectURL(await res.blob());
    const a = h("a", { href: url, download: `node${id}.ovpn` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    toast(`Downloaded the OpenVPN profile of node ${id}.`);
  });
}

async function restartService(id, startedBefore) {
  const ok = await confirmDialog(`Restart the service of node ${id}?`,
    `The SOCKS5 listener of node ${id} is stopped and started again on the same port with the same credentials; its open connections are closed.`,
    "Restart", false);
  if (!ok) return;
  await guard(async () => {
    const r = await api.restartServices([id]);
    if (!r.restarting.includes(id)) { toast(`Node ${id} runs no service.`, true); return; }
    state.restarting.add(id);
    toast(`Restarting the service of node ${id}…`);
    try {
      await loadServices();
      // The reconciler restarts it; its counters then start again (a new start time).
      for (let i = 0; i < 60; i++) {
        await sleep(500);
        const res = await api.serviceList();
        const n = res.items.find((x) => x.id === id);
        const started = n && n.service.counters ? n.service.counters.started_at : null;
        if (n && started && started !== startedBefore) {
          state.restarting.delete(id);
          renderServices(res);
          toast(`The service of node ${id} was restarted on port ${n.service.port}.`);
          return;
        }
      }
      toast(`The service of node ${id} has not restarted yet: is a reconciler running?`, true);
    } finally {
      state.restarting.delete(id);
      await loadServices();
    }
  });
}

// --- actions ------------------------------------------------------------------------

function confirmDialog(title, text, okLabel, danger) {
  const d = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  const ok = $("#confirm-ok");
  ok.textContent = okLabel;
  ok.className = danger ? "danger" : "primary";
  d.returnValue = "";
  d.showModal();
  $("#confirm-cancel").focus();
  return new Promise((resolve) => d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true }));
}

async function runAction(action) {
  const scope = $("#actions").elements.scope.value;
  let t, count, what;
  if (scope === "selected") {
    if (!state.selected.size) { toast("Select rows first, or choose “all matching the filter”.", true); return; }
    t = { ids: [...state.selected].sort((a, b) => a - b) };
    count = t.ids.length;
    what = `${plural(count, "selected node")}`;
  } else {
    const filter = structuredClone(state.filter);
    // A delete removes exactly the nodes counted here, by id, even if more
    // start matching meanwhile; other actions take the filter as it is.
    if (action === "delete") {
      const ids = await guard(() => api.matchingIds(filter));
      if (ids === undefined) return;
      t = { ids };
      count = ids.length;
    } else {
      count = await guard(() => api.count(filter));
      if (count === undefined) return;
      t = { filter };
    }
    if (count === 0) { toast("No node matches the filter."); return; }
    what = `all ${plural(count, "node")} matching ${describeFilter(filter)}`;
  }
  if (action === "export") return doExport(t, count);
  const TESTS = ["light", "auth", "speed", "pipeline", "geo", "fraud"];
  const options = TESTS.includes(action) ? testOptions() : {};
  if (options === null) return;
  const danger = action === "delete";
  const title = danger ? `Delete ${plural(count, "node")}?` : `${ACTION_LABEL[action]} ${plural(count, "node")}?`;
  const text = `${ACTION_LABEL[action]} ${what}.${danger ? " Deleted nodes keep their history; this cannot be undone." : ""}`;
  const okLabel = danger ? `Delete ${plural(count, "node")}` : `${ACTION_LABEL[action].split(" ").slice(0, 2).join(" ")} (${nf.format(count)})`;
  if (!(await confirmDialog(title, text, okLabel, danger))) return;
  await guard(async () => {
    if (action === "delete") {
      const r = await api.deleteIds(t.ids, (done, total) => toast(`Deleting… ${nf.format(done)} / ${nf.format(total)}`));
      toast(`Deleted ${plural(r.deleted, "node")}${r.missing.length ? `; ${nf.format(r.missing.length)} no longer existed` : ""}.`);
      for (const id of t.ids) state.selected.delete(id);
      refresh();
    } else if (action === "service_start" || action === "service_stop") {
      const job = action === "service_start"
        ? await api.services("start", t, { kind: $("#service-kind").value })
        : await api.services("stop", t);
      watchJob(job.id);
    } else {
      const job = await api.startJob(action, t, options);
      watchJob(job.id);
    }
  });
}

/**
 * The concurrency and per-node timeout typed above the action buttons, as the
 * job options of the API (`{}` when both are empty: the server's defaults);
 * `null`, with a message, when one is out of the bounds the API accepts.
 */
function testOptions() {
  const o = {};
  const c = $("#test-concurrency").value.trim();
  const tmo = $("#test-timeout").value.trim();
  if (c !== "") {
    const n = Number(c);
    if (!Number.isInteger(n) || n < 1 || n > 100000) { toast("Concurrency: a whole number from 1 to 100000.", true); $("#test-concurrency").focus(); return null; }
    o.concurrency = n;
  }
  if (tmo !== "") {
    const s = Number(tmo);
    if (!Number.isFinite(s) || s <= 0 || s > 604800) { toast("Per-node timeout: seconds, more than 0 and at most 604800.", true); $("#test-timeout").focus(); return null; }
    o.node_timeout_secs = s;
  }
  return o;
}

async function doExport(t, count) {
  const format = $("#export-format").value;
  await guard(async () => {
    const res = await api.export(format, t);
    const blob = await res.blob();
    const cd = res.headers.get("Content-Disposition") || "";
    const m = /filename="?([^";]+)"?/.exec(cd);
    const name = m ? m[1] : `connexa-nodes.${format === "socks-colon" || format === "socks" || format === "pptp" ? "txt" : format}`;
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    toast(`Exported ${plural(count, "node")} as ${format}.`);
  });
}

// --- jobs ---------------------------------------------------------------------------

const JOB_LABEL = { light: "Light test", auth: "Auth test", speed: "Speed test", pipeline: "Pipeline test", geo: "GEO lookup", fraud: "Fraud score", service_start: "Start services", service_stop: "Stop services", import: "Import" };

function jobElement(id) {
  const li = h("li", { class: "job", dataset: { job: String(id) }, "aria-label": `Job ${id}` },
    h("div", { class: "job-head" },
      h("strong", { class: "job-title" }, `Job ${id}`),
      h("span", { class: "job-state muted" }, "connecting…"),
      h("span", { class: "job-buttons" },
        h("button", { type: "button", class: "job-cancel needs-operator", onclick: () => cancelJob(id) }, "Cancel"),
        h("button", { type: "button", class: "job-retest needs-operator", hidden: true, onclick: () => retestFailed(id) }, "Retest failed with a longer timeout"),
        h("button", { type: "button", class: "job-dismiss", hidden: true, onclick: () => dismissJob(id) }, "Dismiss"))),
    h("progress", { max: "1", value: "0", "aria-label": `Progress of job ${id}` }),
    h("div", { class: "figures", "aria-live": "off" },
      h("span", { class: "pct" }, "0 %"), " · ",
      h("span", { class: "done" }, "0 / 0"), " done · ok ",
      h("span", { class: "ok" }, "0"), " · failed ",
      h("span", { class: "failed" }, "0"), " · ",
      h("span", { class: "rate" }, "— /s"), " · ETA ",
      h("span", { class: "eta" }, "—")),
    h("ul", { class: "recent", "aria-label": `Latest results of job ${id}` }),
    h("p", { class: "job-result visually-hidden", role: "status" }));
  return li;
}

/** Render one progress snapshot (an SSE event or a GET /jobs/{id} body). */
function renderProgress(id, ev) {
  const j = state.jobs.get(id);
  if (!j) return;
  const el = j.el;
  // An SSE `progress`/`done` event carries the counts flat; a JobView nests them.
  const p = ev.progress || ev;
  const total = p.total ?? 0;
  const failed = (p.failed ?? 0) + (p.timed_out ?? 0);
  const done = (p.ok ?? 0) + (p.failed ?? 0) + (p.timed_out ?? 0) + (p.cancelled ?? 0);
  const pct = total === 0 ? 100 : Math.floor((done * 100) / total);
  const kind = ev.kind || j.kind;
  if (kind) { j.kind = kind; $(".job-title", el).textContent = `${JOB_LABEL[kind] || kind} · job ${id}`; }
  const bar = $("progress", el);
  bar.max = Math.max(total, 1);
  bar.value = total === 0 ? 1 : done;
  $(".pct", el).textContent = `${pct} %`;
  $(".done", el).textContent = `${nf.format(done)} / ${nf.format(total)}`;
  $(".ok", el).textContent = nf.format(p.ok ?? 0);
  $(".failed", el).textContent = nf.format(failed);
  if (ev.rate != null) $(".rate", el).textContent = `${Number(ev.rate).toFixed(1)} /s`;
  const eta = ev.eta_secs ?? ev.eta_seconds ?? ev.eta;
  $(".eta", el).textContent = ev.finished || done === total ? "—" : fmtDuration(typeof eta === "number" ? eta : null);
  const st = ev.state || "running";
  $(".job-state", el).textContent = st;
  el.dataset.state = st;
  el.dataset.pct = String(pct);
  el.dataset.done = String(done);
  el.dataset.total = String(total);
  const finished = ev.finished === true || (["done", "cancelled", "interrupted"].includes(st) && done === total);
  if (finished && !j.finished) {
    j.finished = true;
    sessionStorage.removeItem(`connexa.job.${id}.last-event`);
    el.classList.add("finished");
    el.dataset.finished = "true";
    $(".job-cancel", el).hidden = true;
    $(".job-dismiss", el).hidden = false;
    const retestable = ["light", "auth", "speed", "pipeline", "geo", "fraud"].includes(j.kind);
    $(".job-retest", el).hidden = !(retestable && failed > 0);
    $(".job-result", el).textContent = `Job ${id} ${st}: ${nf.format(p.ok ?? 0)} ok, ${nf.format(failed)} failed.`;
    refresh();
  }
}

function watchJob(id) {
  if (id == null) return;
  id = Number(id);
  if (state.jobs.has(id)) return;
  const abort = new AbortController();
  const el = jobElement(id);
  state.jobs.set(id, { el, abort, finished: false });
  $("#job-list").prepend(el);
  $("#jobs").hidden = false;
  follow(id, abort.signal);
}

async function follow(id, signal) {
  let lastRefresh = 0;
  for (let attempt = 0; attempt < 1000 && !signal.aborted; attempt++) {
    try {
      // Resume after the last event this tab saw (kept across reloads), so a
      // reload does not replay every per-node result of a long job.
      const key = `connexa.job.${id}.last-event`;
      for await (const ev of events(`/jobs/${id}/events`, signal, sessionStorage.getItem(key))) {
        if (ev.id) sessionStorage.setItem(key, ev.id);
        let data;
        try { data = JSON.parse(ev.data); } catch { continue; }
        if (ev.event === "result") { showResult(id, data); continue; }
        if (ev.event !== "progress" && ev.event !== "done") continue;
        const j = state.jobs.get(id);
        if (j) j.el.dataset.events = String(Number(j.el.dataset.events || 0) + 1);
        renderProgress(id, data);
        // keep the table roughly live while a long job runs
        if (Date.now() - lastRefresh > 3000) { lastRefresh = Date.now(); refresh(); }
      }
    } catch (e) {
      if (e instanceof ApiError && (e.status === 401 || e.status === 404)) {
        if (e.status === 401) signOut("Your token was refused; sign in again.");
        else $(".job-state", state.jobs.get(id).el).textContent = "not found";
        return;
      }
    }
    const j = state.jobs.get(id);
    if (!j || j.finished || signal.aborted) return;
    // The stream ended without a final event (server restart): read the job and go on.
    const snap = await guard(() => api.job(id));
    if (snap) renderProgress(id, snap);
    if (state.jobs.get(id)?.finished) return;
    await sleep(1000);
  }
}

/** The latest per-node results of a job (newest first, at most 5). */
function showResult(id, r) {
  const j = state.jobs.get(id);
  if (!j) return;
  const list = $(".recent", j.el);
  const status = r.status ? STATUS_LABEL[r.status] || r.status : r.state;
  list.prepend(h("li", { dataset: { node: String(r.node), state: r.state } },
    h("span", { class: `badge ${STATUS_TONE[r.status] || ""}` }, status), ` node ${r.node}`,
    r.detail ? h("span", { class: "muted" }, ` — ${r.detail}`) : null));
  while (list.children.length > 5) list.lastElementChild.remove();
}

async function cancelJob(id) {
  await guard(async () => {
    await api.cancel(id);
    toast(`Cancelling job ${id}…`);
  });
}

/** Every queued or running job, after a confirmation; finished results stay. */
async function cancelAll() {
  const running = [...state.jobs.values()].filter((j) => !j.finished).length;
  const ok = await confirmDialog("Cancel every running job?",
    `Cancel every queued or running job${running ? ` (${plural(running, "job")} shown here)` : ""}, here and in other processes. Finished results are kept; the rest end as cancelled.`,
    "Cancel all jobs", true);
  if (!ok) return;
  await guard(async () => {
    const r = await api.cancelAll();
    for (const id of r.cancelled) watchJob(id);
    toast(r.cancelled.length ? `Cancelled ${plural(r.cancelled.length, "job")}: ${r.cancelled.join(", ")}.` : "No job was running.");
  });
}

/** A new job of the same kind on the nodes this job failed, with twice its per-node timeout. */
async function retestFailed(id) {
  await guard(async () => {
    const job = await api.retestFailed(id);
    watchJob(job.id);
    toast(`Retesting ${plural(job.total, "failed node")} of job ${id} in job ${job.id}.`);
  });
}

function dismissJob(id) {
  const j = state.jobs.get(id);
  if (!j) return;
  j.abort.abort();
  j.el.remove();
  sessionStorage.removeItem(`connexa.job.${id}.last-event`);
  state.jobs.delete(id);
  $("#jobs").hidden = state.jobs.size === 0;
}

/** After a reload (or sign-in), follow every job that is still running. */
async function attachRunningJobs() {
  const list = await guard(() => api.jobs());
  if (!list) return;
  for (const j of list) if (j.state === "queued" || j.state === "running") watchJob(j.id);
}

// --- history drawer -----------------------------------------------------------------

async function openHistory(id) {
  const data = await guard(() => Promise.all([api.node(id, false), api.history(id)]));
  if (!data) return;
  const [n, hist] = data;
  $("#history-title").textContent = `Node ${n.id}: ${n.ip}`;
  const facts = [
    ["Status", STATUS_LABEL[n.status] || n.status], ["Login", n.login], ["Port", n.port],
    ["Last check", fmtTime(n.last_checked_at)], ["Last error", n.last_error || "—"],
    ["Failures in a row", n.consecutive_failures], ["Ping", n.ping_ms == null ? "—" : `${Math.round(n.ping_ms)} ms`],
    ["Speed", fmtNum(n.speed_down_mbps, "Mbit/s")],
    ["Server", n.pptp ? [n.pptp.vendor, n.pptp.hostname, n.pptp.firmware].filter(Boolean).join(" · ") || "PPTP" : "—"],
    ["Service", n.service ? `${n.service.host}:${n.service.port}` : "—"], ["Comment", n.comment || "—"],
    ["Seller's location", [n.city, n.state, n.country].filter(Boolean).join(", ") || "—"],
    ["Where it really is", n.geo ? `${[n.geo.city, n.geo.region, n.geo.country || n.geo.country_code, n.geo.postal].filter(Boolean).join(", ") || "unknown"} (${n.geo.ip}, ${n.geo.source}, ${fmtTime(n.geo.at)})` : "not looked up"],
    ["Location differs", n.geo && n.geo.location_mismatch != null ? (n.geo.location_mismatch ? "yes" : "no") : "—"],
    ["ASN", n.geo && n.geo.asn != null ? `AS${n.geo.asn}${n.geo.org ? ` ${n.geo.org}` : ""}` : "—"],
    ["Fraud", n.fraud ? `${n.fraud.score} (${n.fraud.risk.replace("_", " ")}) by ${n.fraud.provider}, ${fmtTime(n.fraud.at)}` : "not scored"],
  ];
  $("#history-node").replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
  fillEditForm(n);
  const rows = [...hist].reverse().map((r) => h("tr", {},
    h("td", { class: "num" }, fmtTime(r.at)),
    h("td", {}, `${STATUS_LABEL[r.from] || r.from} → ${r.to ? STATUS_LABEL[r.to] || r.to : "deleted"}`),
    h("td", {}, r.event),
    h("td", {}, r.why || (r.failure && r.failure.message) || "—"),
    h("td", { class: "num" }, r.job == null ? "—" : String(r.job))));
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: "5", class: "empty" }, "No status change yet.")));
  $("#history-rows").replaceChildren(...rows);
  $("#history").showModal();
  $("#history-close").focus();
}

// --- node edit (in the detail drawer) -------------------------------------------------

const EDIT_FIELDS = ["provider", "country", "state", "city", "zip", "comment"];

function fillEditForm(n) {
  state.editing = n;
  const f = $("#node-edit").elements;
  for (const k of EDIT_FIELDS) f[k].value = n[k] ?? "";
  $("#node-edit-error").textContent = "";
}

async function submitEdit(e) {
  e.preventDefault();
  const n = state.editing;
  if (!n) return;
  const f = $("#node-edit").elements;
  // Only what changed: an emptied field is sent as "" (the API clears it).
  const patch = {};
  for (const k of EDIT_FIELDS) if (f[k].value.trim() !== (n[k] ?? "")) patch[k] = f[k].value.trim();
  const err = $("#node-edit-error");
  if (!Object.keys(patch).length) { err.textContent = "Nothing changed."; return; }
  err.textContent = "";
  $("#node-edit-save").disabled = true;
  try {
    const updated = await api.editNode(n.id, patch);
    toast(`Node ${n.id} saved.`);
    await openHistory(n.id);
    refresh();
    return updated;
  } catch (x) {
    if (x instanceof ApiError && x.status === 401) { signOut("Your token was refused; sign in again."); return undefined; }
    err.textContent = x instanceof ApiError ? x.message : errorText(x);
    return undefined;
  } finally {
    $("#node-edit-save").disabled = false;
  }
}

// --- add node dialog ------------------------------------------------------------------

function openAddNode() {
  $("#add-node-form").reset();
  $("#add-node-error").textContent = "";
  $("#add-node-submit").disabled = false;
  $("#add-node").showModal();
  $("#add-node-form").elements.ip.focus();
}

async function submitAddNode(e) {
  e.preventDefault();
  const f = $("#add-node-form").elements;
  const err = $("#add-node-error");
  const body = { ip: f.ip.value.trim(), login: f.login.value, password: f.password.value };
  if (!body.ip || !body.login.trim()) { err.textContent = "Give the IP address, the login and the password."; return; }
  // A port that is not a whole number is sent as typed, for the server's message.
  const port = f.port.value.trim();
  if (port !== "") body.port = Number(port);
  for (const k of ["provider", "country", "state", "city", "zip", "comment"]) if (f[k].value.trim()) body[k] = f[k].value.trim();
  if (f.test.value) body.test = f.test.value;
  err.textContent = "";
  $("#add-node-submit").disabled = true;
  try {
    const n = await api.addNode(body);
    $("#add-node").close();
    toast(`Added node ${n.id} (${n.ip}).`);
    if (n.job != null) watchJob(n.job);
    refresh();
  } catch (x) {
    if (x instanceof ApiError && x.status === 401) { signOut("Your token was refused; sign in again."); return; }
    // The server's own words: the import's message for the same value.
    err.textContent = x instanceof ApiError ? x.message : errorText(x);
    err.dataset.status = x instanceof ApiError ? String(x.status) : "";
  } finally {
    $("#add-node-submit").disabled = false;
  }
}

// --- autocomplete of location fields ---------------------------------------------------

/** Fills the field's <datalist> with the values the store holds (most frequent first). */
function autocomplete(input) {
  const field = input.dataset.values;
  let timer = null;
  let seq = 0;
  const load = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = ++seq;
      let values;
      // Text the server refuses (a control character) just offers nothing.
      try { values = await api.values(field, input.value.trim()); } catch { return; }
      if (mine !== seq) return;
      const list = document.getElementById(input.getAttribute("list"));
      if (!list) return;
      list.replaceChildren(...values.map((v) => h("option", { value: v.value, label: `${v.value} (${plural(v.count, "node")})` })));
      list.dataset.loaded = field;
    }, 150);
  };
  input.addEventListener("focus", load);
  input.addEventListener("input", load);
}

// --- import dialog ------------------------------------------------------------------

function openImport() {
  $("#import-report").replaceChildren();
  $("#import-submit").disabled = false;
  $("#import").showModal();
  $("#import-text").focus();
}

async function submitImport(e) {
  e.preventDefault();
  // A chosen file is sent as it is (the browser streams it); else the pasted text.
  const file = $("#import-file").files[0];
  const text = file ? "" : $("#import-text").value;
  if (!file && !text.trim()) { $("#import-report").replaceChildren(h("p", { class: "error" }, "Paste a node list or choose a file.")); return; }
  $("#import-submit").disabled = true;
  $("#import-report").replaceChildren(h("p", {}, "Importing…"));
  let r = await guard(() => api.import(file || text, $("#import-conflict").value, file ? file.name : ""));
  // A large file is imported in the background: follow its progress.
  if (r && r.state) r = await followImport(r);
  $("#import-submit").disabled = false;
  if (!r) { $("#import-report").replaceChildren(); return; }
  if (r.summary) renderImportReport(r.summary);
  if (r.error) $("#import-report").prepend(h("p", { class: "error" }, `The import failed: ${r.error}`));
  else if (r.state === "cancelled") $("#import-report").prepend(h("p", { class: "error" }, "The import was cancelled: the rows reported here went in, the rest were not read."));
  if (r.job != null) watchJob(r.job);
  $("#import-text").value = "";
  $("#import-file").value = "";
  refresh();
}

/** Polls a background import until it ends; shows its progress meanwhile. */
async function followImport(imp) {
  while (imp && imp.state === "running") {
    $("#import-report").replaceChildren(h("p", { class: "import-progress" },
      `Importing in the background… ${imp.percent.toFixed(1)} % (${nf.format(imp.bytes_processed)} of ${nf.format(imp.bytes_total)} bytes)`));
    await sleep(500);
    const id = imp.id;
    imp = await guard(() => api.importStatus(id));
  }
  return imp;
}

function renderImportReport(r) {
  const n = (x) => (Array.isArray(x) ? x.length : x ?? 0);
  const summary = h("p", { class: "import-summary" },
    `Added ${nf.format(n(r.added))}, replaced ${nf.format(n(r.replaced))}, duplicates ${nf.format(n(r.duplicates))}, conflicts ${nf.format(n(r.conflicts))}, rejected ${nf.format(n(r.errors))}.`);
  const parts = [summary];
  if (r.failure) parts.push(h("p", { class: "error" }, `The database failed during the import: ${r.failure}`));
  const bad = [
    ...(r.errors || []).map((e) => ({ line: e.line, what: "rejected", why: e.reason, text: e.text })),
    ...(r.conflicts || []).map((c) => ({ line: c.line, what: "conflict", why: c.with_node != null ? `same address and login as node ${c.with_node}` : `same address and login as line ${c.with_line}` })),
  ].sort((a, b) => a.line - b.line);
  if (bad.length) {
    parts.push(h("table", { class: "import-errors" },
      h("caption", {}, "Rows not imported"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Line"), h("th", { scope: "col" }, "Why"), h("th", { scope: "col" }, "Text"))),
      h("tbody", {}, bad.map((b) => h("tr", { dataset: { line: String(b.line) } },
        h("td", { class: "num" }, String(b.line)), h("td", {}, `${b.what}: ${b.why}`), h("td", {}, h("code", {}, b.text || "")))))));
  }
  $("#import-report").replaceChildren(...parts);
}

// --- wiring -------------------------------------------------------------------------

function readFilterForm() {
  const f = $("#filters").elements;
  for (const k of FILTER_FIELDS) state.filter[k] = f[k].value.trim();
}

function init() {
  $("#signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const t = $("#token").value.trim();
    if (!t) { $("#signin-error").textContent = "Paste a token."; return; }
    $("#signin-error").textContent = "";
    try { await signIn(t); } catch (err) {
      $("#signin-error").textContent = err instanceof ApiError && err.status === 401 ? "This token is not valid." : `Cannot sign in: ${errorText(err)}`;
    }
  });
  $("#password-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("#account-name").value.trim();
    const password = $("#account-password").value;
    const err = $("#password-signin-error");
    if (!name || !password) { err.textContent = "Give your name and your password."; return; }
    err.textContent = "";
    try { await signInWithPassword(name, password); } catch (x) {
      err.textContent = x instanceof ApiError && x.status === 401 ? "Wrong name or password."
        : x instanceof ApiError && x.status === 429 ? `Too many failed sign-ins: try again in ${x.problem && x.problem.retry_after ? fmtDuration(x.problem.retry_after) : "a while"}.`
        : `Cannot sign in: ${errorText(x)}`;
    } finally {
      $("#account-password").value = "";
    }
  });
  $("#sign-out").addEventListener("click", () => signOutClicked());
  $("#password-open").addEventListener("click", () => {
    $("#password-change-form").reset();
    $("#password-change-error").textContent = "";
    $("#password-dialog").showModal();
  });
  $("#password-close").addEventListener("click", (e) => { e.preventDefault(); $("#password-dialog").close(); });
  $("#password-change-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = e.target.elements;
    const err = $("#password-change-error");
    if (f.new.value.length < 12) { err.textContent = "The new password needs at least 12 characters."; return; }
    try {
      await api.changePassword(f.current.value, f.new.value);
      $("#password-dialog").close();
      toast("Password changed; your other sessions are signed out.");
    } catch (x) {
      if (x instanceof ApiError && x.status === 401) { signOut("Your session ended; sign in again."); return; }
      err.textContent = errorText(x);
    } finally {
      e.target.reset();
    }
  });
  // Back/forward from the page cache: show nothing unless still signed in.
  window.addEventListener("pageshow", (e) => {
    if (!e.persisted || token.get()) return;
    clearPrivate();
    api.me().then((me) => { if (!me.csrf_token) signOut(); else session.csrf = me.csrf_token; })
      .catch(() => signOut());
  });
  $("#refresh").addEventListener("click", () => refresh());
  $("#services-refresh").addEventListener("click", () => guard(loadServices));
  $("#workers-refresh").addEventListener("click", () => guard(loadWorkers));
  $("#audit-refresh").addEventListener("click", () => guard(() => loadAudit(false)));
  $("#audit-more").addEventListener("click", () => guard(() => loadAudit(true)));
  // The services' counters move: keep them fresh while the console is shown.
  setInterval(() => { if (!$("#console").hidden && !document.hidden) { guard(loadServices); guard(loadWorkers); } }, 5000);
  $("#import-open").addEventListener("click", openImport);
  $("#add-node-open").addEventListener("click", openAddNode);
  $("#add-node-form").addEventListener("submit", submitAddNode);
  $("#add-node-close").addEventListener("click", (e) => { e.preventDefault(); $("#add-node").close(); });
  $("#node-edit").addEventListener("submit", submitEdit);
  $("#cancel-all").addEventListener("click", cancelAll);
  for (const input of $$("input[data-values]")) autocomplete(input);
  $("#import-form").addEventListener("submit", submitImport);
  $("#import-close").addEventListener("click", (e) => { e.preventDefault(); $("#import").close(); });
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); readFilterForm(); state.page = 1; refresh(); });
  $("#filters").addEventListener("reset", () => setTimeout(() => { readFilterForm(); state.filter.statuses = []; state.page = 1; refresh(); }));
  $("#prev").addEventListener("click", () => { if (state.page > 1) { state.page--; refresh(); } });
  $("#next").addEventListener("click", () => { state.page++; refresh(); });
  $("#limit").addEventListener("change", (e) => { state.limit = Number(e.target.value); state.page = 1; refresh(); });
  for (const th of $$("#node-table th[data-sort]")) {
    $("button", th).addEventListener("click", () => {
      const key = th.dataset.sort;
      if (state.sort === key) state.desc = !state.desc; else { state.sort = key; state.desc = false; }
      refresh();
    });
  }
  $("#select-page").addEventListener("change", (e) => {
    for (const n of state.rows) { if (e.target.checked) state.selected.add(n.id); else state.selected.delete(n.id); }
    renderTable();
  });
  for (const b of $$("#actions [data-action]")) b.addEventListener("click", () => runAction(b.dataset.action));
  // On a phone the filters start folded, so the table is in view.
  if (matchMedia("(max-width: 720px)").matches) $("#filters-box").open = false;
  if (token.get()) { showConsole(); return; }
  // A session cookie (HttpOnly: the page cannot see it) may still be open.
  api.me().then((me) => {
    if (!me.csrf_token) throw new Error("no session");
    session.csrf = me.csrf_token;
    showConsole();
  }).catch(() => { $("#account-name").focus(); });
}

init();
