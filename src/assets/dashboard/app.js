// workerrmq console: sign-in, hash routing, polling and the views. Plain
// DOM, no framework and no build step; every request goes to this origin.

const POLL_MS = 2000;
const HISTORY_MS = 5 * 60 * 1000;
const SPARK_POINTS = 30;
const TROUBLE_WINDOW_MS = 60 * 1000;
const STORE_KEY = "workerrmq.console";

const $ = (selector, root = document) => root.querySelector(selector);
const numberFormat = new Intl.NumberFormat(undefined);
const rateFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1, minimumFractionDigits: 1 });
const fmt = (n) => (n === null || n === undefined ? "–" : numberFormat.format(n));
const fmtRate = (n) => rateFormat.format(n);

// ---------------------------------------------------------------- session --

/** Credentials live in this tab's sessionStorage only. */
const session = {
  load() {
    try {
      const raw = sessionStorage.getItem(STORE_KEY);
      return raw ? JSON.parse(raw) : null;
    } catch {
      return null;
    }
  },
  save(value) { sessionStorage.setItem(STORE_KEY, JSON.stringify(value)); },
  clear() { sessionStorage.removeItem(STORE_KEY); },
};

let current = null; // { auth, name, role }

const roleRank = { viewer: 0, publisher: 1, admin: 2 };
const allows = (needed) => current !== null && roleRank[current.role] >= roleRank[needed];

class ApiError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function base64(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

/** A call to the gateway with the session's credentials. Relative paths,
 *  so the console also works behind a proxy's path prefix. */
async function api(method, path, body, auth = current && current.auth) {
  const headers = { Accept: "application/json" };
  if (auth) headers.Authorization = auth;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      // The Authorization header is ours; no cookies, no browser prompt.
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "the gateway does not answer");
  }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (!response.ok) {
    const message = (data && data.message) || `${response.status} ${response.statusText}`;
    if (response.status === 401 && current && auth === current.auth) {
      signOut("Signed out: the gateway no longer accepts these credentials.");
    }
    throw new ApiError(response.status, message, data);
  }
  return data;
}

// ------------------------------------------------------------- banners --

function showError(message) {
  $("#error-text").textContent = message;
  $("#error").hidden = false;
}
function clearError() { $("#error").hidden = true; }
let noticeTimer = 0;
function showNotice(message) {
  const notice = $("#notice");
  notice.textContent = message;
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { notice.hidden = true; }, 4000);
}

/** Runs an operator's action, showing its failure in the banner. */
async function act(button, work) {
  if (button) button.disabled = true;
  clearError();
  try {
    await work();
    await refresh();
  } catch (error) {
    showError(error.message);
  } finally {
    if (button && button.isConnected) button.disabled = false;
  }
}

function confirmDialog(text, okLabel) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    const done = (answer) => {
      dialog.close();
      $("#confirm-ok").onclick = null;
      $("#confirm-cancel").onclick = null;
      dialog.oncancel = null;
      resolve(answer);
    };
    $("#confirm-ok").onclick = () => done(true);
    $("#confirm-cancel").onclick = () => done(false);
    dialog.oncancel = () => done(false);
    dialog.showModal();
    $("#confirm-cancel").focus();
  });
}

// --------------------------------------------------------- DOM helpers --

/** `el("td.num", {title}, "text")`: a tag with classes, attributes, children. */
function el(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag);
  if (classes.length) node.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

/** Keeps one row per item, keyed, updating rows in place so that a poll
 *  never replaces a button under the pointer. */
function syncRows(tbody, items, key, create, update, columns, emptyText) {
  const seen = new Set();
  let previous = null;
  for (const item of items) {
    const id = key(item);
    seen.add(id);
    let row = tbody.rowsByKey?.get(id);
    if (!row) {
      row = create(item);
      tbody.rowsByKey = tbody.rowsByKey || new Map();
      tbody.rowsByKey.set(id, row);
    }
    update(row, item);
    const want = previous ? previous.nextSibling : tbody.firstChild;
    if (want !== row) tbody.insertBefore(row, want);
    previous = row;
  }
  for (const [id, row] of tbody.rowsByKey || []) {
    if (!seen.has(id)) {
      row.remove();
      tbody.rowsByKey.delete(id);
    }
  }
  let empty = $("tr.empty-row", tbody);
  if (items.length === 0 && !empty) {
    empty = el("tr.empty-row", {}, el("td.empty", { colspan: columns }, emptyText));
    tbody.append(empty);
  } else if (items.length > 0 && empty) {
    empty.remove();
  }
}

