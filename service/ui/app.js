// deltagate try-it page. Plain JavaScript, no dependencies: it calls GET /model and POST /classify
// like any client. The API key lives only in the `apiKey` variable below (no storage, no cookies).
"use strict";

(() => {
  const MAX_IN_FLIGHT = 4; // concurrent /classify requests; the service batches them
  const SVG_NS = "http://www.w3.org/2000/svg"; // XML namespace name, not fetched
  // Chart geometry in CSS pixels; the width follows the figure's (text keeps its size).
  const CHART = { width: 640, height: 190, left: 16, right: 16, top: 28, plot: 100 };

  let apiKey = "";
  let model = null; // the /model response once loaded
  let labelSets = null; // the GET /label-sets response (null: not loaded or the bundle has no text side)
  let modelRetry = null; // timer of a /model retry after a 503
  const items = []; // one per image: {n, file, url, state, result, error, li}
  const queue = [];
  let inFlight = 0;

  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers: text only, never innerHTML (filenames and messages are untrusted) -----------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const pct = (x, digits = 1) => `${(100 * x).toFixed(digits)} %`;
  const num = (x, digits = 3) => (Number.isFinite(x) ? x.toFixed(digits) : String(x));

  // ---- HTTP --------------------------------------------------------------------------------------
  function authHeaders() {
    return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  }

  // The service's error, as it said it: "<status> <code>: <message>", plus Retry-After when sent.
  async function describeError(response) {
    const text = await response.text();
    let line = `${response.status} ${response.statusText}`.trim();
    try {
      const err = JSON.parse(text).error;
      line = `${err.status} ${err.code}: ${err.message}`;
    } catch (_) {
      if (text) line += `: ${text.slice(0, 300)}`;
    }
    const retry = response.headers.get("Retry-After");
    return { status: response.status, text: retry ? `${line} (Retry-After: ${retry} s)` : line, retry };
  }

  // ---- model card ---------------------------------------------------------------------------------
  async function loadModel() {
    clearTimeout(modelRetry);
    let response;
    try {
      response = await fetch("model", { headers: authHeaders() });
    } catch (e) {
      showModelError(`network error: ${e.message}`);
      return;
    }
    if (!response.ok) {
      const err = await describeError(response);
      showModelError(err.text + (err.status === 401 ? " Enter the service's API key above." : ""));
      if (err.status === 503) {
        const seconds = Math.max(1, Number(err.retry) || 2);
        modelRetry = setTimeout(loadModel, seconds * 1000);
      }
      return;
    }
    model = await response.json();
    renderModel(model);
    renderChart();
    loadLabelSets();
  }

  // ---- label sets: the picker's named sets (GET /label-sets) -------------------------------------
  async function loadLabelSets() {
    const picker = $("label-set");
    const hint = $("label-set-hint");
    let response;
    try {
      response = await fetch("label-sets", { headers: authHeaders() });
    } catch (e) {
      hint.textContent = `label sets: network error: ${e.message}`;
      return;
    }
    if (!response.ok) {
      labelSets = null;
      hint.textContent = (await describeError(response)).text;
      for (const opt of Array.from(picker.options)) opt.disabled = opt.value !== "";
      picker.value = "";
      onPickerChange();
      return;
    }
    labelSets = await response.json();
    const chosen = picker.value;
    const named = labelSets.label_sets.map((ls) => el("option", { value: `set:${ls.name}` },
      `${ls.name} (${ls.num_labels} labels${ls.calibrated ? ", calibrated" : ""})`));
    picker.replaceChildren(picker.options[0], picker.options[1], ...named);
    for (const opt of Array.from(picker.options)) opt.disabled = false;
    picker.value = Array.from(picker.options).some((o) => o.value === chosen) ? chosen : "";
    const counts = labelSets.rule_label_counts[labelSets.default_prompts];
    hint.textContent = `${labelSets.label_sets.length} named set(s); ad-hoc labels: ${counts ? `${counts[0]} to ${counts[1]}`
      : "no default rule"} (${labelSets.default_prompts} prompts).`;
    onPickerChange();
  }

  function onPickerChange() {
    $("labels").disabled = $("label-set").value !== "ad-hoc";
  }

  // The request's classes: {query, labels, name} from the picker and the labels box.
  function chosenClasses() {
    const v = $("label-set").value;
    if (v === "ad-hoc") {
      const labels = $("labels").value.split(/[\n,]/).map((s) => s.trim()).filter((s) => s.length);
      return { query: "", labels, name: "ad-hoc" };
    }
    if (v.startsWith("set:")) {
      const name = v.slice(4);
      return { query: `label_set=${encodeURIComponent(name)}`, labels: [], name };
    }
    return { query: "", labels: [], name: null };
  }

  function showModelError(text) {
    $("model-body").replaceChildren(el("p", { class: "error", role: "alert" }, text));
  }

  function row(term, ...value) {
    return [el("dt", {}, term), el("dd", {}, ...value)];
  }

  function renderModel(m) {
    const c = m.calibration || {};
    const facts = el(
      "dl", { class: "facts" },
      ...row("Version", m.version),
      ...row("Architecture", m.architecture),
      ...row("Engine", `${m.engine} on ${m.device} (${m.precision})`),
      ...row("Threshold", el("strong", {}, num(m.threshold, 4)), ` on ${c.score || "ΔEnergy"}`),
      ...row("Target TPR", pct(m.target_tpr, 0)),
      ...row("Calibration", `${c.n} images (${c.split}), ${pct(c.achieved_tpr)} pass`),
    );
    const classes = el("ul", { class: "chips", "aria-label": "Classes" },
      ...m.classes.map((name) => el("li", {}, name)));
    const warnings = (m.checks || []).filter((c) => !c.ok).map((c) => el("p", { class: "warning" }, `⚠ ${c.message}`));
    $("model-body").replaceChildren(
      el("h3", {}, m.name),
      ...(m.description ? [el("p", { class: "description" }, m.description)] : []),
      ...warnings,
      facts,
      el("h4", {}, `Classes (${m.num_classes})`),
      classes,
      ...renderEvaluation(m.evaluation, c.score),
    );
  }

  function renderEvaluation(ev, score) {
    if (!ev) return [el("h4", {}, "Evaluation"), el("p", { class: "hint" }, "This bundle records no evaluation.")];
    const out = [el("h4", {}, "Evaluation")];
    const facts = el("dl", { class: "facts" });
    if (ev.id_accuracy !== undefined) facts.append(...row("ID accuracy", pct(ev.id_accuracy)));
    if (ev.covariate_accuracy && ev.covariate_accuracy.mean !== undefined) {
      facts.append(...row("Covariate-shift accuracy", pct(ev.covariate_accuracy.mean)));
    }
    const at = ev.at_threshold;
    if (at && at.id_pass_rate !== undefined) facts.append(...row("ID pass rate at threshold", pct(at.id_pass_rate)));
    out.push(facts);
    const metrics = ev.scores && ev.scores[score] && ev.scores[score].ood;
    if (metrics) {
      const rejected = (at && at.ood_reject_rate) || {};
      const body = Object.entries(metrics).map(([set, v]) => el("tr", {},
        el("th", { scope: "row" }, set),
        el("td", {}, pct(v.auroc)),
        el("td", {}, pct(v.fpr95)),
        el("td", {}, rejected[set] !== undefined ? pct(rejected[set]) : "–")));
      out.push(el("table", { class: "eval" },
        el("caption", {}, `OOD detection with ${score}; rejected: share of each set below the threshold`),
        el("thead", {}, el("tr", {},
          el("th", { scope: "col" }, "OOD set"), el("th", { scope: "col" }, "AUROC"),
          el("th", { scope: "col" }, "FPR@95"), el("th", { scope: "col" }, "rejected"))),
        el("tbody", {}, ...body)));
    }
    const counts = ev.counts ? Object.entries(ev.counts).map(([k, v]) => `${k}: ${v}`).join(", ") : "";
    if (counts) out.push(el("p", { class: "hint" }, `Test images: ${counts}.`));
    return out;
  }

  // ---- classification -----------------------------------------------------------------------------
  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    for (const file of files) {
      const item = { n: items.length + 1, file, url: URL.createObjectURL(file), state: "pending" };
      items.push(item);
      item.li = el("li", { class: "card pending" });
      $("results").append(item.li);
      renderItem(item);
      queue.push(item);
    }
    setStatus();
    pump();
  }

  function pump() {
    while (inFlight < MAX_IN_FLIGHT && queue.length) {
      const item = queue.shift();
      inFlight += 1;
      classify(item).finally(() => {
        inFlight -= 1;
        renderItem(item);
        renderChart();
        setStatus();
        pump();
      });
    }
  }

  async function classify(item) {
    const body = new FormData();
    body.append("file", item.file, item.file.name);
    const classes = chosenClasses();
    if (classes.name === "ad-hoc" && !classes.labels.length) {
      item.error = "type the labels to classify against in the Labels box (at least two)";
      item.state = "error";
      return;
    }
    for (const label of classes.labels) body.append("labels", label);
    const k = parseInt($("top-k").value, 10);
    const query = [Number.isInteger(k) && k >= 1 ? `top_k=${k}` : "", classes.query].filter((q) => q).join("&");
    const url = query ? `classify?${query}` : "classify";
    try {
      const response = await fetch(url, { method: "POST", body, headers: authHeaders() });
      if (response.ok) {
        const answer = await response.json();
        item.result = answer.results[0];
        item.labelSet = answer.label_set;
        item.calibrated = answer.calibrated;
        item.state = "done";
      } else {
        item.error = (await describeError(response)).text;
        item.state = "error";
      }
    } catch (e) {
      item.error = `network error: ${e.message}`;
      item.state = "error";
    }
  }

  function setStatus() {
    const done = items.filter((i) => i.state !== "pending").length;
    const rejected = items.filter((i) => i.result && i.result.is_ood).length;
    const failed = items.filter((i) => i.state === "error").length;
    $("status").textContent = items.length === 0 ? "" :
      `${done} of ${items.length} classified · ${rejected} rejected as out of distribution · ${failed} failed`;
  }

  function renderItem(item) {
    const { li, result: r } = item;
    const name = item.file.name || `image ${item.n}`;
    const decision = item.state === "done" ? (r.is_ood ? "rejected" : "accepted") : item.state;
    li.className = `card ${decision}`;
    li.dataset.decision = decision;
    const head = el("h3", {}, el("span", { class: "num", "aria-hidden": "true" }, String(item.n)), ` ${name}`);
    const thumb = el("img", { src: item.url, alt: "", class: "thumb" });
    thumb.addEventListener("error", () => thumb.replaceWith(el("span", { class: "thumb none" }, "no preview")));
    const parts = [head];
    if (item.state === "pending") parts.push(el("p", { class: "decision" }, "classifying…"));
    if (item.state === "error") parts.push(el("p", { class: "decision" }, "error"), el("p", { class: "error" }, item.error));
    if (item.state === "done") parts.push(...renderResult(r, item));
    li.replaceChildren(thumb, el("div", { class: "body" }, ...parts));
  }

  function renderResult(r, item) {
    const margin = r.delta_energy - r.threshold;
    const verdict = r.is_ood ? "rejected" : "accepted";
    const classes = item.labelSet === null || item.labelSet === undefined ? "the bundle's"
      : item.labelSet === "ad-hoc" ? "ad-hoc labels" : `label set ${item.labelSet}`;
    const out = [
      el("p", { class: "decision" }, el("strong", {}, verdict), r.is_ood ? " · out of distribution" : ""),
      el("dl", { class: "facts" },
        ...row("Classes", classes, item.calibrated ? "" : " · threshold not calibrated (default rule)"),
        ...row("Label", el("strong", {}, r.label), r.is_ood ? " (not trusted)" : ""),
        ...row("Confidence", pct(r.confidence)),
        ...row("ΔEnergy", `${num(r.delta_energy)} (threshold ${num(r.threshold)}, ${margin >= 0 ? "+" : ""}${num(margin)})`),
        ...row("ID p-value", num(r.ood_p_value, 3))),
    ];
    if (r.message) out.push(el("p", { class: "message" }, r.message));
    const rows = r.top_k.map((t) => {
      const bar = el("span", { class: "bar" });
      bar.style.width = `${(100 * t.probability).toFixed(1)}%`; // CSSOM: the CSP forbids style attributes
      return el("tr", {},
        el("th", { scope: "row" }, t.label),
        el("td", {}, pct(t.probability)),
        el("td", { class: "bar-cell", "aria-hidden": "true" }, bar));
    });
    out.push(el("table", { class: "topk" },
      el("caption", {}, `Top ${r.top_k.length}`),
      el("tbody", {}, ...rows)));
    return out;
  }

  // ---- chart: the calibration distribution (from the quantile summary) and each image's score ----
  // CDF of the summary: levels[i] of the scores are <= values[i]; linear in between.
  function cdf(x, values, levels) {
    const last = values.length - 1;
    if (x < values[0]) return 0;
    if (x >= values[last]) return 1;
    let i = 0; // last index with values[i] <= x (the largest level among tied values)
    while (i < last && values[i + 1] <= x) i += 1;
    return levels[i] + (levels[i + 1] - levels[i]) * (x - values[i]) / (values[i + 1] - values[i]);
  }

  function niceTicks(lo, hi, count) {
    const raw = (hi - lo) / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((s) => s * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) ticks.push(Number(t.toFixed(10)));
    return ticks;
  }

  // Keep the threshold's label inside the chart: right of the line, else left of it, else shorter.
  function placeLabel(node, tx, shorter) {
    const fits = () => { const b = node.getBBox(); return b.x >= 0 && b.x + b.width <= CHART.width; };
    if (fits()) return;
    node.setAttribute("x", tx - 4);
    node.setAttribute("text-anchor", "end");
    if (fits()) return;
    node.textContent = shorter;
    node.setAttribute("x", tx + 4);
    node.setAttribute("text-anchor", "start");
    if (!fits()) { node.setAttribute("x", tx - 4); node.setAttribute("text-anchor", "end"); }
  }

  function renderChart() {
    const chart = $("chart");
    CHART.width = Math.max(320, Math.round(chart.parentElement.clientWidth) || 640);
    chart.setAttribute("viewBox", `0 0 ${CHART.width} ${CHART.height}`);
    if (!model || !model.calibration_quantiles) {
      chart.replaceChildren(svg("text", { x: CHART.width / 2, y: 90, "text-anchor": "middle", class: "muted" },
        model ? "This service reports no calibration distribution." : "Waiting for /model…"));
      return;
    }
    const { values, levels } = model.calibration_quantiles;
    const vmin = values[0];
    const vmax = values[values.length - 1];
    const span = Math.max(vmax - vmin, 1e-6);
    // Only the bundle's classes share its calibration and threshold; a label set's images are on their cards.
    const scored = items.filter((i) => i.state === "done" && (i.labelSet === null || i.labelSet === undefined));
    // Domain: the calibration range and the images' scores, at most 2 spans either side (beyond: edge arrows).
    let lo = Math.min(vmin, model.threshold, ...scored.map((i) => i.result.delta_energy));
    let hi = Math.max(vmax, model.threshold, ...scored.map((i) => i.result.delta_energy));
    lo = Math.max(lo, vmin - 2 * span) - 0.05 * span;
    hi = Math.min(hi, vmax + 2 * span) + 0.05 * span;
    const x0 = CHART.left;
    const x1 = CHART.width - CHART.right;
    const xs = (v) => x0 + (x1 - x0) * (v - lo) / (hi - lo);
    const base = CHART.top + CHART.plot;
    const nodes = [];

    // Rejected region (under the histogram, so its bars keep their colour).
    const tx = xs(model.threshold);
    nodes.push(svg("rect", { x: x0, y: CHART.top, width: Math.max(tx - x0, 0), height: CHART.plot, class: "reject-zone" }));

    // Density histogram: equal-width bins over the calibration range, mass from the CDF.
    const bins = 32;
    const w = span / bins;
    const mass = [];
    for (let b = 0; b < bins; b += 1) mass.push(cdf(vmin + (b + 1) * w, values, levels) - cdf(vmin + b * w, values, levels));
    const top = Math.max(...mass, 1e-9);
    mass.forEach((m, b) => {
      const h = CHART.plot * m / top;
      const left = xs(vmin + b * w);
      nodes.push(svg("rect", { x: left, y: base - h, width: Math.max(xs(vmin + (b + 1) * w) - left - 0.5, 0.5),
        height: h, class: "density" }));
    });

    // Threshold.
    nodes.push(svg("line", { x1: tx, x2: tx, y1: CHART.top - 14, y2: base, class: "threshold" }));
    const label = `threshold ${num(model.threshold)} · ${pct(model.target_tpr, 0)} of ID pass`;
    const thresholdLabel = svg("text", { x: tx + 4, y: CHART.top - 4, class: "threshold-label" }, label);
    nodes.push(thresholdLabel);
    nodes.push(svg("text", { x: x0 + 2, y: CHART.top + 12, class: "zone-label" }, "rejected"));

    // Axis.
    nodes.push(svg("line", { x1: x0, x2: x1, y1: base, y2: base, class: "axis" }));
    for (const t of niceTicks(lo, hi, 6)) {
      nodes.push(svg("line", { x1: xs(t), x2: xs(t), y1: base, y2: base + 4, class: "axis" }));
      nodes.push(svg("text", { x: xs(t), y: base + 16, "text-anchor": "middle", class: "tick" }, String(t)));
    }
    nodes.push(svg("text", { x: x1, y: base + 32, "text-anchor": "end", class: "muted" },
      "ΔEnergy (higher = more in-distribution)"));

    // Markers, numbered as the cards; labels stacked when they would overlap.
    const placed = [];
    const sorted = scored.slice().sort((a, b) => a.result.delta_energy - b.result.delta_energy);
    for (const item of sorted) {
      const v = item.result.delta_energy;
      const clipped = v < lo || v > hi;
      const x = xs(Math.min(Math.max(v, lo), hi));
      let level = 0;
      while (placed.some((p) => p.level === level && Math.abs(p.x - x) < 16)) level += 1;
      placed.push({ x, level });
      const y = base - 10 - 18 * level;
      const cls = item.result.is_ood ? "marker rejected" : "marker accepted";
      const g = svg("g", { class: cls });
      g.append(svg("line", { x1: x, x2: x, y1: base, y2: y + 7 }));
      g.append(svg("circle", { cx: x, cy: y, r: 8 }));
      g.append(svg("text", { x, y: y + 4, "text-anchor": "middle" }, String(item.n)));
      if (clipped) g.append(svg("text", { x: x + (v < lo ? 10 : -10), y: y - 10, "text-anchor": v < lo ? "start" : "end",
        class: "clipped" }, `${v < lo ? "◂ " : ""}${num(v, 2)}${v > hi ? " ▸" : ""}`));
      nodes.push(g);
    }
    chart.replaceChildren(...nodes);
    placeLabel(thresholdLabel, tx, `threshold ${num(model.threshold)}`);
    const described = scored.map((i) => `image ${i.n}: ${num(i.result.delta_energy)}, ${i.result.is_ood ? "rejected" : "accepted"}`);
    chart.setAttribute("aria-label", `Calibration ΔEnergy from ${num(vmin)} to ${num(vmax)}, threshold ${num(model.threshold)}`
      + (described.length ? `; ${described.join("; ")}` : ""));
  }

  // The key typed in the field: kept in `apiKey` only; the model card reloads with it.
  function applyKey(always) {
    const key = $("api-key").value.trim();
    if (always || key !== apiKey || !model) {
      apiKey = key;
      loadModel();
    }
  }

  // ---- wiring --------------------------------------------------------------------------------------
  function init() {
    const zone = $("drop-zone");
    const input = $("file-input");
    $("pick-button").addEventListener("click", () => input.click());
    input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      addFiles(e.dataTransfer.files);
    });
    document.addEventListener("paste", (e) => {
      if (e.clipboardData && e.clipboardData.files.length) addFiles(e.clipboardData.files);
    });
    $("controls").addEventListener("submit", (e) => { e.preventDefault(); applyKey(true); });
    $("api-key").addEventListener("change", () => applyKey(false));
    $("label-set").addEventListener("change", onPickerChange);
    let resizeTimer = null;
    window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(renderChart, 100); });
    renderChart();
    loadModel();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
