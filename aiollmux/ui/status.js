// The aiollmux status page (docs/design.md §13): one stream of events (GET /admin/events) keeps
// the picture live; admin calls carry the token from sessionStorage, never a URL.
"use strict";

const TOKEN_KEY = "aiollmux-admin-token";
const LOG_LIMIT = 500;
const TIMELINE_LIMIT = 200;
const REFRESH_MIN_MS = 1000; // never ask for /admin/status more often than this
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 5000;

const state = {
  status: null,        // the last /admin/status document
  lastWake: {},        // model -> {seconds, ok, ts}
  timeline: [],        // switch and hook events, oldest first
  log: [],             // every event, oldest first
  busy: {},            // action key -> {label, started}
  errors: {},          // model or group -> message of its last failed action
  connected: false,
};

const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, value);
  for (const child of children) el.append(child instanceof Node ? child : String(child));
  return el;
}

const seconds = (s) => (s === null || s === undefined ? "–" : `${Number(s).toFixed(s < 10 ? 1 : 0)} s`);
const clock = (ts) => new Date(ts).toLocaleTimeString([], { hour12: false });

// -- admin calls -------------------------------------------------------------------------

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

class AdminError extends Error {}

async function admin(method, path, body) {
  const init = { method, headers: { ...authHeaders() }, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new AdminError("the daemon is unreachable");
  }
  const text = await response.text();
  let document = null;
  try { document = JSON.parse(text); } catch (error) { /* not JSON: said below */ }
  if (response.status === 401) askForToken(document);
  if (!response.ok) {
    const message = document && document.error ? document.error.message : text.slice(0, 200);
    throw new AdminError(`HTTP ${response.status}: ${message}`);
  }
  return document;
}

// -- the event stream --------------------------------------------------------------------

let retryMs = RETRY_MIN_MS;
let streamAbort = null;

async function connect() {
  streamAbort = new AbortController();
  let response;
  try {
    response = await fetch("/admin/events", {
      headers: authHeaders(), cache: "no-store", signal: streamAbort.signal,
    });
  } catch (error) {
    return disconnected("The daemon is unreachable.");
  }
  if (response.status === 401) {
    let document = null;
    try { document = await response.json(); } catch (error) { /* shown as is */ }
    setConnection("token needed", "warn");
    askForToken(document);
    return; // the token form connects again
  }
  if (!response.ok) return disconnected(`The event stream answered HTTP ${response.status}.`);
  retryMs = RETRY_MIN_MS;
  try {
    await readEvents(response.body.getReader());
  } catch (error) {
    if (streamAbort.signal.aborted) return;
  }
  disconnected("The daemon closed the event stream (restarting or stopping?).");
}

