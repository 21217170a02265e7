// WorldLM dashboard: keeps the server's view model in `view`, applies SSE snapshots and
// deltas (whole federations and clients, replaced), and re-renders. No build step, no CDN.
"use strict";

const PALETTE = ["#2f6fed", "#e8590c", "#1f9d55", "#9c36b5", "#d6336c", "#0c8599",
                 "#f08c00", "#5c7cfa", "#37b24d", "#845ef7", "#e03131", "#1098ad"];
const view = { federations: {}, clients: {}, levels: {}, dead_letters: [],
               rejected_by_reason: {}, roots: [], counters: {}, run: "", last_event_at: null };
let clockSkew = 0; // server time - browser time, seconds
const charts = {};
const colorOf = (() => {
  const assigned = {};
  return (key) => (assigned[key] ??= PALETTE[Object.keys(assigned).length % PALETTE.length]);
})();

// ---- helpers --------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const now = () => Date.now() / 1000 + clockSkew;

function fmt(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  if (Math.abs(x) >= 1e4) return x.toExponential(2);
  return x.toFixed(digits);
}
function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}
function clock(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString([], { hour12: false }) : "—";
}
function duration(s) {
  s = Math.max(0, Math.round(s));
  return s >= 60 ? `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}

// ---- state ----------------------------------------------------------------------------------

const RUN_KEYS = ["levels", "dead_letters", "rejected_by_reason", "rejected_by_federation",
                  "roots", "counters", "last_event_at", "run", "has_config"];

function apply(message) {
  if (message.now) clockSkew = message.now - Date.now() / 1000;
  if (message.type === "snapshot") {
    view.federations = message.federations;
    view.clients = message.clients;
  } else {
    Object.assign(view.federations, message.federations || {});
    Object.assign(view.clients, message.clients || {});
  }
  for (const key of RUN_KEYS) if (key in message) view[key] = message[key];
  render();
}

function connect() {
  const conn = $("conn");
  const source = new EventSource("/events");
  source.addEventListener("open", () => { conn.className = "conn conn-live"; conn.textContent = "live"; });
  source.addEventListener("error", () => {
    conn.className = "conn conn-down"; conn.textContent = "reconnecting";
  });
  for (const kind of ["snapshot", "delta"]) {
    source.addEventListener(kind, (e) => apply(JSON.parse(e.data)));
  }
}

// ---- the tree -------------------------------------------------------------------------------

function treeNode(fid) {
  const f = view.federations[fid];
  if (!f) return "";
  const members = f.members || {};
  const status = (id) => members[id]?.status;
  const clients = f.clients.map((cid) => {
    const c = view.clients[cid] || {};
    const st = c.final ? "done" : (status(cid) || c.status || "unknown");
    return `<li class="client" data-client="${esc(cid)}"><div class="node">
        <span class="name">${esc(cid)}</span>
        <span class="pill ${esc(st)}">${esc(st === "live" ? "joined" : st)}</span>
        <span class="muted">ppl ${fmt(c.ppl_latest)}</span>
        <span class="muted">r${c.round ?? "—"}</span></div></li>`;
  }).join("");
  const children = f.children.map(treeNode).join("");
  const own = f.parent && view.federations[f.parent]?.members?.[fid]?.status;
  const quorum = f.quorum ?? "?";
  return `<li class="fed" data-federation="${esc(fid)}"><div class="node">
      <span class="name">${esc(fid)}</span>
      <span class="pill round">round ${f.round}</span>
      ${own ? `<span class="pill ${esc(own)}">${esc(own === "live" ? "joined" : own)}</span>` : ""}
      <span class="muted">${f.arrived}/${quorum} arrived · ${f.live_members} live</span>
      ${f.dp ? `<span class="pill">DP ε ${fmt(f.epsilon, 2)}</span>` : ""}
    </div><ul>${children}${clients}</ul></li>`;
}

function renderTree() {
  const roots = (view.roots || []).filter((r) => view.federations[r]);
  const orphans = Object.keys(view.clients).filter((c) => !view.federations[view.clients[c].federation]);
  if (!roots.length && !orphans.length) return;
  let html = `<ul>${roots.map(treeNode).join("")}</ul>`;
  if (orphans.length) {
    html += `<p class="muted">Clients of unknown federations: ${orphans.map(esc).join(", ")}</p>`;
  }
  $("tree").innerHTML = html;
}

// ---- charts ---------------------------------------------------------------------------------

function aligned(seriesMap) {
  // {name: [[x, y], ...]} -> uPlot data: [xs, ys_1, ...] with nulls where a series has no point.
  const names = Object.keys(seriesMap).sort();
  const xs = [...new Set(names.flatMap((n) => seriesMap[n].map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = names.map((n) => {
    const y = new Array(xs.length).fill(null);
    for (const [x, v] of seriesMap[n]) y[index.get(x)] = v;
    return y;
  });
  return { names, data: [xs, ...ys] };
}

function lineChart(id, seriesMap, { xLabel = "round", yLabel = "", time = false, log = false } = {}) {
  const el = $(id);
  const { names, data } = aligned(seriesMap);
  const points = data.slice(1).reduce((n, ys) => n + ys.filter((y) => y !== null).length, 0);
  el.dataset.points = String(points);
  el.dataset.series = String(names.length);
  if (!names.length) {
    if (!charts[id]) el.innerHTML = `<p class="empty">No data yet.</p>`;
    return;
  }
  const key = names.join("|");
  const width = Math.max(200, el.clientWidth);
  const height = el.classList.contains("small") ? 150 : 250;
  let chart = charts[id];
  if (chart && chart._key !== key) { chart.destroy(); chart = null; }
  if (!chart) {
    el.innerHTML = "";
    chart = new uPlot({
      width, height,
      scales: { x: { time }, y: log ? { distr: 3 } : {} },
      axes: [
        { label: xLabel, stroke: "#6b7485", grid: { stroke: "#eef1f5" }, ticks: { stroke: "#e3e7ee" },
          ...(time ? {} : { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }) },
        { label: yLabel, stroke: "#6b7485", grid: { stroke: "#eef1f5" }, ticks: { stroke: "#e3e7ee" },
          size: 56 },
      ],
      cursor: { drag: { x: false, y: false } },
      legend: { live: false },
      series: [{ label: xLabel }, ...names.map((n) => ({
        label: n, stroke: colorOf(n), width: 2, spanGaps: true,
        points: { show: true, size: 5, fill: colorOf(n) },
        value: (u, v) => (v === null ? "—" : fmt(v, 2)),
      }))],
    }, data, el);
    chart._key = key;
    charts[id] = chart;
  } else {
    chart.setData(data);
  }
}

window.addEventListener("resize", () => {
  for (const [id, chart] of Object.entries(charts)) {
    chart.setSize({ width: Math.max(200, $(id).clientWidth), height: chart.height });
  }
});

// ---- panels ---------------------------------------------------------------------------------

function sortedFeds() {
  return Object.values(view.federations).sort((a, b) => a.level - b.level || a.id.localeCompare(b.id));
}

function renderRounds() {
  $("rounds").innerHTML = sortedFeds().map((f) => {
    const q = f.quorum || 0;
    const pct = q ? Math.min(100, (100 * f.arrived) / q) : 0;
    const counts = { live: 0, left: 0, expired: 0 };
    for (const m of Object.values(f.members)) counts[m.status] = (counts[m.status] || 0) + 1;
    const members = `${counts.live} live` + (counts.left ? ` · ${counts.left} left` : "")
      + (counts.expired ? ` · <span class="deadline over">${counts.expired} expired</span>` : "");
    return `<tr data-federation="${esc(f.id)}">
      <td><b>${esc(f.id)}</b>${f.leader ? `<br><span class="muted" title="leading aggregator replica (lease token)">${esc(f.leader.split(":").slice(0, 2).join(":"))}</span>` : ""}</td><td>${f.level}</td>
      <td>${f.round}${f.round_open ? "" : ` <span class="muted">(${esc(f.last_close_reason || "closed")})</span>`}</td>
      <td><span class="fill ${f.barrier_closed ? "closed" : ""}"><span class="track">
        <span class="bar" style="width:${pct}%"></span></span>${f.arrived} / ${q || "?"}</span></td>
      <td class="deadline" data-deadline="${f.deadline_at ?? ""}">—</td>
      <td>${members}</td>
      <td class="num">${f.version}</td><td class="num">${f.accepted}</td>
      <td class="num">${f.lag ?? "—"}</td>
      <td class="num">${bytes(f.bytes_in)}</td><td class="num">${bytes(f.bytes_out)}</td>
      <td class="num">${f.dp ? fmt(f.epsilon, 2) : "off"}</td>
      <td class="num">${fmt(f.ppl_latest)}</td></tr>`;
  }).join("");
  tickDeadlines();
}

function tickDeadlines() {
  for (const cell of document.querySelectorAll("td.deadline")) {
    const at = parseFloat(cell.dataset.deadline);
    if (!at) { cell.textContent = "—"; cell.className = "deadline"; continue; }
    const left = at - now();
    cell.textContent = left > 0 ? `in ${duration(left)}` : `passed ${duration(-left)} ago`;
    cell.className = "deadline" + (left <= 0 ? " over" : left < 15 ? " soon" : "");
  }
}

function barRows(rows, { max, format = (v) => String(v) } = {}) {
  // rows: [{label, segments: [{value, color, title}], total}]
  if (!rows.length) return `<p class="empty">Nothing yet.</p>`;
  const top = max ?? Math.max(1, ...rows.map((r) => r.total));
  return rows.map((r) => `<div class="brow"><span class="label" title="${esc(r.label)}">${esc(r.label)}</span>
    <span class="track">${r.segments.map((s) =>
      `<span class="seg" title="${esc(s.title)}" style="width:${(100 * s.value) / top}%;background:${s.color}"></span>`).join("")}
    </span><span class="value">${format(r.total)}</span></div>`).join("");
}

function renderStaleness() {
  const STALE = ["#1f9d55", "#f0b400", "#e8590c", "#d64545", "#9c36b5"];
  const feds = sortedFeds().filter((f) => f.staleness.length);
  const levels = [...new Set(feds.flatMap((f) => f.staleness.map(([s]) => s)))].sort((a, b) => a - b);
  const rows = feds.map((f) => ({
    label: f.id,
    total: f.staleness.reduce((n, [, c]) => n + c, 0),
    segments: f.staleness.map(([s, c]) => ({ value: c, color: STALE[Math.min(s, STALE.length - 1)],
                                            title: `staleness ${s}: ${c}` })),
  }));
  const legend = levels.map((s) => `<span><i style="background:${STALE[Math.min(s, STALE.length - 1)]}"></i>${s}</span>`).join("");
  $("staleness").innerHTML = barRows(rows)
    + (rows.length ? `<div class="legend">staleness: ${legend}</div>` : "");
}

function renderLevels() {
  const entries = Object.entries(view.levels || {});
  $("levels").innerHTML = entries.length ? entries.map(([k, l]) => `<div class="level">
      <div class="k">level ${k}${k === "0" ? " (root)" : ""}</div>
      <div class="v">${l.updates} updates</div>
      <div class="r">${bytes(l.bytes_in)} in · ${bytes(l.bytes_out)} out</div>
      <div class="r">${(l.updates_per_s * 60).toFixed(1)} updates/min · ${bytes(l.bytes_in_per_s)}/s in</div>
    </div>`).join("") : `<p class="empty">No aggregator has closed a round yet.</p>`;
  const series = {};
  for (const [k, l] of entries) series[`L${k} bytes in`] = l.series.map(([t, , b]) => [t, b / 1048576]);
  lineChart("chart-levels", series, { xLabel: "time", yLabel: "MiB", time: true });
}

function renderLag() {
  const rows = sortedFeds().filter((f) => f.lag !== null).map((f) => ({
    label: f.id, total: f.lag,
    segments: [{ value: f.lag, color: f.lag > 0 ? "#e8590c" : "#1f9d55", title: `${f.lag} records` }],
  }));
  $("lag").innerHTML = barRows(rows, { max: Math.max(10, ...rows.map((r) => r.total)) });
}

function renderDP() {
  const feds = sortedFeds().filter((f) => f.dp);
  if (!feds.length) {
    $("dp").innerHTML = `<p class="empty">DP is off in every federation.</p>`;
    $("chart-dp").style.display = "none";
    return;
  }
  $("chart-dp").style.display = "";
  $("dp").innerHTML = barRows(feds.map((f) => ({
    label: f.id, total: f.epsilon ?? 0,
    segments: [{ value: f.epsilon ?? 0, color: colorOf(f.id), title: `ε ${fmt(f.epsilon, 3)}` }],
  })), { format: (v) => `ε ${fmt(v, 2)}` });
  const series = {};
  for (const f of feds) if (f.epsilon_series.length) series[f.id] = f.epsilon_series;
  lineChart("chart-dp", series, { yLabel: "ε" });
}

function renderRejected() {
  const reasons = Object.entries(view.rejected_by_reason || {});
  $("reasons").innerHTML = reasons.length ? barRows(reasons.map(([r, n]) => ({
    label: r, total: n, segments: [{ value: n, color: "#d64545", title: `${n} × ${r}` }],
  }))) : `<p class="empty">No input rejected.</p>`;
  const letters = [...(view.dead_letters || [])].reverse();
  $("letters").innerHTML = letters.length ? letters.map((d) => `<tr>
      <td>${clock(d.at)}</td><td>${esc(d.federation)}</td><td>${esc(d.sender)}</td>
      <td><span class="pill expired">${esc(d.reason)}</span></td>
      <td class="detail">${esc(d.detail)}</td><td><code>${esc(d.source)}</code></td></tr>`).join("")
    : `<tr><td colspan="6" class="empty">The dead-letter topic is empty.</td></tr>`;
}

function render() {
  $("run-id").textContent = view.run || "…";
  const c = view.counters || {};
  $("records").textContent = String((c.metrics || 0) + (c.events || 0) + (c.dead_letters || 0));
  $("last-event").textContent = clock(view.last_event_at);
  renderTree();
  const fedPpl = {};
  for (const f of Object.values(view.federations)) if (f.ppl.length) fedPpl[f.id] = f.ppl;
  lineChart("chart-fed-ppl", fedPpl, { yLabel: "perplexity", log: true });
  const clientPpl = {};
  for (const cl of Object.values(view.clients)) if (cl.ppl.length) clientPpl[cl.id] = cl.ppl;
  lineChart("chart-client-ppl", clientPpl, { yLabel: "perplexity", log: true });
  renderRounds();
  renderStaleness();
  renderLevels();
  renderLag();
  renderDP();
  renderRejected();
}

setInterval(tickDeadlines, 1000);
connect();
