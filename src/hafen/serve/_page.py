"""The page at ``/``: history and forecast of one store and product, drawn as inline SVG.

Plain HTML and JavaScript, nothing loaded from the network. It reads ``/datasets/forecasts``
for the stores, then ``/history`` and ``/forecasts`` for the chosen store and product, and draws
the P10-P90 range as a band when the forecasts have one. With tenants, the page asks for the API
key and sends it as ``Authorization: Bearer``; the page itself holds no data.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>hafen forecasts</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; }
  h1 { font-size: 20px; margin: 0 0 12px; }
  form { margin-bottom: 12px; }
  label { margin-right: 12px; }
  input { width: 6em; }
  #status { color: #666; margin-left: 12px; }
  svg { background: #fff; border: 1px solid #ddd; }
  .axis { stroke: #999; stroke-width: 1; }
  .grid { stroke: #eee; stroke-width: 1; }
  .tick { fill: #555; font-size: 11px; }
  .history { fill: none; stroke: #1f77b4; stroke-width: 1.5; }
  .forecast { fill: none; stroke: #ff7f0e; stroke-width: 2.5; }
  .band { fill: #ff7f0e; fill-opacity: 0.18; stroke: none; }
  .baseline { fill: none; stroke: #888; stroke-width: 1.2; stroke-dasharray: 4 3; }
  .origin { stroke: #bbb; stroke-dasharray: 2 2; }
  .legend { font-size: 12px; }
</style>
</head>
<body>
<h1>hafen: sales history and forecast</h1>
<form id="choose">
  <label>Store <input id="store" type="number" min="0" value="1"></label>
  <label>Product <input id="product" type="number" min="0" value="1"></label>
  <label>API key <input id="key" type="password" size="24"
    placeholder="(if the service has tenants)"></label>
  <button type="submit">Show</button>
  <span id="status">loading&hellip;</span>
</form>
<svg id="chart" width="960" height="420" role="img" aria-label="history and forecast"></svg>
<script>
"use strict";
const W = 960, H = 420, M = {left: 56, right: 20, top: 20, bottom: 56};
const NS = "http://www.w3.org/2000/svg";
const svg = document.getElementById("chart");
const status = document.getElementById("status");

function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  svg.appendChild(e);
  return e;
}
const day = s => Date.parse(s + "T00:00:00Z") / 86400000;
const iso = d => new Date(d * 86400000).toISOString().slice(0, 10);

const keyInput = document.getElementById("key");
keyInput.value = sessionStorage.getItem("hafen-key") || "";
async function getJSON(url) {
  const key = keyInput.value.trim();
  sessionStorage.setItem("hafen-key", key);
  const r = await fetch(url, key ? {headers: {Authorization: "Bearer " + key}} : {});
  if (!r.ok) throw new Error((await r.json()).detail || r.statusText);
  return r.json();
}

function draw(history, forecasts, title) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const pts = history.map(r => [day(r.date), r.qty]).filter(p => p[1] !== null);
  const fc = forecasts.map(r => [day(r.date), r.forecast]);
  const bl = forecasts.filter(r => r.baseline !== null).map(r => [day(r.date), r.baseline]);
  const lo = forecasts.filter(r => r.p10 != null).map(r => [day(r.date), r.p10]);
  const hi = forecasts.filter(r => r.p90 != null).map(r => [day(r.date), r.p90]);
  const all = pts.concat(fc, bl, hi);
  const x0 = Math.min(...all.map(p => p[0])), x1 = Math.max(...all.map(p => p[0]));
  const y1 = Math.max(1, ...all.map(p => p[1])) * 1.1;
  const sx = d => M.left + (d - x0) / Math.max(1, x1 - x0) * (W - M.left - M.right);
  const sy = v => H - M.bottom - v / y1 * (H - M.top - M.bottom);
  for (let i = 0; i <= 5; i++) {
    const v = y1 * i / 5, y = sy(v);
    el("line", {class: "grid", x1: M.left, x2: W - M.right, y1: y, y2: y});
    el("text", {class: "tick", x: M.left - 6, y: y + 4, "text-anchor": "end"}, v.toFixed(0));
  }
  for (let i = 0; i <= 6; i++) {
    const d = x0 + (x1 - x0) * i / 6, x = sx(d);
    el("line", {class: "axis", x1: x, x2: x, y1: H - M.bottom, y2: H - M.bottom + 5});
    const anchor = i === 0 ? "start" : i === 6 ? "end" : "middle";
    el("text", {class: "tick", x: x, y: H - M.bottom + 18, "text-anchor": anchor},
       iso(Math.round(d)));
  }
  el("line", {class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom});
  el("line", {class: "axis", x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom});
  if (fc.length) {
    const xo = sx(fc[0][0] - 0.5);
    el("line", {class: "origin", x1: xo, x2: xo, y1: M.top, y2: H - M.bottom});
  }
  const path = (p, cls) => el("polyline", {
    class: cls, points: p.map(q => sx(q[0]).toFixed(1) + "," + sy(q[1]).toFixed(1)).join(" ")
  });
  if (lo.length) {  // the P10-P90 range, as a band under the forecast
    el("polygon", {class: "band", points: lo.concat(hi.slice().reverse())
      .map(q => sx(q[0]).toFixed(1) + "," + sy(q[1]).toFixed(1)).join(" ")});
  }
  svg.setAttribute("data-band-points", lo.length);
  path(pts, "history");
  path(bl, "baseline");
  path(fc, "forecast");
  const legend = [["history", "#1f77b4", "sales"], ["forecast", "#ff7f0e", "forecast"],
                  ["baseline", "#888", "seasonal naive"]];
  legend.forEach(([cls, color, label], i) => {
    const x = M.left + 10 + i * 150, y = H - 14;
    el("line", {class: cls, x1: x, x2: x + 24, y1: y - 4, y2: y - 4});
    el("text", {class: "legend", x: x + 30, y: y}, label);
  });
  el("text", {class: "legend", x: W - M.right, y: M.top - 4, "text-anchor": "end"}, title);
  svg.setAttribute("data-history-points", pts.length);
  svg.setAttribute("data-forecast-points", fc.length);
}

async function show() {
  const store = document.getElementById("store").value;
  const product = document.getElementById("product").value;
  status.textContent = "loading\\u2026";
  try {
    const q = "store_id=" + store + "&product_id=" + product;
    const [h, f] = await Promise.all([
      getJSON("/history?" + q + "&last=120"), getJSON("/forecasts?" + q)]);
    draw(h.rows, f.rows, "store " + store + ", product " + product +
         " \\u00b7 forecasts v" + f.version + ", sales v" + h.version);
    status.textContent = h.rows.length + " days of history, " + f.rows.length +
                         " days of forecast";
    svg.setAttribute("data-ready", "1");
  } catch (e) {
    status.textContent = "error: " + e.message;
  }
}

document.getElementById("choose").addEventListener("submit", e => { e.preventDefault(); show(); });
show();
</script>
</body>
</html>
"""