async function readEvents(reader) {
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += decoder.decode(value, { stream: true });
    let end;
    while ((end = pending.indexOf("\n\n")) >= 0) {
      const block = pending.slice(0, end);
      pending = pending.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

function disconnected(reason) {
  state.connected = false;
  setConnection("unreachable", "bad");
  const wait = retryMs;
  retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
  const seen = state.lastSeen ? ` Last heard from at ${clock(state.lastSeen)}.` : "";
  showBanner(`${reason}${seen} Trying again in ${Math.round(wait / 1000)} s…`);
  setTimeout(connect, wait);
}

function setConnection(text, kind) {
  const pill = $("connection");
  pill.textContent = text;
  pill.className = `pill ${kind || ""}`;
}

function showBanner(text) {
  const banner = $("banner");
  banner.textContent = text;
  banner.hidden = !text;
}

// -- events ------------------------------------------------------------------------------

const TIMELINE_EVENTS = new Set([
  "switch_started", "model_activated", "switch_failed", "hook_completed", "hook_failed",
  "hook_timeout", "sleep_hook_failed", "model_lost", "idle_sleep", "model_adopted",
]);

function onEvent(event) {
  state.lastSeen = Date.now();
  if (event.event === "snapshot") {
    if (!state.connected) {
      state.connected = true;
      setConnection("live", "ok");
      showBanner("");
    }
    if (duringRefresh) duringRefresh.push(event); // newer than the status being fetched
    state.status = event.status;
    state.lastWake = event.last_wake || {};
    state.timeline = (event.recent || []).filter((e) => TIMELINE_EVENTS.has(e.event));
    if (!state.log.length) state.log = (event.recent || []).slice();
    renderAll();
    return;
  }
  state.log.push(event);
  if (state.log.length > LOG_LIMIT) state.log.splice(0, state.log.length - LOG_LIMIT);
  appendLog(event);
  if (event.event === "shutting_down") {
    setConnection("stopping", "warn");
    showBanner("The daemon is shutting down; this page reconnects when it is back.");
  }
  if (TIMELINE_EVENTS.has(event.event)) {
    state.timeline.push(event);
    if (state.timeline.length > TIMELINE_LIMIT) state.timeline.shift();
    renderTimeline();
  }
  if (event.hook === "wake" && /^hook_(completed|failed|timeout)$/.test(event.event)) {
    state.lastWake[event.model] = {
      seconds: event.duration, ok: event.event === "hook_completed", ts: event.ts,
    };
  }
  applyEvent(event);
  if (duringRefresh) duringRefresh.push(event);
  renderGroups();
  renderModels();
  refreshSoon();
}

// What an event says for sure, at once; /admin/status fills in the rest within a second.
function applyEvent(event) {
  const status = state.status;
  if (!status) return;
  const model = status.models[event.to || event.model];
  const group = model && status.groups[model.group];
  if (event.event === "switch_started" && group) {
    group.state = "switching";
    group.switching = { from: event.from === "idle" ? null : event.from, to: event.to };
    if (group.active_model && status.models[group.active_model]) {
      status.models[group.active_model].state = "draining";
    }
    model.state = "waking";
  } else if (event.event === "model_activated" && group) {
    for (const [name, other] of Object.entries(status.models)) {
      if (other.group === model.group && other.state === "active" && name !== event.to) {
        other.state = "asleep";
      }
    }
    model.state = "active";
    group.state = "active";
    group.active_model = event.to;
    group.switching = null;
  } else if (event.event === "switch_failed" && group) {
    model.state = "asleep";
    group.switching = null;
  }
}

let refreshTimer = null;
let lastRefresh = 0;
let duringRefresh = null; // events that arrived while a status request was under way

function refreshSoon() {
  if (refreshTimer || duringRefresh) return; // a refresh that is under way is redone
  const wait = Math.max(0, lastRefresh + REFRESH_MIN_MS - Date.now());
  refreshTimer = setTimeout(refresh, wait);
}

async function refresh() {
  refreshTimer = null;
  lastRefresh = Date.now();
  duringRefresh = [];
  let missed = [];
  try {
    const status = await admin("GET", "/admin/status");
    missed = duringRefresh;
    if (!missed.some((event) => event.event === "snapshot")) {
      // The document was made before the events that came meanwhile: apply them again.
      state.status = status;
      for (const event of missed) applyEvent(event);
    }
    renderGroups();
    renderModels();
    renderConfig();
  } catch (error) {
    // The stream says when the daemon is gone; the next event asks again.
  } finally {
    duringRefresh = null;
    if (missed.length) refreshSoon();
  }
}

// -- actions -----------------------------------------------------------------------------

async function act(key, label, target, method, path, body) {
  if (state.busy[key]) return;
  state.busy[key] = { label, started: Date.now() };
  delete state.errors[target];
  renderAll();
  const ticker = setInterval(renderBusy, 250);
  try {
    const answer = await admin(method, path, body);
    if (path === "/admin/reload") {
      flash(answer.status === "applied" ? `Config generation ${answer.generation} applied` :
        "Config unchanged");
    }
  } catch (error) {
    state.errors[target] = error.message;
  } finally {
    clearInterval(ticker);
    delete state.busy[key];
    renderAll();
    refreshSoon();
  }
}

function renderBusy() {
  for (const el of document.querySelectorAll("[data-busy]")) {
    const busy = state.busy[el.dataset.busy];
    if (busy) el.textContent = `${busy.label} ${((Date.now() - busy.started) / 1000).toFixed(1)} s`;
  }
}

let flashTimer = null;
function flash(text) {
  state.flash = text;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { state.flash = null; renderConfig(); }, 4000);
  renderConfig();
}

function actionButton(key, label, busyLabel, target, handler, extra) {
  const busy = state.busy[key];
  const attrs = { type: "button", class: "small-button", onclick: handler, ...(extra || {}) };
  if (busy) {
    attrs.disabled = true;
    attrs["data-busy"] = key;
    attrs.class += " busy";
  }
  return h("button", attrs, busy ? `${busy.label} …` : label);
}

// -- rendering ---------------------------------------------------------------------------

function renderAll() {
  renderConfig();
  renderGroups();
  renderModels();
  renderTimeline();
  renderLog();
}

function renderConfig() {
  const status = state.status;
  if (!status) return;
  const config = status.config || {};
  const file = String(config.path || "").split("/").pop();
  const parts = [`${file} · generation ${config.generation}`];
  if (config.restart_required) parts.push("restart needed for host/port");
  $("config").textContent = state.flash || parts.join(" · ");
  $("config").title = `${config.path}${config.loaded_at ? `, loaded at ${config.loaded_at}` : ""}`;
  const reload = $("reload");
  const busy = state.busy.reload;
  reload.disabled = Boolean(busy);
  reload.textContent = busy ? "Reloading…" : "Reload config";
  const error = state.errors.reload || config.last_reload_error;
  if (error) {
    showBanner(`Configuration reload failed: ${error}`);
  } else if (state.connected) {
    showBanner("");
  }
}

const badge = (value) => h("span", { class: `badge state-${value}` }, value);

function renderGroups() {
  const status = state.status;
  const container = $("groups");
  if (!status) return;
  container.replaceChildren(...Object.entries(status.groups).map(([name, group]) => {
    const members = Object.entries(status.models).filter(([, m]) => m.group === name);
    const awake = members.filter(([, m]) => m.state === "active").map(([id]) => id);
    const key = `sleep-group:${name}`;
    const body = [
      h("div", { class: "group-head" },
        h("strong", {}, name), badge(group.state),
        h("span", { class: "spacer" }),
        actionButton(key, "Sleep group", "Sleeping", `group:${name}`,
          () => act(key, "Sleeping", `group:${name}`, "POST", "/admin/sleep", { group: name }),
          { disabled: !awake.length && !group.switching, title: `Put group ${name} to sleep` })),
      h("div", { class: "muted small" },
        group.switching
          ? `switching ${group.switching.from || "idle"} → ${group.switching.to || "idle"}`
          : `awake: ${awake.join(", ") || "none"} · ${members.length} model${members.length === 1 ? "" : "s"}`),
    ];
    if (typeof group.memory_gb === "number") body.push(memoryBar(group));
    if (state.errors[`group:${name}`]) body.push(h("div", { class: "error small" }, state.errors[`group:${name}`]));
    return h("article", { class: "group", "data-group": name }, body);
  }));
}

function memoryBar(group) {
  const used = Number(group.memory_used_gb || 0);
  const share = group.memory_gb > 0 ? Math.min(1, used / group.memory_gb) : 0;
  const fill = h("div", { class: `fill${share > 0.9 ? " high" : ""}` });
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  return h("div", { class: "memory" },
    h("div", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": group.memory_gb,
      "aria-valuenow": used, "aria-label": "memory in use" }, fill),
    h("span", { class: "small muted" }, `${used.toFixed(1)} / ${group.memory_gb} GB`));
}

