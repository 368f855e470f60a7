// The dashboard: polls /v1/dashboard/data and draws SVG charts. No library, no external URL.
// Names (models, features, classes, actors) only ever reach the page through textContent or
// setAttribute, never as HTML.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 5000;
  const PALETTE = ["#1e88e5", "#8e24aa", "#00897b", "#f4511e", "#6d4c41", "#3949ab", "#c0ca33"];
  const STATUS_RANK = { alert: 0, warn: 1, ok: 2 };
  let timer = null;

  // -- small DOM helpers ------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function sv(tag, attrs, ...children) {
    const node = document.createElementNS(NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(key, String(value));
    }
  }

  function append(node, children) {
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
  }

  function replace(id, ...children) {
    const target = document.getElementById(id);
    target.replaceChildren();
    append(target, children);
  }

  // -- formatting -------------------------------------------------------------------------

  function num(value, digits) {
    if (value === null || value === undefined) return "–";
    const abs = Math.abs(value);
    if (digits !== undefined) return value.toFixed(digits);
    if (abs >= 1000) return Math.round(value).toLocaleString("en");
    if (abs >= 100) return value.toFixed(0);
    if (abs >= 10) return value.toFixed(1);
    return value.toFixed(2);
  }

  function pct(value) {
    return value === null || value === undefined ? "–" : (100 * value).toFixed(value && value < 0.01 ? 2 : 1) + "%";
  }

  function clock(seconds) {
    const d = new Date(seconds * 1000);
    return d.toTimeString().slice(0, 8);
  }

  function versionLabel(v) {
    const base = v.model + " v" + v.version;
    return v.variant && v.variant !== "v" + v.version ? base + " (" + v.variant + ")" : base;
  }

  // -- charts -----------------------------------------------------------------------------

  // A line chart of several series over the same times; null values break the line.
  function lineChart(name, times, series, opts) {
    const W = 640, H = 210, L = 48, R = 12, T = 10, B = 24;
    const values = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
    const top = niceMax(Math.max(opts.minTop || 0, ...values, 0));
    const t0 = times[0], t1 = times[times.length - 1];
    const x = (t) => L + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (W - L - R) : (W - L - R) / 2);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const primary = series[0] ? series[0].values : [];
    const root = sv("svg", {
      viewBox: `0 0 ${W} ${H}`,
      role: "img",
      "data-chart": name,
      "data-points": primary.filter((v) => v !== null && v !== undefined).length,
      "data-nonzero": primary.filter((v) => v).length,
      "data-series": series.length,
    });
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      root.appendChild(sv("line", { class: "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      root.appendChild(sv("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, opts.tick(v)));
    }
    const ticks = Math.min(6, times.length);
    for (let i = 0; i < ticks; i++) {
      const t = times[Math.round((i * (times.length - 1)) / Math.max(1, ticks - 1))];
      root.appendChild(sv("text", { x: x(t), y: H - 6, "text-anchor": "middle" }, clock(t)));
    }
    series.forEach((s) => {
      let d = "";
      let pen = false;
      let count = 0;
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        d += (pen ? "L" : "M") + x(times[i]).toFixed(1) + "," + y(v).toFixed(1);
        pen = true;
        count++;
      });
      const group = sv("g", { "data-series": s.label, "data-points": count });
      if (d) {
        group.appendChild(sv("path", {
          d, fill: "none", stroke: s.color, "stroke-width": s.width || 2,
          "stroke-linejoin": "round", "stroke-dasharray": s.dash || null,
        }));
      }
      s.values.forEach((v, i) => {  // isolated points would be invisible as a path
        const prev = s.values[i - 1], next = s.values[i + 1];
        if (v !== null && v !== undefined && (prev === null || prev === undefined) && (next === null || next === undefined)) {
          group.appendChild(sv("circle", { cx: x(times[i]), cy: y(v), r: 2.5, fill: s.color }));
        }
      });
      const last = lastIndex(s.values);
      if (last >= 0) {
        group.appendChild(sv("circle", { cx: x(times[last]), cy: y(s.values[last]), r: 3, fill: s.color },
          sv("title", {}, s.label + ": " + opts.tick(s.values[last]))));
      }
      root.appendChild(group);
    });
    if (!values.some((v) => v)) {
      root.appendChild(sv("text", { class: "empty", x: (L + W - R) / 2, y: H / 2, "text-anchor": "middle" },
        opts.empty || "no requests in this window"));
    }
    const legend = el("div", { class: "legend" });
    series.forEach((s) => {
      const swatch = el("i");
      swatch.style.background = s.color;
      legend.appendChild(el("span", {}, swatch, s.label));
    });
    return el("div", {}, root, legend);
  }

  function lastIndex(values) {
    for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return i;
    return -1;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v * 1.05) return m * p;
    return 10 * p;
  }

  // Horizontal bars: requests per version and variant of one model.
  function versionBars(model, rows, colorOf) {
    const W = 560, rowH = 30, L = 110, R = 230;
    const H = Math.max(1, rows.length) * rowH + 6;
    const top = Math.max(1, ...rows.map((r) => r.requests));
    const root = sv("svg", {
      viewBox: `0 0 ${W} ${H}`, "data-chart": "versions", "data-model": model,
      "data-points": rows.length, "data-total": rows.reduce((a, r) => a + r.requests, 0),
    });
    if (!rows.length) {
      root.appendChild(sv("text", { class: "empty", x: W / 2, y: 20, "text-anchor": "middle" }, "no requests in this window"));
      return root;
    }
    rows.forEach((r, i) => {
      const yy = i * rowH + 4;
      const w = Math.max(2, ((W - L - R) * r.requests) / top);
      const label = r.version ? "v" + r.version + (r.variant && r.variant !== "v" + r.version ? " · " + r.variant : "") : "no version";
      const g = sv("g", { "data-model": model, "data-version": r.version, "data-variant": r.variant || "", "data-requests": r.requests });
      g.appendChild(sv("text", { x: L - 8, y: yy + 17, "text-anchor": "end" }, label));
      g.appendChild(sv("rect", { x: L, y: yy + 3, width: w, height: rowH - 10, rx: 3, fill: colorOf(model, r.version, r.variant) },
        sv("title", {}, `${label}: ${r.requests} requests`)));
      g.appendChild(sv("text", { x: L + w + 6, y: yy + 17 },
        `${r.requests.toLocaleString("en")} req · ${pct(r.error_rate)} err · p95 ${num(r.p95_ms)} ms`));
      root.appendChild(g);
    });
    return root;
  }

  // Reference vs live shares over the reference bins of one feature (or the output).
  function histogram(name, hist) {
    const W = 300, H = 120, B = 16, T = 6;
    const n = Math.max(1, hist.bins.length);
    const top = Math.max(1e-9, ...hist.reference, ...hist.live);
    const slot = W / n, bar = Math.max(1, slot / 2 - 1);
    const root = sv("svg", {
      viewBox: `0 0 ${W} ${H}`, "data-chart": "histogram", "data-feature": name,
      "data-points": hist.bins.length, "data-live": hist.live.filter((v) => v > 0).length,
    });
    hist.bins.forEach((label, i) => {
      [[hist.reference[i], "#b0bec5", "reference"], [hist.live[i], "#1e88e5", "live"]].forEach(([v, color, kind], k) => {
        const h = ((H - B - T) * (v || 0)) / top;
        root.appendChild(sv("rect", { x: i * slot + k * bar + 1, y: H - B - h, width: bar, height: h, fill: color },
          sv("title", {}, `${label}: ${kind} ${pct(v)}`)));
      });
    });
    root.appendChild(sv("line", { class: "axis", x1: 0, x2: W, y1: H - B, y2: H - B }));
    if (n <= 5 && hist.bins.every((label) => label.length <= 40 / n)) {
      hist.bins.forEach((label, i) => root.appendChild(sv("text", { x: i * slot + slot / 2, y: H - 3, "text-anchor": "middle" }, label)));
    } else {
      root.appendChild(sv("text", { x: 0, y: H - 3 }, hist.bins[0]));
      root.appendChild(sv("text", { x: W, y: H - 3, "text-anchor": "end" }, hist.bins[n - 1]));
    }
    return root;
  }

  function badge(status) {
    return el("span", { class: "badge " + status, "data-status": status }, status.replace("_", " "));
  }

  // -- sections ---------------------------------------------------------------------------

  function kpis(data) {
    const t = data.totals;
    const card = (label, value, key) => el("div", { class: "kpi", "data-kpi": key },
      el("div", { class: "label" }, label), el("div", { class: "value" }, value));
    replace("kpis",
      card("requests", t.requests.toLocaleString("en"), "requests"),
      card("avg requests/s", num(t.requests_per_s), "rps"),
      card("4xx", pct(t.requests ? t.client_errors / t.requests : null), "client"),
      card("5xx", pct(t.requests ? t.server_errors / t.requests : null), "server"),
      card("p50", num(t.p50_ms) + " ms", "p50"),
      card("p95", num(t.p95_ms) + " ms", "p95"),
      card("p99", num(t.p99_ms) + " ms", "p99"));
  }

  function charts(data, colorOf) {
    const s = data.series;
    const perVersion = s.by_version.map((v) => ({
      label: versionLabel(v), values: v.requests_per_s, color: colorOf(v.model, v.version, v.variant), width: 1.5,
    }));
    replace("chart-throughput", lineChart("throughput", s.t,
      [{ label: "all requests", values: s.requests_per_s, color: "#1d2733", width: 2.5 }, ...perVersion],
      { tick: (v) => num(v) }));
    replace("chart-errors", lineChart("errors", s.t, [
      { label: "4xx (client)", values: s.client_error_rate, color: "#ef6c00" },
      { label: "5xx (server)", values: s.server_error_rate, color: "#c62828" },
    ], { tick: (v) => (100 * v).toFixed(1) + "%", minTop: 0.01 }));
    replace("chart-latency", lineChart("latency", s.t, [
      { label: "p50", values: s.p50_ms, color: "#43a047" },
      { label: "p95", values: s.p95_ms, color: "#fb8c00" },
      { label: "p99", values: s.p99_ms, color: "#e53935" },
    ], { tick: (v) => num(v) + " ms" }));
  }

  function swaps(data) {
    if (!data.swaps.length) {
      replace("swaps", el("p", { class: "note" }, "no promote, rollback, route or shadow yet"));
      return;
    }
    const list = el("ul", { class: "swaps", "data-chart": "swaps", "data-points": data.swaps.length });
    data.swaps.forEach((e) => {
      let what = e.action;
      if (e.action === "promote" || e.action === "rollback") {
        what += ` ${e.alias}: ${e.previous ? "v" + e.previous : "–"} → v${e.version}`;
      } else if (e.action === "route") {
        what += ` ${e.alias}: ` + weights(e.route);
      } else if (e.action === "shadow") {
        what += ` ${e.alias}: ${e.shadow ? "v" + e.shadow : "off"}`;
      }
      const when = new Date(e.at);
      list.appendChild(el("li", { "data-swap": e.action, "data-model": e.model, "data-version": e.version },
        el("span", { class: "when" }, isNaN(when) ? e.at : when.toLocaleString()),
        el("strong", {}, e.model), " ", what, e.actor ? el("span", { class: "dim" }, " by " + e.actor) : ""));
    });
    replace("swaps", list);
  }

  function weights(route) {
    const variants = (route && route.variants) || [];
    return variants.map((v) => `v${v.version}:${v.weight}`).join(" / ") + (route && route.sticky ? " (sticky)" : "");
  }

  function modelPanel(m, data, colorOf) {
    const drift = m.drift;
    const aliases = Object.entries(m.aliases).map(([a, v]) => `${a} → v${v}`).join(", ") || "no alias";
    const routes = Object.entries(m.routes).map(([a, r]) => `${a} split ${weights(r)}`);
    const shadows = Object.entries(m.shadows).map(([a, v]) => `${a} shadowed by v${v}`);
    const card = el("section", { class: "card model", "data-model": m.name });
    card.appendChild(el("h2", {}, m.name, " ", badge(drift.status)));
    card.appendChild(el("div", { class: "meta" }, [aliases, ...routes, ...shadows].join(" · ")));
    const left = el("div", {}, el("h3", {}, "Traffic per version and variant"), versionBars(m.name, m.traffic, colorOf));
    if (drift.predictions) {
      const shown = Object.entries(drift.predictions).sort().map(([k, v]) => `${k}: ${v}`).join(", ");
      left.appendChild(el("p", { class: "dim" }, `predicted classes (v${drift.version}): ${shown || "none yet"}`));
    }
    if (drift.confidence && drift.confidence.rows) {
      left.appendChild(el("p", { class: "dim" },
        `confidence ${num(drift.confidence.mean, 3)} vs reference ${num(drift.confidence.reference_mean, 3)}`));
    }
    const right = el("div", {}, el("h3", {}, `Drift of v${drift.version ?? "?"} `,
      el("span", { class: "dim" }, `inputs and outputs vs the training data, last ${data.window}`)));
    if (!drift.reference) {
      right.appendChild(el("p", { class: "note", "data-note": drift.status }, drift.note || "no reference data"));
    } else {
      right.appendChild(driftTable(drift));
      const hists = el("div", { class: "hists" });
      drift.worst.forEach((f) => hists.appendChild(el("div", { class: "hist" },
        el("div", { class: "title" }, f.name + " · PSI " + num(f.psi, 3) + " ", badge(f.status)),
        histogram(f.name, f.histogram))));
      if (drift.output) {
        hists.appendChild(el("div", { class: "hist" },
          el("div", { class: "title" }, "predictions · PSI " + num(drift.output.psi, 3) + " ", badge(drift.output.status)),
          histogram("__output__", drift.output.histogram)));
      }
      right.appendChild(hists);
      right.appendChild(el("div", { class: "legend" }, legendItem("#b0bec5", "reference"), legendItem("#1e88e5", "live")));
    }
    card.appendChild(el("div", { class: "cols" }, left, right));
    return card;
  }

  function legendItem(color, label) {
    const swatch = el("i");
    swatch.style.background = color;
    return el("span", {}, swatch, label);
  }

  function driftTable(drift) {
    const table = el("table", { "data-chart": "drift", "data-points": drift.features.length });
    table.appendChild(el("tr", {}, ...["feature", "rows", "PSI", "p-value", "outside range", "missing", "status"].map(
      (h, i) => el("th", { class: i && i < 6 ? "num" : null }, h))));
    const rows = [...drift.features].sort((a, b) =>
      (STATUS_RANK[a.status] ?? 3) - (STATUS_RANK[b.status] ?? 3) || (b.psi || 0) - (a.psi || 0));
    rows.forEach((f) => table.appendChild(el("tr", { "data-feature": f.name, "data-status": f.status },
      el("td", {}, f.name), el("td", { class: "num" }, Math.round(f.rows)), el("td", { class: "num" }, num(f.psi, 3)),
      el("td", { class: "num" }, f.p_value === null ? "–" : f.p_value.toExponential(1)),
      el("td", { class: "num" }, pct(f.outside_range)), el("td", { class: "num" }, pct(f.missing_rate)),
      el("td", {}, badge(f.status)))));
    return table;
  }

  // -- the loop ---------------------------------------------------------------------------

  function colors(data) {
    const keys = data.series.by_version.map((v) => `${v.model}\u0000${v.version}\u0000${v.variant || ""}`);
    data.models.forEach((m) => m.traffic.forEach((r) => keys.push(`${m.name}\u0000${r.version}\u0000${r.variant || ""}`)));
    const unique = [...new Set(keys)];
    return (model, version, variant) =>
      PALETTE[Math.max(0, unique.indexOf(`${model}\u0000${version}\u0000${variant || ""}`)) % PALETTE.length];
  }

  function render(data) {
    const colorOf = colors(data);
    kpis(data);
    charts(data, colorOf);
    swaps(data);
    replace("models", ...data.models.map((m) => modelPanel(m, data, colorOf)));
    if (!data.models.length) replace("models", el("p", { class: "note" }, "the model store is empty"));
    const banner = document.getElementById("banner");
    banner.hidden = data.monitoring;
    banner.textContent = data.monitoring ? "" :
      "Monitoring is off (SERVING_MONITOR_FLUSH=0): no traffic or drift counts are kept.";
    logBanner(data.log);
    document.getElementById("updated").textContent =
      `updated ${clock(data.now)} · ${data.step} s per point · ${data.since.slice(11, 16)}–${data.until.slice(11, 16)} UTC`;
    document.body.setAttribute("data-rendered", String(Date.now()));
  }

  // The prediction log of the worker that answered: degraded (with why) or records it lost.
  function logBanner(log) {
    const banner = document.getElementById("log-banner");
    const trouble = log && (log.status === "degraded" || log.dropped > 0);
    banner.hidden = !trouble;
    banner.setAttribute("data-log", log ? log.status : "");
    banner.textContent = !trouble ? "" :
      `Prediction log ${log.status}${log.reason ? " (" + log.reason + ")" : ""}: ` +
      `${log.dropped} records lost in the worker that answered (see serving_telemetry_dropped_total).`;
  }

  async function refresh() {
    clearTimeout(timer);
    const windowValue = document.getElementById("window").value;
    try {
      const response = await fetch("/v1/dashboard/data?window=" + encodeURIComponent(windowValue),
        { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
    } catch (err) {
      const banner = document.getElementById("banner");
      banner.hidden = false;
      banner.textContent = "Cannot refresh the dashboard: " + err.message + " (retrying)";
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function start() {
    const select = document.getElementById("window");
    const wanted = new URLSearchParams(location.search).get("window");
    if (wanted && [...select.options].some((o) => o.value === wanted)) select.value = wanted;
    select.addEventListener("change", () => {
      const url = new URL(location.href);
      url.searchParams.set("window", select.value);
      history.replaceState(null, "", url);
      refresh();
    });
    refresh();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
