// Baton dashboard: keeps the server-rendered page current from /api/events (SSE), draws the
// per-release charts with uPlot, and runs the promote/abort/rollback buttons behind a
// confirmation dialog. No build step, no framework.
"use strict";
(function () {
  const KEEP = 300; // chart points kept per app (5 minutes at one push a second)
  const COLORS = ["#1f6feb", "#c2410c", "#15803d", "#7c3aed"];
  const charts = {}; // app -> {times, series: {release: {rate, error_rate, p50, p95, p99}}, plots}
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  function setConnection(text) {
    const el = $('[data-field="connection"]');
    if (el && el.textContent !== text) el.textContent = text;
  }

  function chartWidth(el) {
    return Math.max(240, Math.floor(el.getBoundingClientRect().width || 320));
  }

  function record(app, t, points) {
    let c = charts[app];
    if (!c) c = charts[app] = { times: [], series: {}, plots: {}, releases: "" };
    c.times.push(t);
    const releases = Object.keys(points);
    for (const r of releases) {
      if (!c.series[r]) c.series[r] = { rate: [], error_rate: [], p50: [], p95: [], p99: [] };
    }
    for (const [r, s] of Object.entries(c.series)) {
      const p = points[r] || {};
      const pad = c.times.length - 1 - s.rate.length;
      for (const k of Object.keys(s)) {
        for (let i = 0; i < pad; i++) s[k].push(null);
        let v = p[k] === undefined ? null : p[k];
        if (v !== null && k === "error_rate") v = v * 100;
        if (v !== null && (k === "p50" || k === "p95" || k === "p99")) v = v * 1000;
        s[k].push(v);
      }
    }
    if (c.times.length > KEEP) {
      const drop = c.times.length - KEEP;
      c.times.splice(0, drop);
      for (const s of Object.values(c.series)) for (const k of Object.keys(s)) s[k].splice(0, drop);
    }
    draw(app);
  }

  function plotData(app, kind) {
    const c = charts[app];
    const names = Object.keys(c.series);
    const series = [{}];
    const data = [c.times];
    names.forEach((r, n) => {
      const color = COLORS[n % COLORS.length];
      if (kind === "latency") {
        [["p50", [2, 4]], ["p95", []], ["p99", [8, 4]]].forEach(([q, dash]) => {
          series.push({ label: r + " " + q, stroke: color, dash: dash, width: 1.5 });
          data.push(c.series[r][q]);
        });
      } else {
        const key = kind === "rate" ? "rate" : "error_rate";
        series.push({ label: r, stroke: color, width: 2 });
        data.push(c.series[r][key]);
      }
    });
    return { series, data, names: names.join(",") };
  }

  function draw(app) {
    const c = charts[app];
    if (typeof uPlot === "undefined") return;
    const box = $('[data-charts="' + CSS.escape(app) + '"]');
    if (!box) return;
    for (const kind of ["rate", "errors", "latency"]) {
      const el = $('[data-chart="' + kind + '"]', box);
      const { series, data, names } = plotData(app, kind);
      let plot = c.plots[kind];
      if (plot && (plot._names !== names || !el.contains(plot.root))) {
        plot.destroy();
        plot = null;
      }
      if (!plot) {
        el.textContent = "";
        plot = new uPlot(
          {
            width: chartWidth(el),
            height: 160,
            series: series,
            scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(hi || 0, kind === "errors" ? 1 : 0.001) * 1.1] } },
            axes: [{}, { size: 56 }],
            legend: { live: false },
          },
          data,
          el
        );
        plot._names = names;
        c.plots[kind] = plot;
      } else {
        plot.setData(data);
      }
      // What the chart plots last, readable by people using a screen reader, and by tests.
      const last = {};
      data.slice(1).forEach((values, n) => (last[series[n + 1].label] = values[values.length - 1]));
      el.dataset.points = String(c.times.length);
      el.dataset.last = JSON.stringify(last);
    }
  }

  function apply(feed) {
    const updated = $('[data-field="updated"]');
    if (updated) updated.textContent = feed.updated;
    const region = $('[data-region="apps"]');
    const empty = $('[data-empty="apps"]', region);
    for (const [name, app] of Object.entries(feed.apps)) {
      let section = $('article.app[data-app="' + CSS.escape(name) + '"]', region);
      if (!section) {
        if (empty) empty.remove();
        region.insertAdjacentHTML("beforeend", app.section);
        section = $('article.app[data-app="' + CSS.escape(name) + '"]', region);
        bindButtons(section);
      } else {
        const live = $('[data-region="live"]', section);
        if (live.innerHTML !== app.live) live.innerHTML = app.live;
      }
      for (const [action, enabled] of Object.entries(app.actions)) {
        const b = $('button[data-action="' + action + '"]', section);
        if (b && !b.dataset.busy) b.disabled = !enabled;
      }
      record(name, feed.ts, app.points);
    }
    const deployments = $('[data-region="deployments"]');
    if (deployments.innerHTML !== feed.deployments) deployments.innerHTML = feed.deployments;
  }

  function confirmAction(text) {
    const dialog = $('[data-dialog="confirm"]');
    $('[data-field="confirm-text"]', dialog).textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  async function act(button) {
    const app = button.dataset.app;
    const action = button.dataset.action;
    const out = $('[data-field="action-result"]', button.closest("article.app"));
    if (!(await confirmAction(button.dataset.confirm))) {
      button.focus();
      return;
    }
    button.dataset.busy = "1";
    button.disabled = true;
    out.textContent = action + "…";
    try {
      const resp = await fetch("/api/apps/" + encodeURIComponent(app) + "/" + action, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Baton-Action": action },
        body: "{}",
        credentials: "same-origin",
      });
      const body = await resp.json().catch(() => ({}));
      out.textContent = resp.ok ? body.message : "Failed: " + (body.error || resp.status);
    } catch (err) {
      out.textContent = "Failed: " + err;
    } finally {
      delete button.dataset.busy;
      button.focus();
    }
  }

  function bindButtons(root) {
    for (const b of $$("button[data-action]", root)) b.addEventListener("click", () => act(b));
  }

  function connect() {
    const source = new EventSource("/api/events");
    source.addEventListener("open", () => setConnection("live"));
    source.addEventListener("state", (ev) => {
      setConnection("live");
      apply(JSON.parse(ev.data));
    });
    source.addEventListener("error", () => setConnection("reconnecting…"));
  }

  function start() {
    bindButtons(document);
    const initial = $("#initial-state");
    if (initial) apply(JSON.parse(initial.textContent));
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        for (const [app, c] of Object.entries(charts)) {
          for (const [kind, plot] of Object.entries(c.plots)) {
            const el = plot.root.parentElement;
            if (el) plot.setSize({ width: chartWidth(el), height: 160 });
          }
        }
      }, 150);
    });
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