function ago(iso) {
  if (!iso) return "";
  const ms = Date.now() - Date.parse(iso);
  if (Number.isNaN(ms)) return iso;
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

const STATE_LOOK = {
  running: ["ok", "running"],
  paused: ["idle", "paused"],
  circuit_open: ["bad", "circuit open"],
  reconnecting: ["warn", "reconnecting"],
  stopped: ["idle", "stopped"],
  up: ["ok", "up"],
  down: ["bad", "down"],
  unknown: ["idle", "unknown"],
  // A delivery attempt's outcome, and a message's state by its last one.
  delivered: ["ok", "delivered"],
  retry_scheduled: ["warn", "retry scheduled"],
  retrying: ["warn", "retrying"],
  dead_lettered: ["bad", "dead-lettered"],
  handed_back: ["idle", "handed back"],
  in_flight: ["idle", "in flight"],
};
function badge(state) {
  const [tone, word] = STATE_LOOK[state] || ["idle", String(state || "unknown").replace(/_/g, " ")];
  return el(`span.badge.${tone}`, {}, word);
}
function setBadge(cell, state) {
  if (cell.dataset.badge === state) return;
  cell.dataset.badge = state;
  cell.replaceChildren(badge(state));
}

function targetText(target) {
  if (!target) return "";
  if (target.type === "builtin") return `built-in: ${target.handler}`;
  const auth = target.auth ? ` · auth: ${target.auth.type}` : "";
  const tls = target.tls ? " · mTLS" : "";
  return `${target.method || "POST"} ${target.url}${auth}${tls}`;
}

/** The consumer form's auth fields: one set per `target.auth` type, shown
 *  when that type is chosen. Secrets are password inputs, never shown back. */
const AUTH_FIELDS = {
  basic: [["username", "Username", "text"], ["password", "Password", "password"]],
  bearer: [["token", "Token", "password"]],
  header: [["name", "Header name", "text"], ["value", "Header value", "password"]],
  oauth2: [["tokenUrl", "Token URL", "url"], ["clientId", "Client id", "text"],
    ["clientSecret", "Client secret", "password"], ["scope", "Scope (optional)", "text"],
    ["audience", "Audience (optional)", "text"]],
};
const OPTIONAL_AUTH_FIELDS = new Set(["scope", "audience"]);

function authFields() {
  const select = el("select", { name: "authType", "data-testid": "auth-type" },
    el("option", { value: "" }, "None"),
    ...Object.keys(AUTH_FIELDS).map((type) => el("option", { value: type }, type)));
  const groups = Object.entries(AUTH_FIELDS).map(([type, fields]) =>
    el("div.auth-fields.wide", { "data-auth": type, hidden: true },
      ...fields.map(([name, label, kind]) => el("label", {}, label,
        el("input", { name: `auth.${type}.${name}`, type: kind, autocomplete: "off" })))));
  const show = () => {
    for (const group of groups) {
      const on = group.dataset.auth === select.value;
      group.hidden = !on;
      for (const input of group.querySelectorAll("input")) {
        input.required = on && !OPTIONAL_AUTH_FIELDS.has(input.name.split(".")[2]);
      }
    }
  };
  select.addEventListener("change", show);
  return { nodes: [el("label", {}, "Target auth", select), ...groups], reset: show };
}

/** `target.auth` from the form's fields, or undefined for none. */
function authOf(data) {
  const type = String(data.get("authType") || "");
  if (!AUTH_FIELDS[type]) return undefined;
  const auth = { type };
  for (const [name] of AUTH_FIELDS[type]) {
    const value = String(data.get(`auth.${type}.${name}`) || "").trim();
    if (value) auth[name] = value;
  }
  return auth;
}

// ------------------------------------------------------------- history --

/** Rates across all consumers, computed from the counters' growth between
 *  polls; kept for five minutes while the page is open. */
const history = {
  samples: [], // { t, forwarded, retried, dead }
  perConsumer: new Map(), // id -> [acked/s, …]
  last: null, // { t, counters: Map(id -> stats) }

  record(consumers) {
    const now = Date.now();
    const counters = new Map(consumers.map((c) => [c.consumerId, c.stats]));
    if (this.last) {
      const seconds = (now - this.last.t) / 1000;
      if (seconds > 0) {
        const sum = { forwarded: 0, retried: 0, dead: 0 };
        for (const [id, stats] of counters) {
          const before = this.last.counters.get(id);
          const grew = (field) => (before ? Math.max(0, stats[field] - before[field]) : 0);
          sum.forwarded += grew("acked");
          sum.retried += grew("retried");
          sum.dead += grew("deadLettered");
          const series = this.perConsumer.get(id) || [];
          series.push(grew("acked") / seconds);
          if (series.length > SPARK_POINTS) series.shift();
          this.perConsumer.set(id, series);
        }
        this.samples.push({
          t: now,
          forwarded: sum.forwarded / seconds,
          retried: sum.retried / seconds,
          dead: sum.dead / seconds,
        });
        while (this.samples.length && this.samples[0].t < now - HISTORY_MS) this.samples.shift();
      }
    }
    for (const id of this.perConsumer.keys()) if (!counters.has(id)) this.perConsumer.delete(id);
    this.last = { t: now, counters };
  },
  latest() {
    return this.samples[this.samples.length - 1] || { forwarded: 0, retried: 0, dead: 0 };
  },
  reset() {
    this.samples = [];
    this.perConsumer = new Map();
    this.last = null;
  },
};

function drawChart(node, samples) {
  const width = 800;
  const height = 220;
  const pad = { left: 44, right: 8, top: 10, bottom: 22 };
  node.replaceChildren();
  node.setAttribute("viewBox", `0 0 ${width} ${height}`);
  node.setAttribute("preserveAspectRatio", "none");
  const series = ["forwarded", "retried", "dead"];
  const max = Math.max(1, ...samples.flatMap((s) => series.map((k) => s[k])));
  const now = Date.now();
  const x = (t) => pad.left + ((t - (now - HISTORY_MS)) / HISTORY_MS) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - (v / max) * (height - pad.top - pad.bottom);
  for (const fraction of [0, 0.5, 1]) {
    const yy = y(max * fraction);
    node.append(svg("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: yy, y2: yy }));
    const label = svg("text", { class: "axis", x: pad.left - 6, y: yy + 4, "text-anchor": "end" });
    label.textContent = fmtRate(max * fraction);
    node.append(label);
  }
  for (const [text, anchor, xx] of [["5 min ago", "start", pad.left], ["now", "end", width - pad.right]]) {
    const label = svg("text", { class: "axis", x: xx, y: height - 4, "text-anchor": anchor });
    label.textContent = text;
    node.append(label);
  }
  series.forEach((key, i) => {
    if (samples.length < 2) return;
    const points = samples.map((s) => `${x(s.t).toFixed(1)},${y(s[key]).toFixed(1)}`).join(" ");
    node.append(svg("polyline", { class: `s${i}`, points }));
  });
}

function sparkline(values) {
  const node = svg("svg", { class: "spark", viewBox: "0 0 80 20", "aria-hidden": "true" });
  if (values.length >= 2) {
    const max = Math.max(1, ...values);
    const step = 80 / (SPARK_POINTS - 1);
    const offset = 80 - (values.length - 1) * step;
    const points = values.map((v, i) => `${(offset + i * step).toFixed(1)},${(19 - (v / max) * 18).toFixed(1)}`);
    node.append(svg("polyline", { points: points.join(" ") }));
  }
  return node;
}

// ------------------------------------------------------------- latency --

const LATENCY_SERIES = "workerrmq_target_round_trip_seconds_bucket{";
const LATENCY_WINDOW_MS = 60 * 1000;

/** Each consumer's cumulative target round-trip buckets from /metrics:
 *  Map(consumerId -> [[upper bound in s, count], …]) in bound order. */
function parseBuckets(text) {
  const byConsumer = new Map();
  for (const line of text.split("\n")) {
    if (!line.startsWith(LATENCY_SERIES)) continue;
    const close = line.lastIndexOf("}");
    const labels = {};
    for (const m of line.slice(LATENCY_SERIES.length, close).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[m[1]] = m[2];
    }
    const count = Number(line.slice(close + 1).trim().split(" ")[0]);
    const bound = labels.le === "+Inf" ? Infinity : Number(labels.le);
    if (!labels.consumer_id || Number.isNaN(bound) || Number.isNaN(count)) continue;
    if (!byConsumer.has(labels.consumer_id)) byConsumer.set(labels.consumer_id, []);
    byConsumer.get(labels.consumer_id).push([bound, count]);
  }
  for (const buckets of byConsumer.values()) buckets.sort((a, b) => a[0] - b[0]);
  return byConsumer;
}

/** The q-quantile of cumulative buckets, interpolated within the bucket it
 *  falls in (as Prometheus' histogram_quantile does); null without data. */
function bucketQuantile(q, buckets) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [bound, count] of buckets) {
    if (count >= rank) {
      if (bound === Infinity) return lower;
      return lower + (bound - lower) * ((rank - below) / Math.max(count - below, 1e-9));
    }
    lower = bound;
    below = count;
  }
  return lower;
}

/** p50 / p99 per consumer over the last minute of polls, or since the
 *  gateway started when the minute saw no round trip. */
const latency = {
  snapshots: [], // { t, buckets }
  record(text) {
    const now = Date.now();
    this.snapshots.push({ t: now, buckets: parseBuckets(text) });
    while (this.snapshots.length > 1 && this.snapshots[0].t < now - LATENCY_WINDOW_MS) this.snapshots.shift();
  },
  of(id) {
    if (!this.snapshots.length) return null;
    const latest = this.snapshots[this.snapshots.length - 1].buckets.get(id);
    if (!latest) return null;
    const oldest = this.snapshots[0].buckets.get(id);
    let buckets = latest;
    if (oldest && oldest.length === latest.length) {
      const window = latest.map(([bound, count], i) => [bound, count - oldest[i][1]]);
      if (window[window.length - 1][1] > 0) buckets = window;
    }
    const p50 = bucketQuantile(0.5, buckets);
    return p50 === null ? null : { p50, p99: bucketQuantile(0.99, buckets) };
  },
  reset() { this.snapshots = []; },
};

function fmtSeconds(s) {
  if (s >= 1) return `${rateFormat.format(s)} s`;
  const ms = s * 1000;
  return ms < 10 ? `${rateFormat.format(ms)} ms` : `${fmt(Math.round(ms))} ms`;
}

// --------------------------------------------------------------- views --

/** Each view builds its skeleton once (`mount`) and fills it on every poll
 *  (`update`) from the data its `load` fetched. */
const views = {};

views.overview = {
  title: "Overview",
  mount(root) {
    const cards = el("div.cards");
    const card = (key, label) => {
      const value = el("div.value", { "data-field": key }, "–");
      cards.append(el("div.card", {}, el("div.label", {}, label), value));
      return value;
    };
    this.broker = card("broker", "Broker");
    this.store = card("store", "Store");
    this.queues = card("queues", "Queues");
    this.consumers = card("consumers", "Consumers");
    this.running = el("div.sub");
    this.consumers.after(this.running);
    this.forwarded = card("forwarded", "Forwarded / s");
    this.retried = card("retried", "Retried / s");
    this.dead = card("dead-lettered", "Dead-lettered / s");
    for (const node of [this.queues, this.consumers, this.forwarded, this.retried, this.dead]) {
      node.classList.add("num");
    }
    this.chart = svg("svg", { class: "chart", role: "img", "aria-label": "Messages per second over the last 5 minutes" });
    const legend = el("div.legend", {},
      el("span", {}, el("span.key.k0"), "forwarded"),
      el("span", {}, el("span.key.k1"), "retried"),
      el("span", {}, el("span.key.k2"), "dead-lettered"),
      el("span", {}, "(per second, all consumers, since this page opened)"));
    this.trouble = el("tbody");
    root.append(
      el("h1", {}, "Overview"),
      cards,
      el("section.panel", {}, el("h2", {}, "Messages per second, last 5 minutes"), this.chart, legend),
      el("h2", {}, "Consumers in trouble"),
      el("p.hint", {}, "Circuit open, reconnecting, or an error in the last minute."),
      el("div.table-wrap", {}, el("table", { "data-testid": "trouble" },
        el("thead", {}, el("tr", {}, el("th", {}, "Consumer"), el("th", {}, "Queue"), el("th", {}, "State"),
          el("th", {}, "Last error"), el("th", {}, "When"))),
        this.trouble)),
    );
  },
  async load() {
    const [ready, queues] = await Promise.all([readiness(), api("GET", "getQueues")]);
    return { ready, queues };
  },
  update({ ready, queues }, consumers) {
    setBadge(this.broker, ready.broker);
    setBadge(this.store, ready.store);
    setText(this.queues, fmt(queues.length));
    const running = consumers.filter((c) => c.state === "running").length;
    setText(this.consumers, fmt(consumers.length));
    setText(this.running, `${fmt(running)} running`);
    const latest = history.latest();
    setText(this.forwarded, fmtRate(latest.forwarded));
    setText(this.retried, fmtRate(latest.retried));
    setText(this.dead, fmtRate(latest.dead));
    drawChart(this.chart, history.samples);
    const now = Date.now();
    const inTrouble = consumers.filter((c) =>
      c.state === "circuit_open" || c.state === "reconnecting" ||
      (c.stats.lastErrorAt && now - Date.parse(c.stats.lastErrorAt) < TROUBLE_WINDOW_MS));
    syncRows(this.trouble, inTrouble, (c) => c.consumerId,
      (c) => el("tr", { "data-consumer-id": c.consumerId },
        el("td.name"), el("td"), el("td.state"), el("td.error-text"), el("td")),
      (row, c) => {
        const [name, queue, state, error, when] = row.cells;
        row.dataset.state = c.state;
        setText(name, c.consumerName);
        setText(queue, c.queueName);
        setBadge(state, c.state);
        setText(error, c.stats.lastError || "");
        setText(when, ago(c.stats.lastErrorAt));
        when.title = c.stats.lastErrorAt || "";
      }, 5, "None: every consumer is healthy.");
  },
};

/** `/ready` answers 503 with the same fields when something is down. */
async function readiness() {
  try {
    return await api("GET", "ready");
  } catch (error) {
    const body = error.body || {};
    return { broker: body.broker || "unknown", store: body.store || "unknown" };
  }
}

views.queues = {
  title: "Queues",
  mount(root) {
    root.append(el("h1", {}, "Queues"));
    if (allows("admin")) {
      const form = el("form.create.panel", { "data-testid": "create-queue", "aria-label": "Create a queue" },
        el("label.wide", {}, "Queue name", el("input", { name: "queueName", required: true, maxlength: 240 })),
        el("label", {}, "Type", el("select", { name: "queueType" },
          el("option", { value: "classic" }, "classic"), el("option", { value: "quorum" }, "quorum"))),
        el("label", { title: "One consumer at a time, as ordered delivery needs" }, "Single active consumer",
          el("input", { name: "singleActiveConsumer", type: "checkbox" })),
        el("button", { type: "submit" }, "Create queue"));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const data = new FormData(form);
        const queueName = String(data.get("queueName")).trim();
        act(form.querySelector("button"), async () => {
          await api("POST", "createQueue", {
            queueName, queueType: data.get("queueType"), singleActiveConsumer: data.has("singleActiveConsumer"),
          });
          form.reset();
          showNotice(`Queue ${queueName} created.`);
        });
      });
      root.append(form);
    }
    if (allows("publisher")) root.append(publishBatchForm());
    this.body = el("tbody");
    root.append(el("div.table-wrap", {}, el("table", { "data-testid": "queues" },
      el("thead", {}, el("tr", {},
        el("th", {}, "Name"), el("th", {}, "Type"), el("th.num", {}, "Ready"), el("th.num", {}, "Unacked"),
        el("th.num", {}, "Retrying"), el("th.num", {}, "Dead letters"), el("th.num", {}, "Consumers"),
        allows("publisher") ? el("th", {}, el("span.muted", {}, "Actions")) : null)),
      this.body)));
  },
  async load() {
    return api("GET", "getQueues");
  },
  update(queues) {
    syncRows(this.body, queues, (q) => q.queueName, (q) => {
      const actions = el("td.actions");
      if (allows("publisher")) {
        actions.append(el("button.small.secondary", {
          type: "button", "data-action": "publish",
          onclick: (event) => act(event.currentTarget, async () => {
            const answer = await api("POST", "messagePublish", {
              queueName: q.queueName,
              message: { test: true, sentFrom: "workerrmq console", sentAt: new Date().toISOString() },
            });
            showNotice(`Test message ${answer.messageId || ""} published to ${q.queueName}.`);
          }),
        }, "Publish test message"));
      }
      if (allows("admin")) {
        actions.append(el("button.small.danger", {
          type: "button", "data-action": "delete",
          onclick: async (event) => {
            const button = event.currentTarget;
            if (!(await confirmDialog(`Delete queue ${q.queueName} and its dead letters?`, "Delete queue"))) return;
            act(button, async () => {
              await api("POST", "deleteQueue", { queueName: q.queueName });
              showNotice(`Queue ${q.queueName} deleted.`);
            });
          },
        }, "Delete"));
      }
      const deadLink = el("a", { href: `#/dead-letters/${encodeURIComponent(q.queueName)}` });
      return el("tr", { "data-queue": q.queueName },
        el("td.name", {}, q.queueName),
        el("td", {}, q.singleActiveConsumer ? `${q.queueType}, single active` : q.queueType),
        el("td.num", { "data-field": "ready" }), el("td.num", { "data-field": "unacked" }),
        el("td.num", { "data-field": "retrying" }), el("td.num", { "data-field": "dead-letters" }, deadLink),
        el("td.num", { "data-field": "consumers" }), allows("publisher") ? actions : null);
    }, (row, q) => {
      const [, , ready, unacked, retrying, dead, consumers] = row.cells;
      setText(ready, fmt(q.messagesReady));
      setText(unacked, fmt(q.messagesUnacknowledged));
      setText(retrying, fmt(q.retryingMessages));
      setText(dead.firstChild, fmt(q.deadLetterMessages));
      setText(consumers, fmt(q.consumers));
    }, allows("publisher") ? 8 : 7, "No queues yet.");
  },
};

