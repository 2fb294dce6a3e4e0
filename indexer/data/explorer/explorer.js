// The phylolm explorer: draws the tree embedded in #explorer-data on a canvas.
// Nodes come in preorder (a parent before its children); leaves are numbered in that order.
// Everything is computed once on load (layout, colour buckets); a frame walks the nodes once
// and strokes only the segments inside the view, one path per colour.
// Reads: location.hash "#search=<id>" selects that model on load (used by the browser tests).
// Writes, on the body element: data-explorer="ready", data-leaves, data-load-ms, data-heap-bytes, data-card.
(function () {
  "use strict";
  var t0 = performance.now();
  var D = JSON.parse(document.getElementById("explorer-data").textContent);
  var P = D.parent, L = D.length, N = P.length, NL = D.ids.length;
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173"];
  var OTHER = "#aaaaaa", EDGE = "#777777";
  // ---- layout: x = distance from the root, y = leaf rank (internal: middle of its children)
  var X = new Float64Array(N), Y = new Float64Array(N), leafOf = new Int32Array(N).fill(-1);
  var nodeOfLeaf = new Int32Array(NL), nChild = new Int32Array(N);
  var firstChild = new Int32Array(N).fill(-1), lastChild = new Int32Array(N).fill(-1);
  var i, p, k = 0, maxX = 0;
  for (i = 1; i < N; i++) { p = P[i]; nChild[p]++; if (firstChild[p] < 0) firstChild[p] = i; lastChild[p] = i; }
  for (i = 0; i < N; i++) {
    if (i > 0) X[i] = X[P[i]] + L[i];
    if (X[i] > maxX) maxX = X[i];
    if (nChild[i] === 0) { leafOf[i] = k; nodeOfLeaf[k] = i; Y[i] = k; k++; }
  }
  for (i = N - 1; i >= 0; i--) if (nChild[i] > 0) Y[i] = (Y[firstChild[i]] + Y[lastChild[i]]) / 2;
  if (maxX <= 0) maxX = 1;

  // ---- colour-bys
  var select = document.getElementById("colour-by");
  Object.keys(D.attrs).forEach(function (name) {
    var o = document.createElement("option"); o.value = name; o.textContent = name; select.appendChild(o);
  });
  function ramp(t) { // a perceptual blue-green-yellow ramp (viridis stops)
    var s = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    t = Math.max(0, Math.min(1, t)) * (s.length - 1); var j = Math.min(s.length - 2, Math.floor(t)), f = t - j;
    var c = s[j].map(function (a, q) { return Math.round(a + f * (s[j + 1][q] - a)); });
    return "rgb(" + c.join(",") + ")";
  }
  var nodeColour = new Array(N), colours = [], legendItems = [];
  function applyColour(name) {
    var a = D.attrs[name], leafCol = new Array(NL), lo = Infinity, hi = -Infinity, v;
    legendItems = [];
    if (a.type === "categorical") {
      var cc = a.categories.map(function (c, q) { return q < PALETTE.length ? PALETTE[q] : OTHER; });
      for (k = 0; k < NL; k++) leafCol[k] = cc[a.codes[k]];
      a.categories.slice(0, PALETTE.length).forEach(function (c, q) { legendItems.push([cc[q], c + " (" + a.counts[q] + ")"]); });
      if (a.categories.length > PALETTE.length) legendItems.push([OTHER, (a.categories.length - PALETTE.length) + " more"]);
    } else {
      for (k = 0; k < NL; k++) { v = a.values[k]; if (v !== null) { if (v < lo) lo = v; if (v > hi) hi = v; } }
      var span = hi > lo ? hi - lo : 1;
      for (k = 0; k < NL; k++) { v = a.values[k]; leafCol[k] = v === null ? OTHER : ramp((v - lo) / span); }
      if (isFinite(lo)) { legendItems.push([ramp(0), "low " + lo.toFixed(3)]); legendItems.push([ramp(1), "high " + hi.toFixed(3)]); }
      legendItems.push([OTHER, "no value"]);
    }
    // an internal edge takes its clade's colour when every leaf below has that colour
    // (children come after their parent in preorder: one backward pass merges them)
    var UNSET = {};
    for (i = 0; i < N; i++) nodeColour[i] = leafOf[i] >= 0 ? leafCol[leafOf[i]] : UNSET;
    for (i = N - 1; i > 0; i--) {
      p = P[i];
      if (nodeColour[p] === UNSET) nodeColour[p] = nodeColour[i];
      else if (nodeColour[p] !== nodeColour[i]) nodeColour[p] = null;
    }
    var bucket = {};
    colours = [];
    for (i = 0; i < N; i++) {
      var col = nodeColour[i] || EDGE;
      if (!bucket[col]) { bucket[col] = []; colours.push([col, bucket[col]]); }
      bucket[col].push(i);
    }
    document.getElementById("legend").innerHTML = legendItems.map(function (it) {
      return '<span><i class="swatch" style="background:' + it[0] + '"></i>' + esc(it[1]) + "</span>";
    }).join("") + (a.note ? ' <span class="meta">' + esc(a.note) + "</span>" : "");
    draw();
  }
  select.addEventListener("change", function () { applyColour(select.value); });

  // ---- view: screen = offset + tree * scale
  var canvas = document.getElementById("tree-canvas"), ctx = canvas.getContext("2d");
  var W = 0, H = 0, dpr = window.devicePixelRatio || 1, LABEL_W = 0;
  var view = { ox: 10, oy: 10, kx: 1, ky: 1 };
  var selected = -1, highlight = null;
  function resize() {
    var r = canvas.getBoundingClientRect(); W = Math.max(100, r.width); H = Math.max(100, r.height);
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
  }
  function reset() {
    LABEL_W = NL <= 2000 ? 340 : 0;
    view.kx = (W - 20 - LABEL_W) / maxX; view.ox = 10;
    view.ky = NL > 1 ? (H - 20) / (NL - 1) : 1; view.oy = 10;
    draw(); fullDrawMs = drawMs;
  }
  var frames = 0, drawMs = 0, fullDrawMs = 0;
  function draw() {
    var tDraw = performance.now();
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    if (N === 0) { ctx.fillStyle = "#666"; ctx.fillText("no tree yet", 20, 20); return; }
    var y0 = (-view.oy) / view.ky - 1, y1 = (H - view.oy) / view.ky + 1;
    var width = view.ky > 4 ? 1.5 : 1;
    ctx.lineWidth = width;
    for (var b = 0; b < colours.length; b++) {
      var nodes = colours[b][1];
      ctx.strokeStyle = colours[b][0];
      ctx.beginPath();
      for (var q = 0; q < nodes.length; q++) {
        var v = nodes[q], pv = P[v];
        if (pv < 0) continue;
        var yv = Y[v], yp = Y[pv];
        if ((yv < y0 && yp < y0) || (yv > y1 && yp > y1)) continue;
        var sx = view.ox + X[pv] * view.kx, sy = view.oy + yv * view.ky;
        if (yv >= y0 && yv <= y1) { ctx.moveTo(sx, sy); ctx.lineTo(view.ox + X[v] * view.kx, sy); }
        ctx.moveTo(sx, sy); ctx.lineTo(sx, view.oy + yp * view.ky);
      }
      ctx.stroke();
    }
    var first = Math.max(0, Math.ceil(y0)), last = Math.min(NL - 1, Math.floor(y1));
    if (view.ky >= 9 && last - first < 800) { // leaf labels once rows are readable
      ctx.font = Math.min(13, view.ky - 1) + "px sans-serif"; ctx.textBaseline = "middle";
      for (k = first; k <= last; k++) {
        var n = nodeOfLeaf[k];
        ctx.fillStyle = nodeColour[n] || "#333";
        ctx.fillText(D.ids[k], view.ox + X[n] * view.kx + 5, view.oy + k * view.ky);
      }
    }
    if (highlight) {
      ctx.fillStyle = "rgba(214,39,40,0.9)";
      for (k = first; k <= last; k++) if (highlight[k]) {
        n = nodeOfLeaf[k]; ctx.fillRect(view.ox + X[n] * view.kx - 2, view.oy + k * view.ky - 2, 4, 4);
      }
    }
    if (selected >= 0) {
      n = nodeOfLeaf[selected];
      ctx.strokeStyle = "#000"; ctx.lineWidth = 2; ctx.beginPath();
      ctx.arc(view.ox + X[n] * view.kx, view.oy + selected * view.ky, 6, 0, 2 * Math.PI); ctx.stroke();
    }
    frames++; drawMs = performance.now() - tDraw;
  }
  var pending = false;
  function redraw() { if (!pending) { pending = true; requestAnimationFrame(function () { pending = false; draw(); }); } }
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var r = canvas.getBoundingClientRect(), mx = e.clientX - r.left, my = e.clientY - r.top;
    var f = Math.exp(-e.deltaY * 0.0015);
    if (e.shiftKey) { view.ox = mx - (mx - view.ox) * f; view.kx *= f; }
    else { view.oy = my - (my - view.oy) * f; view.ky *= f; }
    redraw();
  }, { passive: false });
  var drag = null;
  canvas.addEventListener("mousedown", function (e) { drag = { x: e.clientX, y: e.clientY, ox: view.ox, oy: view.oy, moved: false }; });
  window.addEventListener("mousemove", function (e) {
    if (!drag) return;
    var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    view.ox = drag.ox + dx; view.oy = drag.oy + dy; redraw();
  });
  window.addEventListener("mouseup", function (e) {
    if (drag && !drag.moved) pick(e);
    drag = null;
  });
  function pick(e) {
    var r = canvas.getBoundingClientRect(), my = e.clientY - r.top;
    var kk = Math.round((my - view.oy) / view.ky);
    if (kk < 0 || kk >= NL || Math.abs(view.oy + kk * view.ky - my) > Math.max(6, view.ky / 2)) return;
    selectLeaf(kk, false);
  }
  document.getElementById("reset").addEventListener("click", function () { highlight = null; reset(); });
  window.addEventListener("resize", function () { // keep a selected model in view
    resize(); if (selected >= 0) selectLeaf(selected, true); else reset();
  });

  // ---- search
  var index = {}; for (k = 0; k < NL; k++) index[D.ids[k]] = k;
  var search = document.getElementById("search"), matches = document.getElementById("matches");
  function findMatches(q) {
    q = q.trim().toLowerCase(); var out = [];
    if (!q) return out;
    if (index[q] !== undefined) out.push(index[q]);
    for (k = 0; k < NL && out.length < 20; k++) if (D.ids[k].toLowerCase().indexOf(q) >= 0 && out.indexOf(k) < 0) out.push(k);
    return out;
  }
  search.addEventListener("input", function () {
    matches.innerHTML = findMatches(search.value).map(function (m) { return '<li data-k="' + m + '">' + esc(D.ids[m]) + "</li>"; }).join("");
  });
  search.addEventListener("keydown", function (e) {
    if (e.key === "Enter") { var m = findMatches(search.value); if (m.length) selectLeaf(m[0], true); matches.innerHTML = ""; }
  });
  matches.addEventListener("click", function (e) {
    var li = e.target.closest("li"); if (li) { selectLeaf(parseInt(li.getAttribute("data-k"), 10), true); matches.innerHTML = ""; }
  });
  function selectLeaf(kk, centre) {
    selected = kk;
    if (centre) { // zoom in to readable rows, and scroll only when the model is out of view
      if (view.ky < 14) { view.ky = 14; view.oy = H / 2 - kk * view.ky; }
      var sy = view.oy + kk * view.ky;
      if (sy < 10 || sy > H - 10) view.oy = H / 2 - kk * view.ky;
    }
    showCard(kk); draw();
  }

  // ---- card
  var card = document.getElementById("card");
  function esc(s) { return String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; }); }
  function num(x) { return x === null || x === undefined ? "" : Number(x).toFixed(3); }
  function showCard(kk) {
    var id = D.ids[kk], c = D.cards, h = [];
    var url = D.hub_url + "/" + id.split("/").map(encodeURIComponent).join("/");
    h.push('<button class="close" type="button" title="close">&times;</button><h3>' + esc(id) + "</h3>");
    h.push('<p><a href="' + esc(url) + '" target="_blank" rel="noopener noreferrer">Hub page</a></p>');
    h.push("<table><tr><th>uploaded</th><td>" + esc(D.created[kk] || "unknown") + "</td></tr>");
    h.push("<tr><th>declared base</th><td>" + (D.base[kk].length ? D.base[kk].map(esc).join(", ") : "none") + "</td></tr>");
    Object.keys(D.attrs).forEach(function (name) {
      var a = D.attrs[name];
      if (a.type === "categorical") h.push("<tr><th>" + esc(name) + "</th><td>" + esc(a.categories[a.codes[kk]]) + "</td></tr>");
    });
    h.push("</table>");
    var near = c.nearest[kk];
    h.push("<h4>nearest relatives</h4>" + (near && near.length ? "<table><tr><th>model</th><th>distance</th></tr>" +
      near.map(function (r) { return '<tr><td><a href="#" data-goto="' + esc(r[0]) + '">' + esc(r[0]) + "</a></td><td>" + num(r[1]) + "</td></tr>"; }).join("") + "</table>" : '<p class="meta">none recorded</p>'));
    var est = c.estimates[kk];
    h.push("<h4>estimates (90% interval)</h4>" + (est && est.length ? "<table class=\"card-estimates\"><tr><th>benchmark</th><th>estimate</th><th>interval</th><th>method</th></tr>" +
      est.map(function (r) { return "<tr><td>" + esc(r[0]) + "</td><td>" + num(r[1]) + "</td><td>" + num(r[2]) + " &ndash; " + num(r[3]) + "</td><td>" + esc(r[4]) + "</td></tr>"; }).join("") + "</table>" : '<p class="meta">none</p>'));
    var sc = c.scores[kk];
    h.push("<h4>measured scores</h4>" + (sc && sc.length ? "<table class=\"card-scores\"><tr><th>benchmark</th><th>value</th><th>source</th></tr>" +
      sc.map(function (r) { return "<tr><td>" + esc(r[0]) + "</td><td>" + num(r[1]) + "</td><td>" + esc(r[2]) + "</td></tr>"; }).join("") + "</table>" : '<p class="meta">none</p>'));
    var ho = c.heldout ? c.heldout[kk] : null;
    if (ho && ho.length) h.push("<h4>held-out check: measured, hidden from the estimators</h4><table class=\"card-heldout\"><tr><th>benchmark</th><th>estimate</th><th>interval</th><th>measured</th></tr>" +
      ho.map(function (r) { return "<tr><td>" + esc(r[0]) + "</td><td>" + num(r[1]) + "</td><td>" + num(r[2]) + " &ndash; " + num(r[3]) + "</td><td>" + num(r[4]) + "</td></tr>"; }).join("") + "</table>");
    var lin = c.lineage[kk];
    h.push("<h4>lineage check</h4>" + (lin && lin.length ? "<ul>" + lin.map(function (r) {
      return '<li><span class="flag-' + esc(r[0]) + '">' + esc(r[0]) + "</span> " + esc(r[1]) + (r[2] !== null ? " (" + num(r[2]) + ")" : "") + ": " + esc(r[3]) + "</li>";
    }).join("") + "</ul>" : '<p class="meta">no finding</p>'));
    card.innerHTML = h.join(""); card.hidden = false;
    document.body.setAttribute("data-card", id);
  }
  card.addEventListener("click", function (e) {
    if (e.target.classList.contains("close")) { card.hidden = true; selected = -1; document.body.removeAttribute("data-card"); draw(); return; }
    var g = e.target.getAttribute("data-goto");
    if (g !== null) { e.preventDefault(); if (index[g] !== undefined) selectLeaf(index[g], true); }
  });

  // ---- timeline: models per upload month; click a month to mark its models on the tree
  (function timeline() {
    var months = {}, keys, mk;
    for (k = 0; k < NL; k++) { mk = D.created[k] ? D.created[k].slice(0, 7) : null; if (mk) (months[mk] = months[mk] || []).push(k); }
    keys = Object.keys(months).sort();
    var box = document.getElementById("timeline");
    if (!keys.length) { box.innerHTML = '<p class="meta">no upload dates</p>'; return; }
    var all = [], y = +keys[0].slice(0, 4), m = +keys[0].slice(5, 7), end = keys[keys.length - 1];
    while (true) { var key = y + "-" + (m < 10 ? "0" : "") + m; all.push(key); if (key >= end || all.length > 600) break; m++; if (m > 12) { m = 1; y++; } }
    var max = 1; all.forEach(function (a) { if (months[a] && months[a].length > max) max = months[a].length; });
    var bw = Math.max(3, Math.min(24, Math.floor(900 / all.length))), hh = 80, svg = [];
    svg.push('<svg xmlns="http://www.w3.org/2000/svg" width="' + (all.length * bw + 60) + '" height="' + (hh + 30) + '" font-size="10" font-family="sans-serif">');
    all.forEach(function (a, q) {
      var n = months[a] ? months[a].length : 0, h = n / max * hh;
      svg.push('<rect x="' + (q * bw + 30) + '" y="' + (hh - h + 5) + '" width="' + (bw - 1) + '" height="' + h + '" fill="#1f77b4" data-month="' + a + '"><title>' + a + ": " + n + " models</title></rect>");
      if (q === 0 || a.slice(5) === "01") svg.push('<text x="' + (q * bw + 30) + '" y="' + (hh + 20) + '">' + a + "</text>");
    });
    svg.push('<text x="0" y="12">' + max + "</text></svg>");
    box.innerHTML = svg.join("");
    box.addEventListener("click", function (e) {
      var month = e.target.getAttribute && e.target.getAttribute("data-month"); if (!month) return;
      box.querySelectorAll("rect.on").forEach(function (r) { r.classList.remove("on"); });
      e.target.classList.add("on");
      highlight = new Uint8Array(NL); (months[month] || []).forEach(function (q) { highlight[q] = 1; }); draw();
    });
  })();

  resize(); applyColour(select.value); reset();
  var m = /^#search=(.*)$/.exec(location.hash);
  if (m) { var hits = findMatches(decodeURIComponent(m[1])); if (hits.length) selectLeaf(hits[0], true); }
  var mem = performance.memory ? performance.memory.usedJSHeapSize : -1;
  document.body.setAttribute("data-leaves", String(NL));
  document.body.setAttribute("data-frames", String(frames));
  document.body.setAttribute("data-draw-ms", drawMs.toFixed(1)); // the last redraw (pan, zoom)
  document.body.setAttribute("data-full-draw-ms", fullDrawMs.toFixed(1)); // the whole tree in view
  document.body.setAttribute("data-script-ms", (performance.now() - t0).toFixed(1));
  document.body.setAttribute("data-load-ms", performance.now().toFixed(1)); // since navigation start
  document.body.setAttribute("data-heap-bytes", String(mem));
  document.body.setAttribute("data-explorer", "ready");
})();