function switchCost(name, model) {
  const status = state.status;
  const group = status.groups[model.group] || {};
  const from = group.active_model || "idle";
  const costs = (status.switch_costs || []).filter((c) => c.to === name);
  if (!costs.length) return "–";
  const exact = costs.find((c) => c.from === from);
  if (exact) return seconds(exact.seconds);
  return `≤ ${seconds(Math.max(...costs.map((c) => c.seconds)))}`;
}

function renderModels() {
  const status = state.status;
  if (!status) return;
  const rows = Object.entries(status.models).map(([name, model]) => {
    const group = status.groups[model.group] || {};
    const switchKey = `switch:${name}`;
    const sleepKey = `sleep:${name}`;
    const active = model.state === "active";
    const wake = state.lastWake[name];
    const aliases = (model.aliases || []).length ? h("div", { class: "small muted" }, `aliases: ${model.aliases.join(", ")}`) : null;
    const error = state.errors[name] ? h("div", { class: "error small action-error" }, state.errors[name]) : null;
    const sleepTitle = active ? `Drain ${name} and put it to sleep` : `${name} is not awake`;
    return h("tr", { "data-model": name, class: model.removed ? "removed" : "" },
      h("td", { "data-label": "Model" }, h("strong", {}, name), model.removed ? " (removed)" : "", aliases, error),
      h("td", { "data-label": "State" }, badge(model.state)),
      h("td", { "data-label": "Group" }, model.group),
      h("td", { "data-label": "Port", class: "num" }, model.port),
      h("td", { "data-label": "In flight", class: "num" }, model.in_flight),
      h("td", { "data-label": "Queued", class: "num" }, model.queued),
      h("td", { "data-label": "Memory", class: "num memory-col" }, typeof model.memory_gb === "number" ? `${model.memory_gb} GB` : "–"),
      h("td", { "data-label": "Switch cost", class: "num" }, switchCost(name, model)),
      h("td", { "data-label": "Last wake", class: `num${wake && !wake.ok ? " error" : ""}` },
        wake ? (wake.ok ? seconds(wake.seconds) : `failed (${seconds(wake.seconds)})`) : "–"),
      h("td", { "data-label": "Actions", class: "actions" },
        actionButton(switchKey, "Switch", "Switching", name,
          () => act(switchKey, "Switching", name, "POST", "/admin/switch", { model: name }),
          { disabled: active || model.removed || Boolean(group.switching && group.switching.to === name),
            title: `Make ${name} the active model now` }),
        actionButton(sleepKey, "Sleep", "Sleeping", name,
          () => {
            // Only this model: the other awake members of a budget group stay awake.
            flash(`Sleeping ${name}`);
            act(sleepKey, "Sleeping", name, "POST", "/admin/sleep", { model: name });
          },
          { disabled: !active, title: sleepTitle })));
  });
  $("models").tBodies[0].replaceChildren(...rows);
  const memory = Object.values(status.models).some((m) => typeof m.memory_gb === "number");
  $("models").classList.toggle("no-memory", !memory);
}