/** Publishes one JSON value a line to a queue, all in one
 *  `/messagePublishBatch` request; a refused line is named in the banner. */
function publishBatchForm() {
  const form = el("form.create.panel", { "data-testid": "publish-batch", "aria-label": "Publish messages" },
    el("label", {}, "Queue", el("input", { name: "queueName", required: true, maxlength: 240 })),
    el("label.wide", {}, "Messages: one JSON value a line, up to 1,000",
      el("textarea", { name: "messages", required: true, rows: 3, placeholder: '{"orderId": 42}' })),
    el("button", { type: "submit" }, "Publish"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const queueName = String(data.get("queueName")).trim();
    const lines = String(data.get("messages")).split("\n").filter((line) => line.trim() !== "");
    act(form.querySelector("button"), async () => {
      const messages = lines.map((line, i) => {
        try {
          return { queueName, message: JSON.parse(line) };
        } catch {
          throw new Error(`Line ${i + 1} is not JSON; nothing was published.`);
        }
      });
      const answer = await api("POST", "messagePublishBatch", { messages });
      const refused = answer.results.find((result) => result.error);
      if (refused) {
        throw new Error(`${answer.accepted} of ${messages.length} published to ${queueName}; ` +
          `line ${refused.index + 1}: ${refused.error.message}`);
      }
      // The queue stays for the next batch.
      form.elements.messages.value = "";
      showNotice(`${answer.accepted} message${answer.accepted === 1 ? "" : "s"} published to ${queueName}.`);
    });
  });
  return form;
}

