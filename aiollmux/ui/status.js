// The aiollmux status page (docs/design.md §13): one stream of events (GET /admin/events) keeps
// the picture live; admin calls carry the token from sessionStorage, never a URL.
"use strict";

const TOKEN_KEY = "aiollmux-admin-token";
const LOG_LIMIT = 500;
const TIMELINE_LIMIT = 200;
const REFRESH_MIN_MS = 1000; // never ask for /admin/status more often than this
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 5000;
const WATCHDOG_MS = 35000; // the daemon sends a keep-alive every 15 s: silence this long is a dead link

// Maps keyed by model ids: no prototype, so a model named "constructor" is only itself.
const dict = (from) => Object.assign(Object.create(null), from || {});

const state = {
  status: null,        // the last /admin/status document
  lastWake: dict(),    // model -> {seconds, ok, ts}
  timeline: [],        // switch and hook events, oldest first
  log: [],             // every event, oldest first
  busy: dict(),        // action key -> {label, started}
  errors: dict(),      // model or group -> message of its last failed action
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
let streamAbort = null; // the current connection's; each connection tests its own
let retryTimer = null;

async function connect() {
  clearTimeout(retryTimer); // connecting by hand (the token form): no second one later
  retryTimer = null;
  if (streamAbort) streamAbort.abort();
  const abort = new AbortController();
  streamAbort = abort;
  let silent = false;
  let watchdog = null;
  const heard = () => { // on every chunk: a link silent past WATCHDOG_MS is dead
    clearTimeout(watchdog);
    watchdog = setTimeout(() => { silent = true; abort.abort(); }, WATCHDOG_MS);
  };
  let response;
  try {
    response = await fetch("/admin/events", {
      headers: authHeaders(), cache: "no-store", signal: abort.signal,
    });
  } catch (error) {
    if (abort.signal.aborted) return; // replaced by a newer connection
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
  state.connected = false; // a new stream: its snapshot says "live" again
  heard();
  try {
    await readEvents(response.body.getReader(), heard);
  } catch (error) {
    // Aborted or broken: told apart below.
  } finally {
    clearTimeout(watchdog);
  }
  if (silent) {
    disconnected(`Nothing heard from the daemon for ${WATCHDOG_MS / 1000} s.`);
  } else if (!abort.signal.aborted) {
    disconnected("The daemon closed the event stream (restarting or stopping?).");
  }
}

async function readEvents(reader, heard) {
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    heard();
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
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, wait);
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
    state.lastWake = dict(event.last_wake);
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
  if (event.event === "config_reloaded" && state.errors.reload) {
    delete state.errors.reload; // a reload worked since the one that failed: no stale banner
    renderConfig();
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

// Rows and cards are updated in place, keyed by data-group / data-model: their buttons stay
// the same elements, so a click or the focus is not lost to an event that arrived meanwhile.
function renderGroups() {
  const status = state.status;
  const container = $("groups");
  if (!status) return;
  const existing = new Map([...container.children].map((el) => [el.dataset.group, el]));
  Object.entries(status.groups).forEach(([name, group], index) => {
    const card = existing.get(name) || groupCard(name);
    existing.delete(name);
    updateGroupCard(card, name, group);
    if (container.children[index] !== card) container.insertBefore(card, container.children[index] || null);
  });
  for (const stale of existing.values()) stale.remove();
}

function groupCard(name) {
  const key = `sleep-group:${name}`;
  const button = h("button", { type: "button", class: "small-button", "data-key": key,
    onclick: () => act(key, "Sleeping", `group:${name}`, "POST", "/admin/sleep", { group: name }) },
  "Sleep group");
  return h("article", { class: "group", "data-group": name },
    h("div", { class: "group-head" }, h("strong", {}, name), h("span", {}), h("span", { class: "spacer" }), button));
}

function updateGroupCard(card, name, group) {
  const status = state.status;
  const members = Object.entries(status.models).filter(([, m]) => m.group === name);
  const awake = members.filter(([, m]) => m.state === "active").map(([id]) => id);
  const head = card.firstElementChild;
  setBadge(head.children[1], group.state);
  updateButton(head.querySelector("button"), "Sleep group", !awake.length && !group.switching,
    `Put group ${name} to sleep`);
  while (head.nextSibling) head.nextSibling.remove();
  card.append(h("div", { class: "muted small" },
    group.switching
      ? `switching ${group.switching.from || "idle"} → ${group.switching.to || "idle"}`
      : `awake: ${awake.join(", ") || "none"} · ${members.length} model${members.length === 1 ? "" : "s"}`));
  if (typeof group.memory_gb === "number") card.append(memoryBar(group));
  const error = state.errors[`group:${name}`];
  if (error) card.append(h("div", { class: "error small" }, error));
}

function setBadge(holder, value) {
  if (holder.textContent === String(value) && holder.firstElementChild) return;
  holder.replaceChildren(badge(value));
}

function setText(cell, text) {
  if (cell.textContent !== String(text)) cell.textContent = String(text);
}

// A kept button, brought up to date: its label, progress and whether it may be clicked.
function updateButton(button, label, disabled, title) {
  const key = button.dataset.key;
  const busy = state.busy[key];
  button.disabled = Boolean(busy || disabled);
  button.title = title;
  button.classList.toggle("busy", Boolean(busy));
  if (busy) {
    if (button.dataset.busy !== key) button.textContent = `${busy.label} …`;
    button.dataset.busy = key; // renderBusy ticks the seconds
  } else {
    delete button.dataset.busy;
    setText(button, label);
  }
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
  const body = $("models").tBodies[0];
  const existing = new Map([...body.rows].map((tr) => [tr.dataset.model, tr]));
  Object.entries(status.models).forEach(([name, model], index) => {
    const tr = existing.get(name) || modelRow(name);
    existing.delete(name);
    updateModelRow(tr, name, model);
    if (body.rows[index] !== tr) body.insertBefore(tr, body.rows[index] || null);
  });
  for (const stale of existing.values()) stale.remove();
  const memory = Object.values(status.models).some((m) => typeof m.memory_gb === "number");
  $("models").classList.toggle("no-memory", !memory);
}

function modelRow(name) {
  const cell = (label, cls) => h("td", { "data-label": label, class: cls });
  const switchKey = `switch:${name}`;
  const sleepKey = `sleep:${name}`;
  const switchButton = h("button", { type: "button", class: "small-button", "data-key": switchKey,
    onclick: () => act(switchKey, "Switching", name, "POST", "/admin/switch", { model: name }) },
  "Switch");
  const sleepButton = h("button", { type: "button", class: "small-button", "data-key": sleepKey,
    onclick: () => {
      // Only this model: the other awake members of a budget group stay awake.
      flash(`Sleeping ${name}`);
      act(sleepKey, "Sleeping", name, "POST", "/admin/sleep", { model: name });
    } }, "Sleep");
  return h("tr", { "data-model": name },
    cell("Model"), cell("State"), cell("Group"), cell("Port", "num"), cell("In flight", "num"),
    cell("Queued", "num"), cell("Memory", "num memory-col"), cell("Switch cost", "num"),
    cell("Last wake", "num"), h("td", { "data-label": "Actions", class: "actions" }, switchButton, sleepButton));
}

function updateModelRow(tr, name, model) {
  const status = state.status;
  const group = status.groups[model.group] || {};
  const active = model.state === "active";
  const wake = state.lastWake[name];
  const [who, stateCell, groupCell, port, inFlight, queued, memory, cost, lastWake, actions] = tr.cells;
  tr.className = model.removed ? "removed" : "";
  const aliases = (model.aliases || []).length ? h("div", { class: "small muted" }, `aliases: ${model.aliases.join(", ")}`) : null;
  const error = state.errors[name] ? h("div", { class: "error small action-error" }, state.errors[name]) : null;
  who.replaceChildren(...[h("strong", {}, name), model.removed ? " (removed)" : null, aliases, error].filter(Boolean));
  setBadge(stateCell, model.state);
  setText(groupCell, model.group);
  setText(port, model.port);
  setText(inFlight, model.in_flight);
  setText(queued, model.queued);
  setText(memory, typeof model.memory_gb === "number" ? `${model.memory_gb} GB` : "–");
  setText(cost, switchCost(name, model));
  lastWake.classList.toggle("error", Boolean(wake && !wake.ok));
  setText(lastWake, wake ? (wake.ok ? seconds(wake.seconds) : `failed (${seconds(wake.seconds)})`) : "–");
  const [switchButton, sleepButton] = actions.children;
  updateButton(switchButton, "Switch",
    active || model.removed || Boolean(group.switching && group.switching.to === name),
    `Make ${name} the active model now`);
  updateButton(sleepButton, "Sleep", !active, active ? `Drain ${name} and put it to sleep` : `${name} is not awake`);
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
  if (event.event === "requests" && !event.errors && !$("show-requests").checked) return false;
  const filter = $("filter").value.trim().toLowerCase();
  if (!filter) return true;
  return JSON.stringify(event).toLowerCase().includes(filter);
}

function logLine(event) {
  const { ts, event: name, level, message, logger, ...fields } = event;
  const details = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  const errors = event.errors ? ` errors ${JSON.stringify(event.errors)}` : "";
  const text = name === "requests" ? `${event.model}: ${event.count} requests ${JSON.stringify(event.by_status)}${errors}` : message || details;
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