function renderTimeline() {
  const container = $("timeline");
  const events = state.timeline;
  const runs = events.filter((e) => /^hook_/.test(e.event) && e.hook !== "alive");
  const marks = events.filter((e) => !/^hook_/.test(e.event));
  if (!runs.length && !marks.length) {
    container.replaceChildren(h("p", { class: "muted small" }, "No switches or hook runs yet."));
    return;
  }
  const time = (e) => Date.parse(e.ts);
  const starts = runs.map((e) => time(e) - 1000 * (e.duration || 0));
  const end = Math.max(Date.now(), ...events.map(time));
  const first = Math.min(...starts, ...marks.map(time));
  // From the first event shown to now, with a little room before it (at least 10 s).
  const start = Math.min(end - 10_000, first - Math.max(500, (end - first) * 0.04));
  const models = [...new Set(events.map((e) => e.model || e.to).filter(Boolean))].sort();
  const width = Math.max(320, container.clientWidth - 20);
  const longest = Math.max(...models.map((m) => m.length));
  const left = Math.min(180, 14 + 7 * longest), right = 14, row = 24, top = 6;
  const height = top + row * models.length + 24;
  const x = (t) => left + ((t - start) / (end - start)) * (width - left - right);
  const y = (m) => top + row * models.indexOf(m);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "Timeline of switches and hook runs", class: "chart" });
  models.forEach((m, i) => {
    chart.append(svg("rect", { x: 0, y: y(m), width, height: row, class: i % 2 ? "lane odd" : "lane" }));
    chart.append(svg("text", { x: 6, y: y(m) + row / 2 + 4, class: "label" }, m));
  });
  const ticks = width < 600 ? 2 : 4;
  for (let i = 0; i <= ticks; i++) {
    const t = start + ((end - start) * i) / ticks;
    const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
    chart.append(svg("line", { x1: x(t), x2: x(t), y1: top, y2: height - 20, class: "grid" }));
    chart.append(svg("text", { x: x(t), y: height - 6, class: "tick", "text-anchor": anchor }, clock(t)));
  }
  for (const e of runs) {
    const failed = e.event !== "hook_completed";
    const x0 = x(time(e) - 1000 * (e.duration || 0));
    const bar = svg("rect", { x: x0, y: y(e.model) + 4, width: Math.max(2, x(time(e)) - x0), height: row - 8,
      rx: 2, class: `run ${e.hook}${failed ? " failed" : ""}` });
    bar.append(svg("title", {}, `${e.hook} hook of ${e.model}: ${seconds(e.duration)}${failed ? ` (${e.event})` : ""}`));
    chart.append(bar);
    if (failed) chart.append(svg("text", { x: x(time(e)) + 3, y: y(e.model) + row / 2 + 4, class: "fail-mark" }, "✕"));
  }
  for (const e of marks) {
    const m = e.to || e.model;
    if (!models.includes(m)) continue;
    const cx = x(time(e)), cy = y(m) + row / 2;
    const bad = /failed|lost/.test(e.event);
    const shape = e.event === "switch_started"
      ? svg("rect", { x: cx - 1, y: y(m) + 2, width: 2, height: row - 4, class: "mark switch_started" })
      : svg("circle", { cx, cy, r: bad ? 5 : 4, class: `mark ${e.event}${bad ? " failed" : ""}` });
    shape.append(svg("title", {}, `${clock(time(e))} ${e.event}${e.from ? ` from ${e.from}` : ""}${e.seconds !== undefined ? ` (${seconds(e.seconds)})` : ""}`));
    chart.append(shape);
  }
  const key = (kind, text) => h("span", { class: "legend-item" }, h("span", { class: `key ${kind}` }), text);
  const legend = h("div", { class: "legend small muted" },
    key("wake", "wake hook"), key("sleep", "sleep hook"), key("failed", "failed"),
    key("tick", "switch started"), key("dot", "model active"));
  container.replaceChildren(chart, legend);
}