views.consumers = {
  title: "Consumers",
  mount(root) {
    root.append(el("h1", {}, "Consumers"));
    if (allows("admin")) {
      const auth = authFields();
      const form = el("form.create.panel", { "data-testid": "create-consumer", "aria-label": "Create a consumer" },
        el("label", {}, "Queue", el("input", { name: "queueName", required: true, list: "queue-names" })),
        el("datalist", { id: "queue-names" }),
        el("label", {}, "Name (optional)", el("input", { name: "consumerName", maxlength: 100 })),
        el("label.wide", {}, "Target URL", el("input", { name: "targetUrl", type: "url", required: true, placeholder: "https://example.com/webhook" })),
        el("label", {}, "Method", el("select", { name: "method" },
          el("option", {}, "POST"), el("option", {}, "PUT"), el("option", {}, "PATCH"))),
        el("label", {}, "Prefetch", el("input", { name: "prefetch", type: "number", min: 1, max: 1000, value: 10 })),
        el("label", {}, "Max attempts", el("input", { name: "maxAttempts", type: "number", min: 1, max: 100, value: 5 })),
        el("label", {}, "First retry after (ms)", el("input", { name: "initialDelayMs", type: "number", min: 1, value: 1000 })),
        el("label.wide", {}, "Signing secret (optional, whsec_…)", el("input", { name: "signingSecret", type: "password", autocomplete: "off" })),
        ...auth.nodes,
        el("label.wide", {}, "Filter (optional, CEL over body, headers, routingKey, exchange, messageId, contentType)",
          el("textarea", { name: "filter", rows: 2, maxlength: 4096, placeholder: 'body.type == "order.created"' })),
        el("label.wide", {}, "Transform (optional, CEL yielding {body?, headers?})",
          el("textarea", { name: "transform", rows: 2, maxlength: 4096, placeholder: '{"body": {"id": body.orderId}}' })),
        el("label", {}, "When a rule fails", el("select", { name: "onRuleError" },
          el("option", { value: "dead_letter" }, "dead-letter"), el("option", { value: "deliver" }, "deliver unchanged"),
          el("option", { value: "drop" }, "drop"))),
        el("button.secondary", { type: "button", "data-action": "test-rules" }, "Test"),
        el("button", { type: "submit" }, "Create consumer"),
        el("pre.wide", { "data-testid": "rules-test-results", hidden: true }));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const data = new FormData(form);
        const text = (name) => String(data.get(name) || "").trim();
        const body = {
          queueName: text("queueName"),
          target: { type: "http", url: text("targetUrl"), method: text("method") },
          prefetch: Number(text("prefetch")),
          retry: { maxAttempts: Number(text("maxAttempts")), initialDelayMs: Number(text("initialDelayMs")) },
        };
        if (text("consumerName")) body.consumerName = text("consumerName");
        if (text("signingSecret")) body.signingSecret = text("signingSecret");
        const targetAuth = authOf(data);
        if (targetAuth) body.target.auth = targetAuth;
        if (text("filter")) body.filter = text("filter");
        if (text("transform")) body.transform = text("transform");
        if (text("filter") || text("transform")) body.onRuleError = text("onRuleError");
        act(form.querySelector("button[type=submit]"), async () => {
          const answer = await api("POST", "createConsumer", body);
          form.reset();
          auth.reset();
          showNotice(`Consumer ${answer.consumerId} created on ${body.queueName}.`);
        });
      });
      // The dry run: the rules over the queue's first messages, which stay
      // in the queue, in order.
      const testButton = form.querySelector('[data-action="test-rules"]');
      testButton.addEventListener("click", () => {
        const data = new FormData(form);
        const text = (name) => String(data.get(name) || "").trim();
        const results = form.querySelector('[data-testid="rules-test-results"]');
        const body = { fromQueue: { queueName: text("queueName"), limit: 5 } };
        if (text("filter")) body.filter = text("filter");
        if (text("transform")) body.transform = text("transform");
        act(testButton, async () => {
          const answer = await api("POST", "testConsumerRules", body);
          results.textContent = answer.results.length
            ? answer.results.map((r) => JSON.stringify(r, null, 2)).join("\n")
            : "The queue has no message to test on.";
          results.hidden = false;
        });
      });
      root.append(form);
      this.queueList = $("#queue-names", form);
    }
    this.body = el("tbody");
    root.append(el("div.table-wrap", {}, el("table", { "data-testid": "consumers" },
      el("thead", {}, el("tr", {},
        el("th", {}, "Consumer / queue"), el("th", {}, "Target"), el("th", {}, "State"),
        el("th.num", {}, "In flight"), el("th.num", {}, "Acked"), el("th.num", {}, "Acked/s"),
        el("th.num", { title: "Target round trip over the last minute, estimated from /metrics" }, "p50 / p99"),
        el("th.num", {}, "Retried"), el("th.num", {}, "Dead-lettered"), el("th", {}, "Last error"),
        allows("admin") ? el("th", {}, el("span.muted", {}, "Actions")) : null)),
      this.body)));
    root.append(el("p.hint", {}, "Counts are summed over the live replicas; the last error and p50 / p99 (the target's round trip over the last minute, estimated from /metrics) are this replica's."));
  },
  async load() {
    const [queues, metrics] = await Promise.all([
      this.queueList ? api("GET", "getQueues") : null,
      api("GET", "metrics"),
    ]);
    latency.record(metrics);
    return queues;
  },
  update(queues, consumers) {
    if (queues && this.queueList) {
      const names = queues.map((q) => q.queueName).join("\n");
      if (this.queueList.dataset.names !== names) {
        this.queueList.dataset.names = names;
        this.queueList.replaceChildren(...queues.map((q) => el("option", { value: q.queueName })));
      }
    }
    syncRows(this.body, consumers, (c) => c.consumerId, (c) => {
      const actions = el("td.actions");
      if (allows("admin")) {
        const flow = (action) => el("button.small.secondary", {
          type: "button", "data-action": action,
          onclick: (event) => act(event.currentTarget, async () => {
            await api("POST", action === "pause" ? "pauseConsumer" : "resumeConsumer", { consumerId: c.consumerId });
            showNotice(`Consumer ${c.consumerName} ${action === "pause" ? "paused" : "resumed"}.`);
          }),
        }, action === "pause" ? "Pause" : "Resume");
        actions.append(flow("pause"), flow("resume"), el("button.small.danger", {
          type: "button", "data-action": "delete",
          onclick: async (event) => {
            const button = event.currentTarget;
            if (!(await confirmDialog(`Delete consumer ${c.consumerName} on ${c.queueName}?`, "Delete consumer"))) return;
            act(button, async () => {
              await api("POST", "deleteConsumer", { consumerId: c.consumerId });
              showNotice(`Consumer ${c.consumerName} deleted.`);
            });
          },
        }, "Delete"));
      }
      return el("tr", { "data-consumer-id": c.consumerId },
        el("td.name", {}, el("span", { "data-field": "name" }), el("span.sub", { "data-field": "queue" }),
          el("span.sub", { "data-field": "keys" })),
        el("td.target"), el("td.state"),
        el("td.num", { "data-field": "in-flight" }), el("td.num", { "data-field": "acked" }),
        el("td.num", { "data-field": "acked-rate" }), el("td.num", { "data-field": "latency" }),
        el("td.num", { "data-field": "retried" }),
        el("td.num", { "data-field": "dead-lettered" }),
        el("td.error-text", {}, el("span", { "data-field": "last-error" }),
          el("a.more", { href: `#/failures/${encodeURIComponent(c.consumerId)}`, "data-link": "failures" }, "recent failures")),
        allows("admin") ? actions : null);
    }, (row, c) => {
      const [name, target, state, inFlight, acked, rate, latencyCell, retried, dead, error, actions] = row.cells;
      row.dataset.state = c.state;
      setText($('[data-field="name"]', name), c.consumerName);
      setText($('[data-field="queue"]', name), c.queueName);
      // Ordered consumers: their keys at the target and held for a retry.
      const keys = $('[data-field="keys"]', name);
      keys.hidden = !c.ordering;
      setText(keys, c.ordering
        ? `ordered · ${fmt(c.stats.keysInFlight ?? 0)} keys in flight · ${fmt(c.stats.keysHeld ?? 0)} held` +
          (c.stats.keysHeld ? ` (oldest ${fmtSeconds((c.stats.oldestHeldMs ?? 0) / 1000)})` : "")
        : "");
      setText(target, targetText(c.target));
      setBadge(state, c.state);
      setText(inFlight, fmt(c.stats.inFlight));
      setText(acked, fmt(c.stats.acked));
      const series = history.perConsumer.get(c.consumerId) || [];
      const latest = series.length ? series[series.length - 1] : 0;
      rate.replaceChildren(fmtRate(latest), sparkline(series));
      const took = latency.of(c.consumerId);
      setText(latencyCell, took ? `${fmtSeconds(took.p50)} / ${fmtSeconds(took.p99)}` : "–");
      setText(retried, fmt(c.stats.retried));
      setText(dead, fmt(c.stats.deadLettered));
      const errorText = error.firstChild;
      setText(errorText, c.stats.lastError ? `${c.stats.lastError} (${ago(c.stats.lastErrorAt)})` : "");
      errorText.title = c.stats.lastErrorAt || "";
      // Only the control that applies: resume for a paused consumer.
      const paused = c.state === "paused";
      if (actions) {
        $('[data-action="pause"]', actions).hidden = paused;
        $('[data-action="resume"]', actions).hidden = !paused;
      }
    }, allows("admin") ? 11 : 10, "No consumers yet.");
  },
};

