// Courier's dashboard: polls the hub's JSON every two seconds and redraws. No framework, no
// build step, nothing loaded from elsewhere.
"use strict";

const EVERY_MS = 2000;
const HISTORY = 150; // samples: five minutes at one every two seconds
const API = "api/";

const state = {
  token: sessionStorage.getItem("courier-token") || "",
  last: null, // the previous summary and when it came
  history: [], // {t, publishes, deliveries} per second
  streamRates: new Map(),
  replayed: new Map(), // "dlq/seq" -> answer
  deadLetters: new Map(), // dlq name -> entries
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function fmt(n) {
  if (n === null || n === undefined) return "–";
  if (typeof n !== "number") return String(n);
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function duration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  return `${m}m ${s % 60}s`;
}

class Unauthorized extends Error {}

async function call(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.token) headers.authorization = "Bearer " + state.token;
  const res = await fetch(API + path, { ...options, headers });
  if (res.status === 401) throw new Unauthorized();
  const body = await res.json();
  if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
  return body;
}

function setStatus(text, kind) {
  const s = $("#status");
  s.textContent = text;
  s.className = "status " + (kind || "");
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderOverview(sum, rates) {
  $("#node").textContent = sum.node;
  $("#uptime").textContent = duration(sum.uptime_s);
  $("#conn-websocket").textContent = fmt(sum.connections.websocket);
  $("#conn-polling").textContent = fmt(sum.connections.polling);
  $("#rate-publishes").textContent = rates ? fmt(rates.publishes) : "–";
  $("#rate-deliveries").textContent = rates ? fmt(rates.deliveries) : "–";
}

function renderChart() {
  const svg = $("#chart");
  const W = 600, H = 160;
  const h = state.history;
  const max = Math.max(1, ...h.map((p) => Math.max(p.publishes, p.deliveries)));
  const now = Date.now();
  // The window grows with the history, from one minute up to five.
  const span = h.length ? now - h[0].t : 0;
  const windowMs = Math.min(HISTORY * EVERY_MS, Math.max(60_000, span));
  const x = (t) => W - ((now - t) / windowMs) * W;
  const y = (v) => H - 4 - (v / max) * (H - 12);
  const line = (key) => h.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const grid = [0.25, 0.5, 0.75].map((f) => {
    const l = document.createElementNS(ns, "line");
    l.setAttribute("x1", 0); l.setAttribute("x2", W);
    l.setAttribute("y1", y(max * f)); l.setAttribute("y2", y(max * f));
    return l;
  });
  const series = ["publishes", "deliveries"].map((key) => {
    const p = document.createElementNS(ns, "polyline");
    p.setAttribute("class", key);
    p.setAttribute("points", line(key));
    return p;
  });
  svg.replaceChildren(...grid, ...series);
  $("#chart-max").textContent = `(top: ${fmt(max)}/s)`;
}

function renderStreams(streams, dt) {
  const tbody = $("#streams tbody");
  const rows = streams.map((s) => {
    const before = state.streamRates.get(s.name);
    const rate = before !== undefined && dt > 0 ? Math.max(0, (s.last_seq - before) / dt) : null;
    state.streamRates.set(s.name, s.last_seq);
    return el("tr", { "data-stream": s.name },
      el("td", {}, s.name),
      el("td", { class: "n entries" }, fmt(s.entries)),
      el("td", { class: "n" }, bytes(s.bytes)),
      el("td", { class: "n" }, fmt(s.last_seq)),
      el("td", { class: "n" }, rate === null ? "–" : fmt(rate)),
      el("td", { class: "n" }, fmt(s.consumers.length + s.more_consumers)));
  });
  replaceRows(tbody, rows);
  $("#streams-empty").hidden = streams.length > 0;
}

function renderConsumers(streams) {
  const all = [];
  for (const s of streams) {
    for (const c of s.consumers) all.push({ stream: s.name, ...c });
  }
  all.sort((a, b) => (b.waiting + b.pending) - (a.waiting + a.pending));
  const worst = Math.max(1, ...all.map((c) => c.waiting + c.pending));
  const rows = all.map((c) => {
    const lag = c.waiting + c.pending;
    const bar = el("div", { class: "bar" }, el("span"));
    bar.firstChild.style.width = `${(100 * lag) / worst}%`;
    return el("tr", { "data-consumer": `${c.stream}/${c.name}`, class: lag > 0 ? "lagging" : "" },
      el("td", {}, c.stream),
      el("td", {}, c.name),
      el("td", { class: "n waiting" }, fmt(c.waiting)),
      el("td", { class: "n pending" }, fmt(c.pending)),
      el("td", { class: "n redelivered" }, fmt(c.redelivered)),
      el("td", { class: "n dead-lettered" }, fmt(c.dead_lettered)),
      el("td", {}, bar));
  });
  replaceRows($("#consumers tbody"), rows);
  $("#consumers-empty").hidden = all.length > 0;
}

async function loadDeadLetters(streams) {
  const names = new Set(streams.map((s) => s.name));
  const dlqs = [...new Set(streams.map((s) => s.dead_letter))].filter((d) => names.has(d));
  for (const d of dlqs) {
    const info = streams.find((s) => s.name === d);
    if (!info || info.entries === 0) { state.deadLetters.set(d, []); continue; }
    const body = await call(`streams/${encodeURIComponent(d)}/entries?limit=20`);
    state.deadLetters.set(d, body.entries.reverse());
  }
  for (const d of [...state.deadLetters.keys()]) if (!dlqs.includes(d)) state.deadLetters.delete(d);
}

function renderDeadLetters() {
  const blocks = [];
  for (const [dlq, entries] of state.deadLetters) {
    if (entries.length === 0) continue;
    const rows = entries.map((e) => {
      const key = `${dlq}/${e.seq}`;
      const done = state.replayed.get(key);
      const button = el("button", { class: "replay" + (done ? " done" : ""), "data-seq": e.seq, type: "button" },
        done ? `replayed as #${done.seq}` : "Replay");
      button.disabled = !!done;
      button.addEventListener("click", () => replay(dlq, e.seq, button));
      const d = e.data || {};
      return el("tr", { "data-dead-letter": key },
        el("td", { class: "n" }, e.seq),
        el("td", {}, d.stream || "?"),
        el("td", { class: "n" }, d.seq ?? "?"),
        el("td", {}, d.consumer || "?"),
        el("td", {}, e.event),
        el("td", { class: "n" }, d.deliveries ?? "?"),
        el("td", {}, el("code", {}, JSON.stringify(d.data).slice(0, 80))),
        el("td", {}, button));
    });
    const head = el("tr", {}, ...["#", "Stream", "Seq", "Consumer", "Event", "Deliveries", "Data", ""]
      .map((h) => el("th", {}, h)));
    blocks.push(el("h3", {}, dlq),
      el("table", { "data-dlq": dlq }, el("thead", {}, head), el("tbody", {}, ...rows)));
  }
  $("#dead-letters").replaceChildren(...blocks);
  $("#dead-letters-empty").hidden = blocks.length > 0;
}

async function replay(dlq, seq, button) {
  button.disabled = true;
  try {
    const answer = await call(`streams/${encodeURIComponent(dlq)}/replay/${seq}`, { method: "POST" });
    state.replayed.set(`${dlq}/${seq}`, answer);
    button.textContent = `replayed as #${answer.seq}`;
    button.classList.add("done");
  } catch (e) {
    button.disabled = false;
    button.textContent = "Replay failed: " + e.message;
  }
}

function renderNamespaces(namespaces) {
  const rows = [];
  for (const ns of namespaces) {
    const nodes = Object.entries(ns.nodes);
    if (nodes.length === 0) nodes.push(["–", 0]);
    for (const [node, n] of nodes) {
      rows.push(el("tr", { "data-namespace": ns.name },
        el("td", {}, ns.name), el("td", {}, node), el("td", { class: "n" }, fmt(n))));
    }
  }
  replaceRows($("#namespaces tbody"), rows);
}

function rates(sum, now) {
  const last = state.last;
  if (!last || !sum.counters || !last.sum.counters) return null;
  const dt = (now - last.t) / 1000;
  if (dt <= 0) return null;
  const r = {
    t: now,
    publishes: Math.max(0, (sum.counters.publishes - last.sum.counters.publishes) / dt),
    deliveries: Math.max(0, (sum.counters.deliveries - last.sum.counters.deliveries) / dt),
  };
  state.history.push(r);
  while (state.history.length > HISTORY) state.history.shift();
  return r;
}

async function tick() {
  try {
    const sum = await call("summary");
    const now = Date.now();
    const dt = state.last ? (now - state.last.t) / 1000 : 0;
    const r = rates(sum, now);
    state.last = { sum, t: now };
    renderOverview(sum, r);
    renderChart();
    renderNamespaces(sum.namespaces);
    const streams = sum.streams || [];
    renderStreams(streams, dt);
    renderConsumers(streams);
    await loadDeadLetters(streams);
    renderDeadLetters();
    $("#login").hidden = true;
    setStatus("live", "live");
  } catch (e) {
    if (e instanceof Unauthorized) {
      $("#login").hidden = false;
      setStatus("needs the API token", "error");
    } else {
      setStatus("error: " + e.message, "error");
    }
  } finally {
    setTimeout(tick, EVERY_MS);
  }
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = $("#token").value.trim();
  sessionStorage.setItem("courier-token", state.token);
  $("#login").hidden = true;
});

tick();
