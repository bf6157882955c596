// SPDX-License-Identifier: MIT
// The live page: device table, last-hour power chart, daily/monthly bars, alerts.
// Live readings and status changes arrive as server-sent events on /api/stream; the
// page authenticates with the session cookie set by the login form.
"use strict";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"];
const devices = new Map();   // deviceId -> {status, last}
const series = new Map();    // deviceId -> [[ts, power], ...] (last hour)

async function api(path, opts) {
  const r = await fetch(path, Object.assign({credentials: "same-origin"}, opts || {}));
  if (r.status === 401) { location.href = "/"; throw new Error("logged out"); }
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function fmt(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

function cell(tr, cls, text) {
  let td = tr.querySelector("td." + cls);
  td.textContent = text;
  return td;
}

function row(id) {
  const body = document.querySelector("#devices tbody");
  let tr = body.querySelector(`tr[data-device="${CSS.escape(id)}"]`);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.device = id;
    for (const cls of ["id", "status", "power num", "current num", "voltage num", "energy num", "seen"]) {
      const td = document.createElement("td");
      td.className = cls;
      tr.appendChild(td);
    }
    tr.querySelector("td.id").textContent = id;
    const rows = [...body.children];
    const after = rows.find((r) => r.dataset.device > id);
    body.insertBefore(tr, after || null);
  }
  return tr;
}

function showDevice(id) {
  const d = devices.get(id);
  const tr = row(id);
  const st = cell(tr, "status", d.status || "–");
  st.className = "status " + (d.status || "");
  const r = d.last || {};
  cell(tr, "power", fmt(r.power, 1));
  cell(tr, "current", fmt(r.current, 3));
  cell(tr, "voltage", fmt(r.voltage, 1));
  cell(tr, "energy", fmt(r.energyKwh, 3));
  cell(tr, "seen", r.ts ? new Date(r.ts * 1000).toLocaleTimeString() : "–");
}

function addPoint(r) {
  if (!series.has(r.deviceId)) series.set(r.deviceId, []);
  const s = series.get(r.deviceId);
  s.push([r.ts, r.power]);
  const cutoff = Date.now() / 1000 - 3600;
  while (s.length && s[0][0] < cutoff) s.shift();
}

function drawHour() {
  const c = document.getElementById("hour"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const now = Date.now() / 1000, t0 = now - 3600;
  let max = 10;
  for (const s of series.values()) for (const [, p] of s) max = Math.max(max, p || 0);
  const x = (t) => 40 + (t - t0) / 3600 * (c.width - 50);
  const y = (p) => c.height - 20 - (p / max) * (c.height - 30);
  g.strokeStyle = "#ccc"; g.fillStyle = "#666"; g.font = "11px sans-serif";
  g.beginPath(); g.moveTo(40, y(0)); g.lineTo(c.width - 10, y(0)); g.stroke();
  g.fillText(max.toFixed(0) + " W", 2, 12); g.fillText("-60 min", 40, c.height - 4);
  g.fillText("now", c.width - 30, c.height - 4);
  const legend = document.getElementById("legend");
  legend.textContent = "";
  let i = 0;
  for (const [id, s] of [...series.entries()].sort()) {
    const color = COLORS[i++ % COLORS.length];
    g.strokeStyle = color; g.beginPath();
    s.forEach(([t, p], k) => (k ? g.lineTo(x(t), y(p || 0)) : g.moveTo(x(t), y(p || 0))));
    g.stroke();
    const span = document.createElement("span");
    span.style.color = color; span.textContent = "■ " + id;
    legend.appendChild(span);
  }
}

function drawBars(id, buckets) {
  const c = document.getElementById(id), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const max = Math.max(0.001, ...buckets.map((b) => b.kwh));
  const w = (c.width - 40) / Math.max(1, buckets.length);
  g.font = "10px sans-serif"; g.fillStyle = "#666";
  g.fillText(max.toFixed(2) + " kWh", 2, 10);
  buckets.forEach((b, k) => {
    const h = (b.kwh / max) * (c.height - 30);
    g.fillStyle = "#1f77b4";
    g.fillRect(40 + k * w + 1, c.height - 15 - h, Math.max(1, w - 2), h);
    g.fillStyle = "#666";
    if (buckets.length <= 12 || k % 5 === 0) g.fillText(b.period.slice(5), 40 + k * w, c.height - 3);
  });
  c.dataset.buckets = buckets.length;
}

function showAlert(a, top) {
  const list = document.getElementById("alerts");
  let li = list.querySelector(`li[data-id="${a.id}"]`);
  if (!li) {
    li = document.createElement("li");
    li.dataset.id = a.id;
    top ? list.prepend(li) : list.appendChild(li);
  }
  li.className = (a.resolved ? "resolved " : "") + (a.read ? "" : "unread");
  li.dataset.kind = a.kind;
  li.textContent = `${new Date(a.created * 1000).toLocaleString()} ${a.deviceId} ${a.kind}: ${a.message}`;
  for (const action of ["read", "resolve"]) {
    if ((action === "read" && a.read) || (action === "resolve" && a.resolved)) continue;
    const b = document.createElement("button");
    b.textContent = action === "read" ? "mark read" : "resolve";
    b.onclick = async () => { await api(`/api/alerts/${a.id}/${action}`, {method: "POST"}); loadAlerts(); };
    li.appendChild(b);
  }
}

async function loadAlerts() {
  const {alerts} = await api("/api/alerts");
  document.getElementById("alerts").textContent = "";
  alerts.forEach((a) => showAlert(a, false));
}

async function loadStatus() {
  const {devices: list} = await api("/api/status");
  for (const d of list) {
    const cur = devices.get(d.deviceId) || {};
    devices.set(d.deviceId, {status: d.status, last: d.last || cur.last});
    showDevice(d.deviceId);
  }
}

async function loadHistory() {
  const from = Date.now() / 1000 - 3600;
  const {measurements} = await api(`/api/measurements?from=${from}&limit=20000`);
  series.clear();
  measurements.forEach(addPoint);
  drawHour();
}

async function loadUsage() {
  const t = await api("/api/usage/today");
  document.getElementById("today").textContent =
    `today ${t.kwh.toFixed(3)} kWh` + (t.tariffPerKwh ? ` · ${t.cost.toFixed(2)} ${t.currency}` : "");
  drawBars("daily", (await api("/api/summary?period=daily&days=30")).buckets);
  drawBars("monthly", (await api("/api/summary?period=monthly&days=366")).buckets);
}

function connect() {
  const es = new EventSource("/api/stream");
  const badge = document.getElementById("live");
  es.onopen = () => { badge.textContent = "live"; document.body.dataset.live = "1"; };
  es.onerror = () => { badge.textContent = "reconnecting…"; document.body.dataset.live = "0"; };
  es.addEventListener("reading", (e) => {
    const r = JSON.parse(e.data);
    devices.set(r.deviceId, {status: "ONLINE", last: r});
    showDevice(r.deviceId);
    addPoint(r);
  });
  es.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    const d = devices.get(s.deviceId) || {};
    devices.set(s.deviceId, {status: s.status, last: d.last});
    showDevice(s.deviceId);
  });
  es.addEventListener("alert", (e) => showAlert(JSON.parse(e.data), true));
  es.addEventListener("alert-update", () => loadAlerts());
}

async function main() {
  connect();
  await Promise.all([loadStatus(), loadHistory(), loadAlerts(), loadUsage()]);
  setInterval(drawHour, 2000);
  setInterval(loadStatus, 5000);
  setInterval(loadUsage, 60000);
  document.body.dataset.ready = "1";
}

main().catch((e) => console.error(e));