views["dead-letters"] = {
  title: "Dead letters",
  mount(root, queue) {
    this.queue = queue;
    this.chooser = el("select", { name: "queue", "aria-label": "Queue" }, el("option", { value: "" }, "Choose a queue…"));
    this.chooser.addEventListener("change", () => {
      location.hash = this.chooser.value ? `#/dead-letters/${encodeURIComponent(this.chooser.value)}` : "#/dead-letters";
    });
    const toolbar = el("div.toolbar", {}, el("label", {}, "Queue", this.chooser));
    const replayForm = allows("admin") && queue ? replayByFilter(queue) : null;
    this.body = el("tbody");
    this.total = el("span.num");
    const section = el("section", { "data-testid": "dead-letters" },
      el("h1", {}, "Dead letters", queue ? ` of ${queue}` : ""), toolbar, replayForm);
    if (queue) {
      section.append(
        el("p.hint", {}, "Oldest first, up to 100 shown; ", this.total, " in the dead-letter queue."),
        el("div.table-wrap", {}, el("table", {},
          el("thead", {}, el("tr", {}, el("th", {}, "Message id"), el("th.num", {}, "Attempts"),
            el("th", {}, "Last error"), el("th", {}, "Dead-lettered"), el("th", {}, "Payload"))),
          this.body)));
    } else {
      section.append(el("p.hint", {}, "Choose a queue to see the messages its consumers gave up on."));
    }
    root.append(section);
  },
  async load() {
    const queues = api("GET", "getQueues");
    const letters = this.queue
      ? api("GET", `getDeadLetters/${encodeURIComponent(this.queue)}?limit=100`)
      : Promise.resolve([]);
    return { queues: await queues, letters: await letters };
  },
  update({ queues, letters }) {
    const names = queues.map((q) => q.queueName);
    if (this.chooser.dataset.names !== names.join("\n")) {
      this.chooser.dataset.names = names.join("\n");
      this.chooser.replaceChildren(el("option", { value: "" }, "Choose a queue…"),
        ...names.map((n) => el("option", { value: n, selected: n === this.queue }, n)));
    }
    if (!this.queue) return;
    const row = queues.find((q) => q.queueName === this.queue);
    // The broker's statistics lag a few seconds behind what the peek shows.
    setText(this.total, fmt(Math.max(letters.length, row ? row.deadLetterMessages : 0)));
    syncRows(this.body, letters, (l) => l.messageId, (l) => el("tr", { "data-message-id": l.messageId },
      el("td.name", {}, el("a", { href: messageLink(this.queue, l.messageId), title: "Its delivery history" }, l.messageId)),
      el("td.num", {}, fmt(l.attempts)),
      el("td.error-text", {}, l.lastError || "", lastFailure(l) ? el("span.sub", {}, lastFailure(l)) : null),
      el("td", { title: l.deadLetteredAt || "" }), el("td.payload", {}, payloadPreview(l))),
    (row, l) => setText(row.cells[3], l.deadLetteredAt ? ago(l.deadLetteredAt) : ""),
    5, "No dead letters.");
  },
};

