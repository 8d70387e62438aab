"""The dashboard page the server's HTTP side serves at ``/``.

One self-contained, read-only page: inline CSS and JavaScript, charts
drawn as inline SVG, nothing loaded from elsewhere (operators' machines
often reach nothing outside).  It polls ``/api/status.json`` every two
seconds and rebuilds its tables with ``textContent`` only, so function
names and client ids from the network are never parsed as HTML.
"""

PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>geard</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330;
       background: #f4f6f9; }
header { background: #1d2330; color: #fff; padding: 10px 20px;
         display: flex; align-items: baseline; gap: 24px;
         flex-wrap: wrap; }
header h1 { font-size: 18px; margin: 0; }
header .stat b { font-size: 18px; }
main { padding: 12px 20px; display: grid; gap: 14px;
       grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); }
section { background: #fff; border-radius: 6px; padding: 10px 14px;
          box-shadow: 0 1px 2px rgba(0,0,0,.12); overflow-x: auto; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 15px; margin: 0 0 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 3px 8px; text-align: right; white-space: nowrap;
         border-bottom: 1px solid #e6e9ef; }
th { font-weight: 600; color: #4a5366; background: #fafbfc; }
td.name, th.name { text-align: left; }
td.list { text-align: left; white-space: normal; }
tr.alert td { background: #fff1f0; }
.muted { color: #7a8499; }
svg { width: 100%; height: 150px; display: block; }
.legend span { margin-right: 14px; }
.sw { display: inline-block; width: 10px; height: 10px;
      margin-right: 4px; }
#state.stale { color: #ffb3ad; }
</style>
</head>
<body>
<header>
  <h1>geard</h1>
  <span class="stat">waiting <b id="t-waiting">-</b></span>
  <span class="stat">running <b id="t-running">-</b></span>
  <span class="stat">jobs/s <b id="t-rate">-</b></span>
  <span class="stat">workers <b id="t-workers">-</b></span>
  <span class="stat">clients <b id="t-clients">-</b></span>
  <span class="stat muted" id="version"></span>
  <span class="stat muted" id="state">connecting...</span>
</header>
<main>
  <section>
    <h2>Queue depth</h2>
    <svg id="chart-depth" viewBox="0 0 600 150" preserveAspectRatio="none"
         role="img" aria-label="queue depth"></svg>
    <div class="legend muted"><span><i class="sw" style="background:#3a6ff7">
      </i>waiting</span><span><i class="sw" style="background:#f29d38">
      </i>running</span><span id="depth-max"></span></div>
  </section>
  <section>
    <h2>Jobs finished per second</h2>
    <svg id="chart-rate" viewBox="0 0 600 150" preserveAspectRatio="none"
         role="img" aria-label="jobs per second"></svg>
    <div class="legend muted"><span><i class="sw" style="background:#2da44e">
      </i>jobs/s</span><span id="rate-max"></span></div>
  </section>
  <section class="wide">
    <h2>Functions</h2>
    <table id="functions"><thead><tr>
      <th class="name">function</th><th>waiting</th><th>high</th>
      <th>normal</th><th>low</th><th>scheduled</th><th>running</th>
      <th>workers</th><th>jobs/s</th><th>completed</th><th>failed</th>
      <th>exception</th><th>requeued</th><th>oldest wait</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>Oldest waiting jobs</h2>
    <table id="oldest"><thead><tr>
      <th class="name">function</th><th class="name">priority</th>
      <th class="name">handle</th><th>age</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>Workers</h2>
    <table id="workers"><thead><tr>
      <th class="name">client id</th><th class="name">host</th>
      <th class="name">functions</th><th class="name">current job</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section class="wide muted" id="io"></section>
</main>
<script>
"use strict";
var REFRESH_MS = 2000;
var MAX_FUNCTIONS = 100;  // rows of the functions table

function el(tag, text, cls) {
  var e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function fmtAge(s) {
  if (s === null || s === undefined) return "-";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function fmtNum(n) { return Number(n).toLocaleString("en-US"); }
function fmtRate(r) { return r < 10 ? r.toFixed(1) : fmtNum(Math.round(r)); }
function sum(o) { return o.high + o.normal + o.low; }
function fillBody(table, rows) {
  var body = table.tBodies[0];
  var fresh = document.createElement("tbody");
  rows.forEach(function (r) { fresh.appendChild(r); });
  table.replaceChild(fresh, body);
}
function row(cells, cls) {
  var tr = document.createElement("tr");
  if (cls) tr.className = cls;
  cells.forEach(function (c) { tr.appendChild(c); });
  return tr;
}
function polyline(svg, points, maxY, color, fill) {
  var ns = "http://www.w3.org/2000/svg";
  var n = points.length;
  if (n < 2) return;
  var d = points.map(function (y, i) {
    var x = (i / (n - 1)) * 600;
    var py = 145 - (maxY > 0 ? (y / maxY) * 135 : 0);
    return x.toFixed(1) + "," + py.toFixed(1);
  });
  var p = document.createElementNS(ns, fill ? "polygon" : "polyline");
  if (fill) d = ["0,145"].concat(d, ["600,145"]);
  p.setAttribute("points", d.join(" "));
  p.setAttribute("fill", fill ? color : "none");
  p.setAttribute("fill-opacity", fill ? "0.25" : "1");
  p.setAttribute("stroke", color);
  p.setAttribute("stroke-width", "2");
  p.setAttribute("vector-effect", "non-scaling-stroke");
  svg.appendChild(p);
}
function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }
function drawCharts(samples) {
  var depth = document.getElementById("chart-depth");
  var rate = document.getElementById("chart-rate");
  clear(depth); clear(rate);
  var waiting = samples.map(function (s) { return s[1]; });
  var running = samples.map(function (s) { return s[2]; });
  var rates = [];
  for (var i = 1; i < samples.length; i++) {
    var dt = samples[i][0] - samples[i - 1][0];
    rates.push(dt > 0 ? Math.max(0, samples[i][3] - samples[i - 1][3]) / dt
               : 0);
  }
  var maxDepth = Math.max.apply(null, [1].concat(waiting, running));
  var maxRate = Math.max.apply(null, [1].concat(rates));
  polyline(depth, waiting, maxDepth, "#3a6ff7", true);
  polyline(depth, running, maxDepth, "#f29d38", false);
  polyline(rate, rates, maxRate, "#2da44e", true);
  document.getElementById("depth-max").textContent =
    "max " + fmtNum(maxDepth) + ", last " + (samples.length) + " s";
  document.getElementById("rate-max").textContent =
    "max " + fmtRate(maxRate) + "/s";
  return rates.length ? rates[rates.length - 1] : 0;
}
function render(s) {
  var rate = drawCharts(s.history.samples);
  document.getElementById("t-waiting").textContent = fmtNum(
    s.totals.waiting + s.totals.scheduled);
  document.getElementById("t-running").textContent = fmtNum(s.totals.running);
  document.getElementById("t-rate").textContent = fmtRate(rate);
  document.getElementById("t-workers").textContent =
    fmtNum(s.connections.worker);
  document.getElementById("t-clients").textContent =
    fmtNum(s.connections.client);
  document.getElementById("version").textContent =
    "gear " + s.version + ", up " + fmtAge(s.uptime);
  var state = document.getElementById("state");
  state.textContent = (s.stale ? "stale data, " : "") + "updated " +
    new Date(s.time * 1000).toLocaleTimeString();
  state.className = "stat " + (s.stale ? "stale" : "muted");

  // The busiest functions first; a CI farm registers thousands.
  var shown = s.functions.filter(function (f) { return f.present; });
  var busy = function (f) {
    return f.total * 1e6 + (f.rate || 0) * 1e3 + f.workers;
  };
  shown.sort(function (a, b) {
    return busy(b) - busy(a) || (a.name < b.name ? -1 : 1);
  });
  var hidden = shown.length - MAX_FUNCTIONS;
  shown = shown.slice(0, MAX_FUNCTIONS);
  var rows = shown.map(
    function (f) {
      var waiting = sum(f.queued) + f.scheduled;
      var cls = (waiting > 0 && f.workers === 0) ? "alert" : "";
      return row([el("td", f.name, "name"), el("td", fmtNum(waiting)),
        el("td", fmtNum(f.queued.high)), el("td", fmtNum(f.queued.normal)),
        el("td", fmtNum(f.queued.low)), el("td", fmtNum(f.scheduled)),
        el("td", fmtNum(f.running)), el("td", fmtNum(f.workers)),
        el("td", fmtRate(f.rate || 0)),
        el("td", fmtNum(f.completed)),
        el("td", fmtNum(f.failed)), el("td", fmtNum(f.exception)),
        el("td", fmtNum(f.requeued)),
        el("td", waiting ? fmtAge(f.oldest_age) : "-")], cls);
    });
  if (hidden > 0) {
    var more = el("td", "and " + fmtNum(hidden) + " more functions",
                  "name muted");
    more.colSpan = 14;
    rows.push(row([more]));
  }
  fillBody(document.getElementById("functions"), rows);
  fillBody(document.getElementById("oldest"), s.oldest.map(function (j) {
    return row([el("td", j.function, "name"), el("td", j.priority, "name"),
      el("td", j.handle, "name"), el("td", fmtAge(j.age))]);
  }));
  fillBody(document.getElementById("workers"), s.workers.map(function (w) {
    var jobs = w.jobs.map(function (j) {
      return j.function + " " + j.handle + " (" + fmtAge(j.running_for) + ")";
    }).join(", ");
    return row([el("td", w.client_id, "name"), el("td", w.host, "name"),
      el("td", w.functions.join(", "), "list"),
      el("td", jobs || "idle", "list")]);
  }));
  document.getElementById("io").textContent =
    "packets in " + fmtNum(s.io.packets_in) + ", out " +
    fmtNum(s.io.packets_out) + "; bytes in " + fmtNum(s.io.bytes_in) +
    ", out " + fmtNum(s.io.bytes_out) + "; output buffered " +
    fmtNum(s.io.output_queued_bytes) + " bytes; connections: " +
    s.connections.client + " client, " + s.connections.worker +
    " worker, " + s.connections.admin + " admin; store commits " +
    fmtNum(s.store.commit_seconds.count) + " (" +
    s.store.commit_failures + " failed)";
  document.body.setAttribute("data-updates",
    String(Number(document.body.getAttribute("data-updates") || 0) + 1));
}
function refresh() {
  var xhr = new XMLHttpRequest();
  xhr.open("GET", "api/status.json");
  xhr.timeout = 5000;
  xhr.onload = function () {
    if (xhr.status === 200) {
      try { render(JSON.parse(xhr.responseText)); }
      catch (e) { document.getElementById("state").textContent =
                  "bad data: " + e; }
    } else {
      document.getElementById("state").textContent = "HTTP " + xhr.status;
    }
    setTimeout(refresh, REFRESH_MS);
  };
  xhr.onerror = xhr.ontimeout = function () {
    document.getElementById("state").textContent = "server unreachable";
    setTimeout(refresh, REFRESH_MS);
  };
  xhr.send();
}
refresh();
</script>
</body>
</html>
"""
