// freshet console: plain JavaScript, no build step, no network beyond this endpoint.
// Each page reads JSON from /v1/... (lookups) and /ui/api/... (catalog, history, stats,
// health) with the API key kept in sessionStorage, and draws charts as inline SVG.
"use strict";

(function () {
  const KEY_STORAGE = "freshet.apiKey";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const page = document.body.dataset.page;
  const main = document.getElementById("main");

  // -- DOM helpers ---------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) if (child) node.append(child);
    return node;
  }

  function fmt(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return value.toLocaleString("en-US").replace(/,/g, " ");
      return String(Number(value.toPrecision(6)));
    }
    if (Array.isArray(value)) return JSON.stringify(value);
    return String(value);
  }

  function iso(ms) {
    return ms === null || ms === undefined ? "–" : new Date(ms).toISOString().replace("T", " ");
  }

  function age(ms) {
    if (ms === null || ms === undefined) return "–";
    const s = ms / 1000;
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }

  function showError(where, message) {
    where.append(el("div", { class: "error", role: "alert", text: message }));
  }

  // -- API access ----------------------------------------------------------------------------

  class ApiError extends Error {}

  async function api(path) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers.Authorization = "Bearer " + key;
    const response = await fetch(path, { headers });
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      throw new ApiError(path + ": " + response.status + " " + response.statusText);
    }
    if (response.status === 401) {
      document.getElementById("key-form").classList.remove("hidden");
      throw new ApiError("This endpoint needs an API key: enter one above. (" + body.message + ")");
    }
    if (!response.ok) throw new ApiError(body.message || response.statusText);
    return body;
  }

  function setupChrome() {
    for (const link of document.querySelectorAll("nav a")) {
      if (link.dataset.nav === page) link.classList.add("active");
    }
    const form = document.getElementById("key-form");
    if (sessionStorage.getItem(KEY_STORAGE)) form.classList.remove("hidden");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY_STORAGE, document.getElementById("api-key").value.trim());
      window.location.reload();
    });
  }

  function params() {
    return new URLSearchParams(window.location.search);
  }

  function keepInUrl(values) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(values)) if (value) search.set(name, value);
    history.replaceState(null, "", window.location.pathname + "?" + search.toString());
  }

  function viewSelect(views, selected) {
    const select = el("select", { id: "view", name: "view" });
    for (const view of views) {
      const option = el("option", { value: view.name, text: view.name + " (v" + view.version + ")" });
      if (view.name === selected) option.selected = true;
      select.append(option);
    }
    return select;
  }

  function newest(views) {
    const byName = new Map();
    for (const view of views) {
      const known = byName.get(view.name);
      if (!known || known.version < view.version) byName.set(view.name, view);
    }
    return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  function field(label, input) {
    return el("label", {}, label, input);
  }

  // -- charts --------------------------------------------------------------------------------

  const CHART = { width: 560, height: 170, left: 64, right: 12, top: 10, bottom: 26 };

  // A step line of a feature's values over time: one marker per log row (hollow for null),
  // and a tick on the time axis at each row time.
  function historyChart(times, values, span) {
    const c = CHART;
    const plotW = c.width - c.left - c.right;
    const plotH = c.height - c.top - c.bottom;
    const numeric = values.every((v) => v === null || typeof v === "number");
    const listy = values.some((v) => Array.isArray(v));
    let ys;
    let labels = null;
    if (numeric) {
      ys = values;
    } else if (listy) {
      ys = values.map((v) => (v === null ? null : v.length));
    } else {
      labels = [];
      ys = values.map((v) => {
        if (v === null) return null;
        let index = labels.indexOf(v);
        if (index < 0) index = labels.push(v) - 1;
        return index;
      });
    }
    const present = ys.filter((v) => v !== null);
    let lo = present.length ? Math.min(...present) : 0;
    let hi = present.length ? Math.max(...present) : 1;
    if (lo === hi) { lo -= 1; hi += 1; }
    const t0 = span.from_ms;
    const t1 = span.to_ms;
    const x = (t) => c.left + ((t - t0) / Math.max(t1 - t0, 1)) * plotW;
    const y = (v) => c.top + plotH - ((v - lo) / (hi - lo)) * plotH;
    const root = svg("svg", {
      class: "chart", viewBox: `0 0 ${c.width} ${c.height}`, width: c.width, height: c.height,
      role: "img",
    });
    root.append(
      svg("line", { class: "axis", x1: c.left, y1: c.top + plotH, x2: c.width - c.right, y2: c.top + plotH }),
      svg("line", { class: "axis", x1: c.left, y1: c.top, x2: c.left, y2: c.top + plotH }),
      svg("text", { x: c.left, y: c.height - 6, text: iso(t0).slice(0, 16) }),
      svg("text", { x: c.width - c.right, y: c.height - 6, "text-anchor": "end", text: iso(t1).slice(0, 16) }),
    );
    if (labels) {
      labels.slice(0, 8).forEach((label, index) => {
        root.append(svg("text", { x: c.left - 4, y: y(index) + 4, "text-anchor": "end", text: String(label).slice(0, 10) }));
      });
    } else {
      root.append(
        svg("text", { x: c.left - 4, y: c.top + 8, "text-anchor": "end", text: fmt(hi) }),
        svg("text", { x: c.left - 4, y: c.top + plotH, "text-anchor": "end", text: fmt(lo) }),
      );
    }
    let path = "";
    let last = null;
    times.forEach((t, i) => {
      const v = ys[i];
      if (v === null) { last = null; return; }
      path += last === null ? `M${x(t).toFixed(1)},${y(v).toFixed(1)}` : `H${x(t).toFixed(1)}V${y(v).toFixed(1)}`;
      last = v;
    });
    if (last !== null && times.length) path += `H${(c.width - c.right).toFixed(1)}`;
    if (path) root.append(svg("path", { class: "line", d: path }));
    const points = svg("g", { class: "points" });
    times.forEach((t, i) => {
      const v = ys[i];
      root.append(svg("line", { class: "row-time", x1: x(t), x2: x(t), y1: c.top + plotH, y2: c.top + plotH + 5 }));
      const marker = svg("circle", {
        class: v === null ? "point null" : "point", cx: x(t).toFixed(1),
        cy: (v === null ? c.top + plotH : y(v)).toFixed(1), r: 3,
        "data-as-of": t,
      });
      marker.append(svg("title", { text: iso(t) + "  " + fmt(values[i]) }));
      points.append(marker);
    });
    root.append(points);
    return root;
  }

  // Bars of one or two histograms over the same bins (shares, so ranges of different sizes compare).
  function barChart(labels, base, compare) {
    const c = { width: 580, height: 170, left: 40, right: 10, top: 10, bottom: 34 };
    const plotW = c.width - c.left - c.right;
    const plotH = c.height - c.top - c.bottom;
    const share = (counts) => {
      const total = counts.reduce((a, b) => a + b, 0) || 1;
      return counts.map((n) => n / total);
    };
    const a = share(base);
    const b = compare ? share(compare) : null;
    const top = Math.max(...a, ...(b || [0]), 0.0001);
    const slot = plotW / labels.length;
    const width = b ? slot * 0.42 : slot * 0.84;
    const root = svg("svg", { class: "chart", viewBox: `0 0 ${c.width} ${c.height}`, width: c.width, height: c.height });
    root.append(
      svg("line", { class: "axis", x1: c.left, y1: c.top + plotH, x2: c.width - c.right, y2: c.top + plotH }),
      svg("text", { x: c.left - 4, y: c.top + 8, "text-anchor": "end", text: Math.round(top * 100) + "%" }),
      svg("text", { x: c.left - 4, y: c.top + plotH, "text-anchor": "end", text: "0" }),
    );
    labels.forEach((label, i) => {
      const x0 = c.left + i * slot + slot * 0.08;
      const hA = (a[i] / top) * plotH;
      const bar = svg("rect", { class: "bar-base", x: x0, y: c.top + plotH - hA, width, height: hA });
      bar.append(svg("title", { text: label + ": " + base[i] }));
      root.append(bar);
      if (b) {
        const hB = (b[i] / top) * plotH;
        const other = svg("rect", { class: "bar-compare", x: x0 + width, y: c.top + plotH - hB, width, height: hB });
        other.append(svg("title", { text: label + ": " + compare[i] }));
        root.append(other);
      }
      if (labels.length <= 12 || i % Math.ceil(labels.length / 10) === 0) {
        root.append(svg("text", { x: x0, y: c.height - 20, text: String(label).slice(0, 9) }));
      }
    });
    return root;
  }

  // -- catalog -------------------------------------------------------------------------------

  async function catalogPage() {
    const data = await api("/ui/api/catalog");
    main.replaceChildren();
    const search = el("input", { id: "search", type: "search", placeholder: "Search views, features, topics, services…" });
    main.append(el("h1", { text: "Catalog" }), el("div", { class: "controls" }, search));
    const list = el("div", { id: "catalog" });
    for (const view of data.views) list.append(viewCard(view));
    for (const service of data.services) list.append(serviceCard(service));
    main.append(list);
    if (!data.views.length) showError(main, "No views are registered.");
    search.addEventListener("input", () => filterCatalog(search.value.trim().toLowerCase()));
    const initial = params().get("q");
    if (initial) { search.value = initial; filterCatalog(initial.toLowerCase()); }
  }

  function describeWindow(feature) {
    if (!feature.window_seconds) return "lifetime";
    const w = feature.window_seconds;
    const unit = (s) => (s % 86400 === 0 ? s / 86400 + "d" : s % 3600 === 0 ? s / 3600 + "h" : s % 60 === 0 ? s / 60 + "m" : s + "s");
    return unit(w) + (feature.hop_seconds ? " / hop " + unit(feature.hop_seconds) : "");
  }

  function viewCard(view) {
    const features = el("tbody", {});
    for (const feature of view.features) {
      const extra = [];
      if (feature.quantile !== null && feature.quantile !== undefined) extra.push("q=" + feature.quantile);
      if (feature.k !== null && feature.k !== undefined) extra.push("k=" + feature.k);
      features.append(el("tr", {
        class: "feature-row", "data-feature": feature.name,
        "data-search": [feature.name, feature.aggregation, feature.field, feature.where, feature.type].join(" ").toLowerCase(),
      },
        el("td", {}, el("code", { text: feature.name })),
        el("td", { text: feature.aggregation + (extra.length ? " (" + extra.join(", ") + ")" : "") }),
        el("td", { text: feature.field || "–" }),
        el("td", { text: describeWindow(feature) }),
        el("td", {}, feature.where ? el("code", { text: feature.where }) : "–"),
        el("td", { text: feature.type }),
      ));
    }
    const source = view.source || {};
    const columns = Object.entries(view.columns || {});
    const meta = el("dl", { class: "meta" },
      el("dt", { text: "key" }), el("dd", { text: (view.key || [view.entity]).join(", ") + (view.entity_name ? "  (entity " + view.entity_name + ")" : "") }),
      el("dt", { text: "source" }), el("dd", {}, el("code", { text: source.topic || "–" }), " · " + (source.encoding || "") + " · " + (source.schema || "") + " · event time " + (source.event_time_field || "")),
      el("dt", { text: "dead letters" }), el("dd", {}, view.dead_letter_topic ? el("code", { text: view.dead_letter_topic }) : "–"),
      el("dt", { text: "TTL" }), el("dd", { text: view.ttl_seconds ? age(view.ttl_seconds * 1000) : "never expires" }),
      el("dt", { text: "lateness" }), el("dd", { text: view.allowed_lateness_seconds + " s" }),
      el("dt", { text: "Redis keys" }), el("dd", {}, el("code", { text: view.redis_key || "–" })),
      el("dt", { text: "offline log" }), el("dd", {}, el("code", { text: view.offline_log || "–" })),
    );
    if (columns.length) {
      meta.append(el("dt", { text: "columns" }), el("dd", {}, columns.map(([name, expr]) => el("div", {}, el("code", { text: name + " = " + expr })))));
    }
    const search = [view.name, source.topic, view.dead_letter_topic, (view.key || []).join(" "), view.entity_name].join(" ").toLowerCase();
    return el("section", { class: "card view-card", "data-view": view.name, "data-version": view.version, "data-search": search },
      el("h2", {}, view.name, el("span", { class: "muted", text: "  version " + view.version })),
      meta,
      el("table", {}, el("thead", {}, el("tr", {}, ["feature", "aggregation", "field", "window", "where", "type"].map((h) => el("th", { text: h })))), features),
    );
  }

  function serviceCard(service) {
    const derived = Object.entries(service.derived || {});
    const request = Object.entries(service.request || {});
    const search = [service.name, ...(service.features || []), ...Object.keys(service.derived || {}), ...Object.keys(service.request || {})].join(" ").toLowerCase();
    return el("section", { class: "card service-card", "data-service": service.name, "data-search": search },
      el("h2", {}, service.name, el("span", { class: "muted", text: "  feature service" })),
      el("dl", { class: "meta" },
        el("dt", { text: "features" }), el("dd", {}, (service.features || []).map((f) => el("div", {}, el("code", { text: f })))),
        el("dt", { text: "request fields" }), el("dd", { text: request.map(([n, t]) => n + ": " + t).join(", ") || "–" }),
        el("dt", { text: "derived" }), el("dd", {}, derived.length ? derived.map(([n, e]) => el("div", {}, el("code", { text: n + " = " + e }))) : "–"),
      ),
    );
  }

  function filterCatalog(query) {
    for (const card of document.querySelectorAll(".view-card")) {
      const own = !query || card.dataset.search.includes(query);
      let shown = 0;
      for (const row of card.querySelectorAll(".feature-row")) {
        const match = own || row.dataset.search.includes(query);
        row.classList.toggle("hidden", !match);
        if (match) shown += 1;
      }
      card.classList.toggle("hidden", !own && shown === 0);
    }
    for (const card of document.querySelectorAll(".service-card")) {
      card.classList.toggle("hidden", Boolean(query) && !card.dataset.search.includes(query));
    }
  }

  // -- entity explorer -----------------------------------------------------------------------

  async function explorePage() {
    const catalog = await api("/ui/api/catalog");
    const views = newest(catalog.views);
    const q = params();
    const chosen = views.find((v) => v.name === q.get("view")) || views[0];
    main.replaceChildren(el("h1", { text: "Entity explorer" }));
    if (!chosen) { showError(main, "No views are registered."); return; }
    const form = el("form", { class: "controls", id: "explore-form" });
    const select = viewSelect(views, chosen.name);
    const keys = el("span", { class: "controls", id: "key-fields" });
    const from = el("input", { id: "from", value: q.get("from") || "now-7d", size: 24 });
    const to = el("input", { id: "to", value: q.get("to") || "now", size: 24 });
    const drawKeys = (view) => {
      keys.replaceChildren(...(view.key || [view.entity]).map((name) =>
        field(name, el("input", { id: "key-" + name, "data-key": name, value: q.get(name) || "", required: true }))));
    };
    drawKeys(chosen);
    select.addEventListener("change", () => drawKeys(views.find((v) => v.name === select.value)));
    form.append(field("view", select), keys, field("history from", from), field("to", to),
      el("button", { type: "submit", id: "lookup", text: "Look up" }));
    const result = el("div", { id: "result" });
    main.append(form, result);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      runLookup(views.find((v) => v.name === select.value), from.value, to.value, result);
    });
    const view = chosen;
    if ((view.key || [view.entity]).every((name) => q.get(name))) {
      await runLookup(view, from.value, to.value, result);
    }
  }

  async function runLookup(view, from, to, result) {
    const keyNames = view.key || [view.entity];
    const values = keyNames.map((name) => document.getElementById("key-" + name).value);
    const state = { view: view.name, from, to };
    keyNames.forEach((name, i) => { state[name] = values[i]; });
    keepInUrl(state);
    result.replaceChildren(el("p", { class: "loading", text: "Looking up…" }));
    const path = "/v1/features/" + encodeURIComponent(view.name) + "/" + values.map(encodeURIComponent).join("/");
    const query = new URLSearchParams({ from, to });
    keyNames.forEach((name, i) => query.set(name, values[i]));
    let lookup;
    let history;
    try {
      [lookup, history] = await Promise.all([
        api(path),
        api("/ui/api/history/" + encodeURIComponent(view.name) + "?" + query.toString()),
      ]);
    } catch (err) {
      result.replaceChildren();
      showError(result, err.message);
      return;
    }
    result.replaceChildren(valuesCard(lookup), historyCard(view, history));
  }

  function valuesCard(lookup) {
    const rows = el("tbody", {});
    for (const [name, value] of Object.entries(lookup.features)) {
      const status = lookup.status[name];
      rows.append(el("tr", { "data-feature": name },
        el("td", {}, el("code", { text: name })),
        el("td", { class: "value num", "data-json": JSON.stringify(value), text: fmt(value) }),
        el("td", { class: "status status-" + status, text: status }),
      ));
    }
    const shown = lookup.key ? Object.entries(lookup.key).map(([k, v]) => k + "=" + v).join(", ") : lookup.entity;
    return el("section", { class: "card", id: "values", "data-found": String(lookup.found) },
      el("h2", {}, "Values of ", el("code", { text: shown }), el("span", { class: "muted", text: "  (" + lookup.view + ", live from Redis)" })),
      el("dl", { class: "meta" },
        el("dt", { text: "found" }), el("dd", { id: "found", text: lookup.found ? "yes" : "no" }),
        el("dt", { text: "as of" }), el("dd", { id: "as-of", "data-ms": lookup.as_of, text: iso(lookup.as_of) }),
        el("dt", { text: "age" }), el("dd", { id: "age", text: age(lookup.age_ms) }),
        el("dt", { text: "valid until" }),
        el("dd", { id: "valid-until", "data-ms": lookup.valid_until,
                   text: lookup.valid_until === null || lookup.valid_until === undefined
                     ? "– (no windowed value will change without events)" : iso(lookup.valid_until) }),
      ),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "feature" }), el("th", { class: "num", text: "value" }), el("th", { text: "status" }))), rows),
    );
  }

  function historyCard(view, history) {
    const charts = el("div", { class: "charts" });
    for (const [name, values] of Object.entries(history.features)) {
      charts.append(el("figure", { class: "card history", "data-feature": name, "data-rows": history.as_of.length },
        el("h3", {}, el("code", { text: name })),
        historyChart(history.as_of, values, history.range)));
    }
    return el("section", { id: "history" },
      el("h2", { text: "History from the offline log" }),
      el("p", { class: "muted", id: "history-summary", text: history.as_of.length + " log rows from " + history.range.from + " to " + history.range.to + " (one marker per row)" }),
      charts);
  }

  // -- statistics and drift ------------------------------------------------------------------

  async function statsPage() {
    const catalog = await api("/ui/api/catalog");
    const views = newest(catalog.views);
    const q = params();
    const chosen = views.find((v) => v.name === q.get("view")) || views[0];
    main.replaceChildren(el("h1", { text: "Statistics and drift" }));
    if (!chosen) { showError(main, "No views are registered."); return; }
    const select = viewSelect(views, chosen.name);
    const inputs = {
      from: el("input", { id: "from", value: q.get("from") || "now-1d", size: 24 }),
      to: el("input", { id: "to", value: q.get("to") || "now", size: 24 }),
      compare_from: el("input", { id: "compare-from", value: q.get("compare_from") || "", size: 24, placeholder: "optional" }),
      compare_to: el("input", { id: "compare-to", value: q.get("compare_to") || "", size: 24, placeholder: "optional" }),
    };
    const form = el("form", { class: "controls", id: "stats-form" },
      field("view", select), field("from", inputs.from), field("to", inputs.to),
      field("compare from", inputs.compare_from), field("compare to", inputs.compare_to),
      el("button", { type: "submit", id: "compute", text: "Compute" }));
    const result = el("div", { id: "stats-result" });
    main.append(form, result);
    const run = async () => {
      const state = { view: select.value };
      for (const [name, input] of Object.entries(inputs)) state[name] = input.value.trim();
      keepInUrl(state);
      const query = new URLSearchParams();
      for (const [name, value] of Object.entries(state)) if (value && name !== "view") query.set(name, value);
      result.replaceChildren(el("p", { class: "loading", text: "Computing…" }));
      try {
        const stats = await api("/ui/api/stats/" + encodeURIComponent(state.view) + "?" + query.toString());
        result.replaceChildren(...renderStats(stats));
      } catch (err) {
        result.replaceChildren();
        showError(result, err.message);
      }
    };
    form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
    await run();
  }

  function renderStats(stats) {
    const out = [];
    const ranges = el("p", { id: "ranges" },
      el("span", { class: "legend-base", text: "■ " + stats.base.from + " → " + stats.base.to }),
      ": " + fmt(stats.base.rows) + " rows, " + fmt(stats.base.entities) + " entities");
    if (stats.compare) {
      ranges.append(el("br"), el("span", { class: "legend-compare", text: "■ " + stats.compare.from + " → " + stats.compare.to }),
        ": " + fmt(stats.compare.rows) + " rows, " + fmt(stats.compare.entities) + " entities. Drift: PSI against the first range, flagged above " + stats.psi_threshold + ".");
    }
    out.push(ranges);
    const grid = el("div", { class: "stats-grid" });
    for (const [name, feature] of Object.entries(stats.features)) grid.append(featureCard(name, feature));
    out.push(grid);
    return out;
  }

  function featureCard(name, feature) {
    const title = el("h2", {}, el("code", { text: name }), el("span", { class: "muted", text: "  " + feature.type }));
    if (feature.drift) {
      const score = feature.drift.psi;
      title.append(el("span", {
        class: "badge " + (feature.drift.drifted ? "drift-flag" : "drift-ok"),
        "data-psi": score === null ? "" : score,
        text: (feature.drift.drifted ? "DRIFT" : "stable") + " · PSI " + (score === null ? "–" : score.toFixed(3)),
      }));
    }
    const sides = feature.compare ? [feature.base, feature.compare] : [feature.base];
    const head = el("tr", {}, el("th", { text: "" }), sides.map((_, i) => el("th", { class: "num " + (i ? "legend-compare" : "legend-base"), text: i ? "compare" : "base" })));
    const body = el("tbody", {});
    const line = (label, pick) => body.append(el("tr", { "data-stat": label }, el("td", { text: label }), sides.map((s) => el("td", { class: "num", text: fmt(pick(s)) }))));
    line("rows", (s) => s.rows);
    line("nulls", (s) => s.nulls);
    let chart;
    if (feature.kind === "numeric") {
      line("min", (s) => s.min);
      for (const q of Object.keys(feature.base.quantiles)) line("p" + Math.round(Number(q) * 100), (s) => s.quantiles[q]);
      line("max", (s) => s.max);
      line("mean", (s) => s.mean);
      line("stddev", (s) => s.stddev);
      const hist = feature.base.histogram;
      if (hist) {
        const labels = hist.edges.slice(0, -1).map((e) => fmt(e));
        chart = barChart(labels, hist.counts, feature.compare && feature.compare.histogram ? feature.compare.histogram.counts : null);
      }
    } else {
      line("distinct", (s) => s.distinct);
      if ("elements" in feature.base) line("elements", (s) => s.elements);
      const top = feature.base.top;
      if (top.length) {
        const labels = top.map((t) => t.value);
        let compareCounts = null;
        if (feature.compare) {
          const counts = new Map(feature.compare.top.map((t) => [t.value, t.count]));
          compareCounts = labels.map((l) => counts.get(l) || 0);
        }
        chart = barChart(labels, top.map((t) => t.count), compareCounts);
      }
      body.append(el("tr", {}, el("td", { text: "top values" }), sides.map((s) => el("td", { class: "num", text: s.top.slice(0, 5).map((t) => t.value + " (" + t.count + ")").join(", ") }))));
    }
    return el("section", { class: "card feature-stats", "data-feature": name, "data-drifted": feature.drift ? String(feature.drift.drifted) : "" },
      title, chart || el("p", { class: "muted", text: "no values in the range" }),
      el("table", {}, el("thead", {}, head), body));
  }

  // -- pipeline health -----------------------------------------------------------------------

  async function healthPage() {
    main.replaceChildren(el("h1", { text: "Pipeline health" }),
      el("p", { class: "muted", text: "Read from the flows' and this endpoint's Prometheus metrics; refreshed every 5 s." }));
    const holder = el("div", { id: "health-result" });
    main.append(holder);
    const refresh = async () => {
      try {
        const health = await api("/ui/api/health");
        holder.replaceChildren(...renderHealth(health));
      } catch (err) {
        holder.replaceChildren();
        showError(holder, err.message);
      }
    };
    await refresh();
    window.setInterval(refresh, 5000);
  }

  function renderHealth(health) {
    const targets = el("p", { id: "targets" }, "Source: " + health.source + ". ");
    if (!health.targets.length) {
      targets.append(el("span", { class: "muted", text: "No flow metrics addresses configured (FRESHET_UI_FLOW_METRICS): flow columns stay empty." }));
    }
    for (const target of health.targets) {
      targets.append(el("span", { class: target.up ? "up" : "down", title: target.error || "", text: (target.up ? "● " : "○ ") + target.address + "  " }));
    }
    const body = el("tbody", {});
    for (const row of health.views) {
      const letters = Object.entries(row.dead_letters).map(([reason, n]) => reason + ": " + fmt(n)).join(", ") || "0";
      const l = row.lookups;
      body.append(el("tr", { "data-view": row.view },
        el("td", {}, el("code", { text: row.view })),
        el("td", { class: "num", "data-metric": "events_per_s", text: row.events_per_s === null ? "–" : row.events_per_s.toFixed(1) }),
        el("td", { class: "num", "data-metric": "events_in_total", text: fmt(row.events_in_total) }),
        el("td", { class: "num", "data-metric": "consumer_lag", text: fmt(row.consumer_lag) }),
        el("td", { class: "num", "data-metric": "freshness_p50", text: row.freshness_p50_s === null ? "–" : (row.freshness_p50_s * 1000).toFixed(0) + " ms" }),
        el("td", { class: "num", "data-metric": "freshness_p99", text: row.freshness_p99_s === null ? "–" : (row.freshness_p99_s * 1000).toFixed(0) + " ms" }),
        el("td", { "data-metric": "dead_letters", text: letters }),
        el("td", { class: "num", "data-metric": "lookups", text: [l.hit, l.miss, l.expired, l.stale].map(fmt).join(" / ") }),
        el("td", { class: "num", "data-metric": "stale", text: fmt(l.stale) + (row.stale_share === null ? "" : " (" + (row.stale_share * 100).toFixed(1) + "%)") }),
      ));
    }
    const head = ["view", "events/s", "events read", "consumer lag", "freshness p50", "freshness p99", "dead letters by reason", "lookups hit / miss / expired / stale", "stale serves"];
    return [targets, el("section", { class: "card" }, el("table", { id: "health" },
      el("thead", {}, el("tr", {}, head.map((h, i) => el("th", { class: i && i !== 6 ? "num" : "", text: h })))), body))];
  }

  // -- start ---------------------------------------------------------------------------------

  const pages = { catalog: catalogPage, explore: explorePage, stats: statsPage, health: healthPage };

  setupChrome();
  (pages[page] || catalogPage)().then(
    () => document.body.setAttribute("data-ready", "true"),
    (err) => {
      main.replaceChildren();
      showError(main, err.message);
      document.body.setAttribute("data-ready", "error");
    },
  );
})();