/** The replay form of a dead-letter queue: which letters (all, the first
 *  n, or those matching a filter), counted by a dry run and confirmed
 *  before any moves. */
function replayByFilter(queue) {
  const input = (name, attrs = {}) => el("input", { name, ...attrs });
  const kinds = el("select", { name: "errorKind" }, el("option", { value: "" }, "any"),
    ...errorKinds.map((k) => el("option", { value: k }, k.replace(/_/g, " "))));
  const replay = el("button", { type: "submit", "data-action": "replay" }, "Replay…");
  const form = el("form.create.panel", { "data-testid": "replay-filter", "aria-label": "Replay dead letters" },
    el("label", {}, "How many (first n)", input("replayCount", { type: "number", min: 1, max: 100000, placeholder: "all" })),
    el("label", {}, "Dead-lettered since", input("since", { type: "datetime-local", step: 1 })),
    el("label", {}, "until", input("until", { type: "datetime-local", step: 1 })),
    el("label", {}, "Last status", input("status", { placeholder: "503 or 5xx", maxlength: 3 })),
    el("label", {}, "Error kind", kinds),
    el("label.wide", {}, "Message ids (space or comma separated)", input("messageIds", { placeholder: "all" })),
    replay);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const text = (name) => String(data.get(name) || "").trim();
    const body = { queueName: queue };
    if (text("replayCount")) body.limit = Number(text("replayCount"));
    const filter = {};
    // datetime-local is the browser's local time; the API takes RFC 3339.
    for (const key of ["since", "until"]) {
      if (text(key)) filter[key] = new Date(text(key)).toISOString();
    }
    if (text("status")) filter.status = text("status");
    if (text("errorKind")) filter.errorKind = text("errorKind");
    const ids = text("messageIds").split(/[\s,]+/).filter(Boolean);
    if (ids.length) filter.messageIds = ids;
    if (Object.keys(filter).length) body.filter = filter;
    act(replay, async () => {
      const dry = await api("POST", "replayDeadLetters", { ...body, dryRun: true });
      if (!dry.matched) {
        showNotice(`No dead letter of ${queue} matches.`);
        return;
      }
      const what = body.filter ? "matching dead letter(s)" : "dead letter(s)";
      if (!(await confirmDialog(`Replay ${fmt(dry.matched)} ${what} of ${queue} to the queue?`, `Replay ${fmt(dry.matched)}`))) return;
      const answer = await api("POST", "replayDeadLetters", { ...body, dryRun: false });
      showNotice(`Replayed ${fmt(answer.replayed)} message(s) to ${queue}.`);
    });
  });
  return form;
}

function messageLink(queue, messageId) {
  return `#/messages/${encodeURIComponent(queue)}/${encodeURIComponent(messageId)}`;
}

function fmtDuration(ms) {
  return ms >= 1000 ? `${rateFormat.format(ms / 1000)} s` : `${fmt(ms)} ms`;
}

/** What a row shows of an attempt's answer: its status, or why none came. */
function answerStatus(attempt) {
  if (attempt.response) return String(attempt.response.status);
  return attempt.error ? "no answer" : "–";
}

/** The first bytes of the target's answer; viewers get none (the field is
 *  left out for them). */
function answerExcerpt(attempt) {
  const response = attempt.response;
  if (!response) return "";
  if (!("body" in response)) return el("span.muted", {}, "hidden for this role");
  if (!response.body) return el("span.muted", {}, "empty");
  const text = response.body.length > 200 ? `${response.body.slice(0, 200)}…` : response.body;
  return response.bodyTruncated ? `${text} [truncated]` : text;
}

function errorText(attempt) {
  return attempt.error ? `${attempt.error.kind.replace(/_/g, " ")}: ${attempt.error.message}` : "";
}

/** Started at: the local time, the exact instant on hover. */
function timeCell(iso) {
  return el("td.when", { title: iso || "" }, iso ? new Date(iso).toLocaleString() : "");
}

views.messages = {
  title: "Messages",
  mount(root, _param, parts) {
    const [queue = "", messageId = ""] = parts;
    this.queue = queue;
    this.messageId = messageId;
    this.chooser = el("select", { name: "queue", "aria-label": "Queue", required: true },
      el("option", { value: "" }, "Choose a queue…"));
    this.idInput = el("input", { name: "messageId", required: true, maxlength: 255, value: messageId, placeholder: "order-1234" });
    const form = el("form.toolbar", { "data-testid": "message-search", role: "search" },
      el("label", {}, "Queue", this.chooser), el("label", {}, "Message id", this.idInput),
      el("button", { type: "submit" }, "Search"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const hash = messageLink(this.chooser.value, this.idInput.value.trim());
      if (location.hash === hash) refresh();
      else location.hash = hash;
    });
    root.append(el("h1", {}, "Messages"), form);
    if (!queue || !messageId) {
      root.append(el("p.hint", {}, "A message's delivery attempts, oldest first: when, how long, what the target answered and what became of it."));
      return;
    }
    this.state = el("span");
    this.summary = el("span");
    this.body = el("tbody");
    root.append(el("section", { "data-testid": "message-history", "data-state": "" },
      el("h2", {}, messageId, el("span.muted", {}, ` on ${queue}`)),
      el("p.hint", {}, this.state, " ", this.summary),
      el("div.table-wrap", {}, el("table", {},
        el("thead", {}, el("tr", {}, el("th.num", {}, "#"), el("th", {}, "Started"), el("th.num", {}, "Took"),
          el("th", {}, "Consumer"), el("th.num", {}, "Status"), el("th", {}, "Outcome"), el("th", {}, "Error"),
          el("th", {}, "Answer"), el("th", {}, "Trace id"))),
        this.body))));
  },
  async load() {
    const queues = api("GET", "getQueues");
    let history = null;
    let missing = "";
    if (this.queue && this.messageId) {
      try {
        history = await api("GET", `getMessageHistory/${encodeURIComponent(this.queue)}/${encodeURIComponent(this.messageId)}`);
      } catch (error) {
        if (error.status !== 404) throw error;
        missing = error.message;
      }
    }
    return { queues: await queues, history, missing };
  },
  update({ queues, history, missing }, consumers) {
    const names = queues.map((q) => q.queueName);
    if (this.chooser.dataset.names !== names.join("\n")) {
      this.chooser.dataset.names = names.join("\n");
      this.chooser.replaceChildren(el("option", { value: "" }, "Choose a queue…"),
        ...names.map((n) => el("option", { value: n, selected: n === this.queue }, n)));
    }
    if (!this.body) return;
    const section = this.body.closest("section");
    if (missing) {
      section.dataset.state = "";
      this.state.replaceChildren();
      setText(this.summary, missing);
      syncRows(this.body, [], (a) => a.attemptId, null, null, 9, "No such queue.");
      return;
    }
    section.dataset.state = history.state;
    setBadge(this.state, history.state);
    const n = history.attempts.length;
    setText(this.summary, n ? `${fmt(n)} attempt(s), oldest first.` : "No attempt recorded (yet, or no longer: records expire).");
    const consumerNames = new Map(consumers.map((c) => [c.consumerId, c.consumerName]));
    syncRows(this.body, history.attempts, (a) => a.attemptId, (a) => el("tr", {
      "data-testid": "attempt", "data-outcome": a.outcome, "data-attempt-id": a.attemptId,
    },
    el("td.num", {}, fmt(a.attempt), a.trigger === "replay" ? el("span.sub", {}, "replay") : null),
    timeCell(a.startedAt),
    el("td.num", {}, fmtDuration(a.durationMs)),
    el("td", {}, el("a", { href: `#/failures/${encodeURIComponent(a.consumerId)}`, title: "This consumer's recent failures" },
      consumerNames.get(a.consumerId) || a.consumerId),
    a.batchId ? el("span.sub", {}, `batch ${a.batchId}`) : null),
    el("td.num", { "data-field": "status" }, answerStatus(a)),
    el("td.state", {}, badge(a.outcome)),
    el("td.error-text", {}, errorText(a)),
    el("td.payload", {}, answerExcerpt(a)),
    el("td.payload", {}, a.traceId || "")),
    () => {}, 9, "No attempt recorded.");
  },
};