function logMatches(event) {
  if (event.event === "requests" && !$("show-requests").checked) return false;
  const filter = $("filter").value.trim().toLowerCase();
  if (!filter) return true;
  return JSON.stringify(event).toLowerCase().includes(filter);
}

function logLine(event) {
  const { ts, event: name, level, message, logger, ...fields } = event;
  const details = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  const text = name === "requests" ? `${event.model}: ${event.count} requests ${JSON.stringify(event.by_status)}` : message || details;
  return h("li", { class: `level-${level || "info"}`, "data-event": name },
    h("time", { datetime: ts }, clock(ts)), h("span", { class: "event-name" }, name),
    h("span", { class: "event-text", title: details }, text));
}

function renderLog() {
  const visible = state.log.filter(logMatches).slice(-LOG_LIMIT).reverse();
  $("log").replaceChildren(...visible.map(logLine));
}

function appendLog(event) {
  if (!logMatches(event)) return;
  const log = $("log");
  log.prepend(logLine(event));
  while (log.childElementCount > LOG_LIMIT) log.lastElementChild.remove();
}

// -- the token prompt --------------------------------------------------------------------

function askForToken(document) {
  const dialog = $("token-dialog");
  if (!dialog.hidden) return;
  const had = Boolean(sessionStorage.getItem(TOKEN_KEY));
  const error = $("token-error");
  error.hidden = !had;
  error.textContent = had ? "That token was not accepted." : "";
  if (!had && document && document.error && !/token is required/.test(document.error.message)) {
    error.hidden = false; // loopback-only daemon seen from another machine: say why
    error.textContent = document.error.message;
  }
  dialog.hidden = false;
  setConnection("token needed", "warn");
  $("token").focus();
}

function onTokenSubmit(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("token-dialog").hidden = true;
  if (streamAbort) streamAbort.abort();
  setConnection("connecting…");
  connect();
}

document.addEventListener("DOMContentLoaded", () => {
  $("reload").addEventListener("click", () => act("reload", "Reloading", "reload", "POST", "/admin/reload"));
  $("filter").addEventListener("input", renderLog);
  $("show-requests").addEventListener("change", renderLog);
  $("token-form").addEventListener("submit", onTokenSubmit);
  connect();
  setInterval(() => { if (state.connected) renderTimeline(); }, 5000); // the time axis moves
  window.addEventListener("resize", renderTimeline);
});
