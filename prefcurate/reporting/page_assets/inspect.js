// prefcurate inspect: the pair browser and the τ control. Charts are drawn by plotly.js.
// Every text from the data is written with textContent (never innerHTML): it shows, never runs.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("page-data").textContent);
  var hist = data.histogram;
  var thresholds = data.thresholds;
  var colors = data.colors;
  var cols = {};
  data.samples.columns.forEach(function (name, i) { cols[name] = i; });
  var rows = data.samples.rows;
  var currentTau = null;
  var FOLD_AT = 600;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function num(v) { return v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"); }
  function fmt(v) { return v === null || v === undefined ? "–" : String(Math.round(v * 1e6) / 1e6); }
  function pct(part, whole) { return whole ? (100 * part / whole).toFixed(1) + "%" : "–"; }

  // ---------------------------------------------------------------- charts
  // The histogram is drawn at once; the figures below it when they come near the screen, so the
  // page is ready sooner (each is drawn once; window.prefcurateInspect.drawn counts them).
  var drawn = 0;
  function draw(node, key) {
    if (node.getAttribute("data-drawn")) return;
    node.setAttribute("data-drawn", "1");
    var fig = data.figures[key];
    Plotly.newPlot(node, fig.data, fig.layout, data.config);
    drawn += 1;
    if (window.prefcurateInspect) window.prefcurateInspect.drawn = drawn;
  }
  var observer = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (!entry.isIntersecting) return;
      observer.unobserve(entry.target);
      draw(entry.target, entry.target.id.slice(4));
    });
  }, { rootMargin: "400px" }) : null;
  Object.keys(data.figures).forEach(function (key) {
    var node = document.getElementById("fig-" + key);
    if (!node) return;
    if (key === "histogram" || !observer) draw(node, key);
    else observer.observe(node);
  });

  // ---------------------------------------------------------------- τ control
  // A bin is SFT when every margin it can hold is < τ, DPO when none is, mixed otherwise.
  function binRoute(i, tau) {
    var lo = hist.edges[i], hi = hist.edges[i + 1];
    var top = hist.grid ? hi - hist.grid / 2 : hi;   // largest value the bin holds (grid) / its edge
    var bottom = hist.grid ? lo + hist.grid / 2 : lo;
    if (hist.grid ? top < tau : hi <= tau) return "sft";
    if (bottom >= tau) return "dpo";
    return "mixed";
  }
  function routeOf(margin) {
    if (margin === null || currentTau === null) return null;
    return margin < currentTau ? "sft" : "dpo";
  }

  // the pair's route at the current τ, on its tag (updated when τ moves)
  function setRouteTag(node, margin) {
    var tag = node.querySelector(".route");
    var dropped = node.getAttribute("data-dropped");
    var r = dropped ? null : routeOf(margin);
    tag.textContent = dropped ? "dropped: " + data.dropped_labels[dropped]
                              : r ? "→ " + r.toUpperCase() : "not routed";
    tag.className = "route" + (r ? " route-" + r : "");
  }

  function setTau(index) {
    var t = thresholds;
    var tau = t.values[index];
    currentTau = tau;
    var sft = t.sft[index], dpo = t.dpo[index], routed = sft + dpo;
    document.getElementById("tau").value = String(index);
    document.getElementById("tau-value").textContent = "τ = " + fmt(tau);
    var line = document.getElementById("routing-line");
    line.textContent = "";
    var a = el("span", "sft", num(sft) + " pairs (" + pct(sft, routed) + ") to SFT");
    a.id = "sft-count";
    a.setAttribute("data-sft", String(sft));
    var b = el("span", "dpo", num(dpo) + " (" + pct(dpo, routed) + ") to DPO");
    b.id = "dpo-count";
    b.setAttribute("data-dpo", String(dpo));
    line.appendChild(a);
    line.appendChild(document.createTextNode(", "));
    line.appendChild(b);
    if (data.null_margins) {
      line.appendChild(document.createTextNode("; " + num(data.null_margins) + " without a margin are not routed"));
    }
    if (data.dropped) {
      line.appendChild(document.createTextNode("; route drops " + data.dropped));
    }
    document.getElementById("share-sft").style.width = pct(sft, routed) === "–" ? "0" : (100 * sft / routed) + "%";
    document.getElementById("share-dpo").style.width = pct(dpo, routed) === "–" ? "0" : (100 * dpo / routed) + "%";
    var table = document.getElementById("source-table");
    if (table) {
      Object.keys(t.by_source).forEach(function (name) {
        var row = table.querySelector('tr[data-source="' + CSS.escape(name) + '"]');
        if (!row) return;
        var n = t.rows_by_source[name], s = t.by_source[name][index];
        row.querySelector(".src-sft").textContent = num(s);
        row.querySelector(".src-share").textContent = pct(s, n);
      });
    }
    var plot = document.getElementById("fig-histogram");
    if (plot && hist) {
      var barColors = hist.counts.map(function (_, i) { return colors[binRoute(i, tau)]; });
      Plotly.restyle(plot, { "marker.color": [barColors] }, [0]);
      var cut = tau;
      if (hist.grid) cut = Math.ceil(tau / hist.grid - 1e-9) * hist.grid - hist.grid / 2;
      Plotly.relayout(plot, {
        shapes: [{ type: "line", xref: "x", yref: "paper", x0: cut, x1: cut, y0: 0, y1: 1,
                   line: { color: "#b3261e", width: 2, dash: "dash" } }],
        annotations: [{ x: cut, y: 1, xref: "x", yref: "paper", text: "τ = " + fmt(tau),
                        showarrow: false, xanchor: "left", yanchor: "bottom", font: { color: "#b3261e" } }]
      });
    }
    document.querySelectorAll(".pair").forEach(function (node) {
      var m = node.getAttribute("data-margin");
      setRouteTag(node, m === "" ? null : Number(m));
    });
  }

  if (thresholds) {
    var start = thresholds.initial === null ? 0 : thresholds.values.indexOf(thresholds.initial);
    var slider = document.getElementById("tau");
    slider.addEventListener("input", function () { setTau(Number(slider.value)); });
    setTau(Math.max(0, start));
  }

  // ---------------------------------------------------------------- the pair browser
  function textBlock(text, chars) {
    var wrap = el("div");
    var pre = el("pre", "text", text === null ? "(null)" : text);
    wrap.appendChild(pre);
    var shown = text === null ? 0 : text.length;
    if (chars > shown && shown >= data.text_limit) {
      wrap.appendChild(el("div", "cut", "… cut here: " + num(chars) + " characters in all"));
    }
    if (shown > FOLD_AT) {
      pre.classList.add("folded");
      var button = el("button", "fold", "show all");
      button.type = "button";
      button.addEventListener("click", function () {
        var folded = pre.classList.toggle("folded");
        button.textContent = folded ? "show all" : "fold";
      });
      wrap.appendChild(button);
    }
    return wrap;
  }

  function side(kind, row) {
    var box = el("div", "side " + kind);
    var score = row[cols["score_" + kind]];
    var title = kind + " · rating " + (score === null ? "–" : fmt(score)) + " · " +
                num(row[cols[kind + "_chars"]]) + " chars";
    box.appendChild(el("h4", null, title));
    if (row[cols["empty_" + kind]]) box.appendChild(el("span", "flag", "empty"));
    box.appendChild(textBlock(row[cols[kind]], row[cols[kind + "_chars"]]));
    return box;
  }

  function pairNode(row) {
    var margin = row[cols.margin];
    var node = el("article", "pair");
    node.setAttribute("data-margin", margin === null ? "" : String(margin));
    node.setAttribute("data-bin", String(row[cols.bin]));
    if (row[cols.unroutable]) node.setAttribute("data-dropped", row[cols.unroutable]);
    var head = el("div", "pair-head");
    head.appendChild(el("span", "margin", "margin " + (margin === null ? "none" : fmt(margin))));
    head.appendChild(el("span", "route"));
    head.appendChild(el("span", null, "row " + num(row[cols.row] + 1)));
    head.appendChild(el("span", null, "pair_id " + row[cols.pair_id]));
    if (row[cols.source] !== null) head.appendChild(el("span", null, "source " + row[cols.source]));
    [["identical", "chosen = rejected"], ["duplicate", "duplicate pair"],
     ["history_mismatch", "histories differ"]].forEach(function (f) {
      if (row[cols[f[0]]]) head.appendChild(el("span", "flag", f[1]));
    });
    node.appendChild(head);
    var prompt = el("div", "prompt");
    var ptitle = el("h4", null, "prompt · " + num(row[cols.prompt_chars]) + " chars");
    prompt.appendChild(ptitle);
    if (row[cols.empty_prompt]) prompt.appendChild(el("span", "flag", "empty"));
    prompt.appendChild(textBlock(row[cols.prompt], row[cols.prompt_chars]));
    node.appendChild(prompt);
    var sides = el("div", "sides");
    sides.appendChild(side("chosen", row));
    sides.appendChild(side("rejected", row));
    node.appendChild(sides);
    setRouteTag(node, margin);
    return node;
  }

  function showRows(title, picked) {
    document.getElementById("pairs-title").textContent = title;
    var list = document.getElementById("pairs-list");
    list.textContent = "";
    picked.forEach(function (row) { list.appendChild(pairNode(row)); });
  }

  function showBin(i) {
    var picked = rows.filter(function (r) { return r[cols.bin] === i; });
    var label = i < 0 ? "no margin" : "margin " + hist.labels[i];
    var total = i < 0 ? data.null_margins : hist.counts[i];
    showRows(label + ": " + picked.length + " of " + num(total) + " pairs (seeded sample)", picked);
    var section = document.getElementById("pairs");
    if (section && section.scrollIntoView && showBin.scroll) section.scrollIntoView();
  }
  showBin.scroll = false;

  function showRange(lo, hi) {
    var picked = rows.filter(function (r) {
      var m = r[cols.margin];
      return m !== null && m >= lo && m <= hi;
    });
    showRows("margin from " + fmt(lo) + " to " + fmt(hi) + ": " + picked.length + " sampled pairs", picked);
  }

  var plot = document.getElementById("fig-histogram");
  if (plot && hist) {
    plot.on("plotly_click", function (event) {
      if (!event || !event.points || !event.points.length) return;
      showBin(Number(event.points[0].customdata));
    });
  }
  var form = document.getElementById("range-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var lo = Number(document.getElementById("range-lo").value);
      var hi = Number(document.getElementById("range-hi").value);
      if (!isNaN(lo) && !isNaN(hi)) showRange(Math.min(lo, hi), Math.max(lo, hi));
    });
  }
  // Start on the smallest-margin bin that has pairs: the ones a threshold is about.
  if (hist) {
    var first = hist.counts.findIndex(function (c) { return c > 0; });
    var zero = hist.edges.findIndex(function (e, i) { return i < hist.counts.length && e <= 0 && hist.edges[i + 1] > 0; });
    showBin(zero >= 0 && hist.counts[zero] > 0 ? zero : first);
  } else if (rows.length) {
    showBin(-1);
  }
  showBin.scroll = true;
  window.prefcurateInspect = {
    showBin: showBin, showRange: showRange, setTau: setTau, ready: true, drawn: drawn,
    figures: Object.keys(data.figures).filter(function (k) { return document.getElementById("fig-" + k); }).length
  };
})();