views.failures = {
  title: "Recent failures",
  tab: "consumers",
  mount(root, _param, parts) {
    this.consumerId = parts[0] || "";
    this.outcome = el("select", { name: "outcome" },
      el("option", { value: "" }, "every failure"),
      el("option", { value: "retry_scheduled" }, "retry scheduled"),
      el("option", { value: "dead_lettered" }, "dead-lettered"),
      el("option", { value: "handed_back" }, "handed back"));
    this.status = el("input", { name: "status", placeholder: "503 or 5xx", maxlength: 3 });
    this.kind = el("select", { name: "errorKind" }, el("option", { value: "" }, "any"),
      ...errorKinds.map((k) => el("option", { value: k }, k.replace(/_/g, " "))));
    for (const control of [this.outcome, this.status, this.kind]) {
      control.addEventListener("change", () => refresh());
    }
    this.title = el("span");
    this.body = el("tbody");
    root.append(el("h1", {}, "Recent failures of ", this.title),
      el("div.toolbar", {}, el("label", {}, "Outcome", this.outcome), el("label", {}, "Status", this.status),
        el("label", {}, "Error kind", this.kind)),
      el("p.hint", {}, "Newest first, up to 50: attempts that did not deliver. A message id opens its whole history."),
      el("div.table-wrap", {}, el("table", { "data-testid": "failures" },
        el("thead", {}, el("tr", {}, el("th", {}, "Started"), el("th", {}, "Message"), el("th.num", {}, "#"),
          el("th.num", {}, "Took"), el("th.num", {}, "Status"), el("th", {}, "Outcome"), el("th", {}, "Error"),
          el("th", {}, "Answer"))),
        this.body)));
  },
  async load() {
    const query = new URLSearchParams({ consumerId: this.consumerId, limit: "50" });
    const status = this.status.value.trim();
    if (status) query.set("status", status);
    if (this.kind.value) query.set("errorKind", this.kind.value);
    // The API filters by one outcome at a time: "every failure" asks for
    // each outcome but delivered, and merges them newest first.
    const outcomes = this.outcome.value ? [this.outcome.value] : ["retry_scheduled", "dead_lettered", "handed_back"];
    const pages = await Promise.all(outcomes.map((outcome) => {
      const one = new URLSearchParams(query);
      one.set("outcome", outcome);
      return api("GET", `getAttempts?${one}`);
    }));
    return pages.flatMap((page) => page.attempts)
      .sort((a, b) => Date.parse(b.startedAt) - Date.parse(a.startedAt) || (a.attemptId < b.attemptId ? 1 : -1))
      .slice(0, 50);
  },
  update(attempts, consumers) {
    const consumer = consumers.find((c) => c.consumerId === this.consumerId);
    setText(this.title, consumer ? `${consumer.consumerName} on ${consumer.queueName}` : this.consumerId);
    syncRows(this.body, attempts, (a) => a.attemptId, (a) => el("tr", { "data-attempt-id": a.attemptId, "data-outcome": a.outcome },
      timeCell(a.startedAt),
      el("td.name", {}, el("a", { href: messageLink(a.queueName, a.messageId) }, a.messageId)),
      el("td.num", {}, fmt(a.attempt)),
      el("td.num", {}, fmtDuration(a.durationMs)),
      el("td.num", {}, answerStatus(a)),
      el("td.state", {}, badge(a.outcome)),
      el("td.error-text", {}, errorText(a)),
      el("td.payload", {}, answerExcerpt(a))),
    () => {}, 8, "No failure recorded.");
  },
};

/** The last failure's kind and status, what a replay filter goes by. */
function lastFailure(letter) {
  const kind = letter.lastErrorKind ? letter.lastErrorKind.replace(/_/g, " ") : "";
  return [kind, letter.lastStatus].filter(Boolean).join(" · ");
}

function payloadPreview(letter) {
  if (!("payload" in letter)) return el("span.muted", {}, "hidden for this role");
  const text = typeof letter.payload === "string" ? letter.payload : JSON.stringify(letter.payload);
  return text.length > 160 ? `${text.slice(0, 160)}…` : text;
}

views.connections = {
  title: "Connections",
  mount(root) {
    this.body = el("tbody");
    root.append(el("h1", {}, "Connections"),
      el("p.hint", {}, "The broker's AMQP connections on this vhost."),
      el("div.table-wrap", {}, el("table", { "data-testid": "connections" },
        el("thead", {}, el("tr", {}, el("th", {}, "Client"), el("th", {}, "User"), el("th", {}, "Peer"),
          el("th", {}, "State"), el("th.num", {}, "Channels"), el("th", {}, "Connected"))),
        this.body)));
  },
  async load() {
    return api("GET", "getConnections");
  },
  update(connections) {
    syncRows(this.body, connections, (c) => c.connectionId,
      (c) => el("tr", { "data-connection": c.connectionId },
        el("td.name", {}, c.clientName || c.connectionId), el("td", {}, c.user),
        el("td", {}, c.peerHost ? `${c.peerHost}:${c.peerPort ?? ""}` : ""), el("td"), el("td.num"), el("td")),
      (row, c) => {
        setBadge(row.cells[3], c.state === "running" ? "running" : c.state || "unknown");
        setText(row.cells[4], fmt(c.channels));
        setText(row.cells[5], c.connectedAt ? new Date(c.connectedAt).toLocaleString() : "");
      }, 6, "No connections.");
  },
};

views.replicas = {
  title: "Replicas",
  mount(root) {
    this.body = el("tbody");
    root.append(el("h1", {}, "Replicas"),
      el("p.hint", {}, "The gateways sharing this store, seen by their heartbeat in the last 10 s; counters as of each one's latest beat."),
      el("div.table-wrap", {}, el("table", { "data-testid": "replicas" },
        el("thead", {}, el("tr", {}, el("th", {}, "Instance"), el("th", {}, "Version"), el("th", {}, "Started"),
          el("th", {}, "Last seen"), el("th", {}, "Broker node"), el("th.num", {}, "Consumers"),
          el("th.num", {}, "In flight"), el("th.num", {}, "Acked"), el("th.num", {}, "Dead-lettered"))),
        this.body)));
  },
  async load() {
    return api("GET", "getReplicas");
  },
  update(replicas) {
    syncRows(this.body, replicas, (r) => r.instanceId,
      (r) => el("tr", { "data-instance-id": r.instanceId },
        el("td.name", {}, r.instanceId, r.thisReplica ? el("span.sub", {}, "this replica (answering)") : null),
        el("td"), el("td"), el("td"), el("td"), el("td.num"), el("td.num"), el("td.num"), el("td.num")),
      (row, r) => {
        const totals = r.totals || {};
        setText(row.cells[1], r.version || "unknown");
        setText(row.cells[2], r.startedAt ? new Date(r.startedAt).toLocaleString() : "");
        setText(row.cells[3], ago(r.lastSeenAt));
        row.cells[3].title = r.lastSeenAt || "";
        setText(row.cells[4], r.brokerNode || "");
        setText(row.cells[5], fmt(Array.isArray(r.consumers) ? r.consumers.length : r.consumers));
        setText(row.cells[6], fmt(totals.inFlight ?? r.inFlight));
        setText(row.cells[7], fmt(totals.acked));
        setText(row.cells[8], fmt(totals.deadLettered));
      }, 9, "No replicas reported.");
  },
};

// ----------------------------------------------------- routing, polling --

let active = null; // { name, view, param }
let timer = 0;
let generation = 0;

function decodePart(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = hash.split("/");
  const param = rest.length ? decodePart(rest.join("/")) : "";
  // Each part decoded on its own: views with two parameters (a queue and
  // a message id, either of which may hold a "/") read these.
  const parts = rest.map(decodePart);
  const known = Object.hasOwn(views, name) && !(name === "replicas" && !replicasAvailable);
  return known ? { name, param, parts } : { name: "overview", param: "", parts: [] };
}

function show() {
  if (!current) return;
  const { name, param, parts } = route();
  const view = views[name];
  const main = $("#view");
  main.replaceChildren();
  view.mount(main, param, parts);
  active = { name, view, param };
  // A view reached from another (a consumer's failures) lights up its tab.
  const tab = view.tab || name;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === tab) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${view.title} · workerrmq console`;
  refresh();
}

/** One poll: every consumer (for the rates) and what the view shows. */
async function refresh() {
  if (!current || !active) return;
  clearTimeout(timer);
  const mine = ++generation;
  const shown = active;
  try {
    const [consumers, data] = await Promise.all([api("GET", "getConsumers"), shown.view.load()]);
    if (mine !== generation) return;
    history.record(consumers);
    if (active === shown) shown.view.update(data, consumers);
    if ($("#error").dataset.fromPoll === "yes") {
      clearError();
      $("#error").dataset.fromPoll = "";
    }
  } catch (error) {
    if (mine !== generation || !current) return;
    if (shown.name === "replicas" && error.status === 404) {
      hideReplicas();
      return;
    }
    showError(`Could not refresh: ${error.message}`);
    $("#error").dataset.fromPoll = "yes";
  } finally {
    if (mine === generation && current && !document.hidden) {
      timer = setTimeout(refresh, POLL_MS);
    }
  }
}

document.addEventListener("visibilitychange", () => {
  clearTimeout(timer);
  if (!document.hidden) refresh();
});
window.addEventListener("hashchange", show);

// ------------------------------------------------------------- replicas --

let replicasAvailable = false;
/** The failure kinds the filters offer: the gateway's own list, from its
 *  spec, so the console cannot fall behind it. */
let errorKinds = [];

/** The fleet API is newer than some gateways: offer the view only when the
 *  spec lists it (asking the route itself would log a 404 in the console). */
async function readSpec() {
  try {
    const spec = await api("GET", "openapi.json", undefined, null);
    replicasAvailable = Boolean(spec && spec.paths && spec.paths["/getReplicas"]);
    errorKinds = spec?.components?.schemas?.ErrorKindName?.enum || [];
  } catch {
    replicasAvailable = false;
  }
  $('#nav a[data-view="replicas"]').hidden = !replicasAvailable;
}

function hideReplicas() {
  replicasAvailable = false;
  $('#nav a[data-view="replicas"]').hidden = true;
  location.hash = "#/overview";
}

// -------------------------------------------------------------- sign-in --

function enter(who) {
  current = who;
  $("#signin-section").hidden = true;
  $("#signin").reset();
  $("#nav").hidden = false;
  $("#who").hidden = false;
  $("#view").hidden = false;
  setText($("#who-name"), who.name);
  setText($("#who-role"), who.role);
  history.reset();
  latency.reset();
  readSpec().finally(show);
}

function signOut(message) {
  current = null;
  active = null;
  generation++;
  clearTimeout(timer);
  session.clear();
  history.reset();
  $("#view").replaceChildren();
  $("#view").hidden = true;
  $("#nav").hidden = true;
  $("#who").hidden = true;
  $("#signin-section").hidden = false;
  if (message) showError(message);
  else clearError();
  $('#signin input[name="username"]').focus();
}

async function signIn(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const data = new FormData(form);
  const apiKey = String(data.get("apiKey") || "").trim();
  const username = String(data.get("username") || "");
  const password = String(data.get("password") || "");
  // A filled API key wins.
  const auth = apiKey ? `Bearer ${apiKey}` : `Basic ${base64(`${username}:${password}`)}`;
  if (!apiKey && !username) {
    showError("Give a user name and password, or an API key.");
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  clearError();
  try {
    const who = await api("GET", "whoami", undefined, auth);
    const signedIn = { auth, name: who.name, role: who.role };
    session.save(signedIn);
    enter(signedIn);
  } catch (error) {
    showError(error.status === 401
      ? "Sign-in failed: wrong user name, password or API key."
      : `Sign-in failed: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

async function start() {
  $("#signin").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", () => signOut());
  $("#error-close").addEventListener("click", clearError);
  const saved = session.load();
  if (!saved) {
    $('#signin input[name="username"]').focus();
    return;
  }
  try {
    // The role may have changed since; ask again.
    const who = await api("GET", "whoami", undefined, saved.auth);
    enter({ auth: saved.auth, name: who.name, role: who.role });
  } catch (error) {
    session.clear();
    if (error.status !== 401) showError(`Could not reach the gateway: ${error.message}`);
  }
}

start();
