// HH-VAEM questionnaire: asks the next best question through the service's public HTTP API (/v1).
// No framework, no build step. Query string: ?model=&costs=ldl:5,hdl:5&min_gain=&max_uncertainty=&top_k=&seed=

const API = new URL("../v1/", document.baseURI); // the page lives at /ui/, the API at /v1/
const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const NUMERIC = new Set(["real", "positive", "count"]);

const state = {
  models: [], // GET /v1/models entries (active versions)
  model: null, // GET /v1/models/{name}
  features: {}, // name -> schema entry
  ranges: {}, // name -> the model's predictive summary with no answers (plausible range hint)
  session: null, // the latest SessionOut
  next: null, // the latest next-features response
  baseline: null, // {prediction, uncertainty} at the start of the questionnaire
  skipped: new Set(),
  checks: {}, // feature -> {p, unusual}: each answer checked against the others (session prediction)
  kept: new Set(), // "feature=value" answers the user chose to keep although called unusual
  asking: null, // the feature shown in the question form
  busy: false,
  expired: false,
  seed: 0,
};

// ------------------------------------------------------------------------------------------------ helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const label = (name) => String(name).replaceAll("_", " ");

function fmt(x, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e7)) return x.toExponential(digits - 1);
  const whole = a >= 1 ? Math.floor(Math.log10(a)) + 1 : 1;
  return x.toLocaleString("en", { maximumSignificantDigits: Math.max(digits, whole), useGrouping: false });
}

const fmtGain = (g) => (g === 0 ? "0 nats" : `${fmt(g, 2)} nats`);

// An information gain in words. The share of the prediction's uncertainty a question is expected to remove: for a
// number, its spread narrows on average by the factor e^-gain (the entropy's change; exact for a normal
// prediction); for a class, gain / entropy of the prediction now. The nats stay in the details.
function gainShare(gain) {
  const entropy = state.next?.prediction?.probabilities ? state.next.uncertainty : null;
  if (entropy !== null) return entropy > 0 ? Math.min(1, Math.max(0, gain / entropy)) : 0;
  return 1 - Math.exp(-Math.max(0, gain));
}

function gainWords(gain) {
  const share = gainShare(gain);
  const words =
    share >= 0.25 ? "a lot" : share >= 0.1 ? "quite a bit" : share >= 0.02 ? "a little" : "almost nothing";
  const pct = Math.round(share * 100);
  const amount = pct >= 1 ? `about ${pct}%` : "less than 1%";
  const effect = state.next?.prediction?.probabilities
    ? `remove ${amount} of its uncertainty`
    : `narrow it by ${amount}`;
  return { words, text: `tells us ${words} about the prediction (expected to ${effect})` };
}

// A field of a problem+json error ("observations.bmi", "rows.0.bmi") by the name the page shows for it.
function fieldLabel(field) {
  const parts = String(field).split(".");
  if (parts[0] === "observations" && parts.length > 1) return label(parts.slice(1).join("."));
  if (parts[0] === "rows" && parts.length > 2) return label(parts.slice(2).join("."));
  return label(field);
}

// The same, inside a sentence of the service's (its `detail`).
const inWords = (text) =>
  String(text).replace(/\b(?:observations|rows\.\d+)\.([A-Za-z0-9_]+)/g, (_, name) => label(name));
const withUnit = (value, unit) => (unit ? `${value} ${unit}` : String(value));

// What a category is called on the page: its label in the model's schema (`labels`, one per category), else its
// value. `value` is a category (1), its text as the API keys probabilities by ("1"), or a label already.
function categoryName(spec, value) {
  const categories = spec?.categories || [];
  const i = categories.findIndex((c) => c === value || String(c) === String(value));
  if (i >= 0 && spec.labels?.[i]) return spec.labels[i];
  return String(value);
}

// Whether the answer `value` (a category or its label) is the category at `i`.
const isCategory = (spec, i, value) =>
  value !== undefined && value !== null && (spec.categories[i] === value || spec.labels?.[i] === value);

// The schema's plain sentence about a column, or nothing.
const describe = (spec, id) =>
  spec?.description ? el("p", { id, class: "description", text: spec.description }) : null;
const percentChange = (from, to) => {
  if (!from) return "";
  const p = Math.round(((to - from) / from) * 100);
  return ` (${p < 0 ? "−" : p > 0 ? "+" : "±"}${Math.abs(p)}%)`;
};

function announce(text) {
  const status = $("status");
  status.textContent = "";
  // a fresh text node after a tick makes screen readers read it even when it equals the previous one
  setTimeout(() => (status.textContent = text), 30);
}

function setBusy(busy) {
  state.busy = busy;
  document.body.dataset.busy = String(busy);
  $("main").setAttribute("aria-busy", String(busy));
}

// ------------------------------------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json, application/problem+json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(new URL(path, API), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, { title: "Network error", detail: "The service cannot be reached." });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const fallback = { title: response.statusText, detail: text.slice(0, 300) };
    const problem = data && typeof data === "object" ? data : fallback;
    throw new ApiError(response.status, problem);
  }
  return data;
}

const sessionPath = (suffix = "") => `sessions/${encodeURIComponent(state.session.session_id)}${suffix}`;

// ------------------------------------------------------------------------------------------------ errors

function showAlert(text, actions = [], items = []) {
  $("alert-text").textContent = text;
  const box = $("alert");
  box.querySelector("ul")?.remove();
  if (items.length) box.insertBefore(el("ul", {}, ...items.map((t) => el("li", { text: t }))), $("alert-actions"));
  $("alert-actions").replaceChildren(
    ...actions.map((a) => el("button", { type: "button", text: a.label, onclick: () => a.run() })),
  );
  box.hidden = false;
}

function clearAlert() {
  $("alert").hidden = true;
  $("alert-text").textContent = "";
  $("alert-actions").replaceChildren();
}

function clearFieldErrors() {
  for (const p of document.querySelectorAll(".field-error")) p.textContent = "";
  for (const i of document.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
}

function setFieldError(prefix, reason) {
  const target = $(`${prefix}-error`);
  if (!target) return false;
  target.textContent = target.textContent ? `${target.textContent}; ${reason}` : reason;
  const input = $(`${prefix}-input`) || $(prefix);
  const group = $(`${prefix}-group`);
  for (const node of [input, group]) node?.setAttribute("aria-invalid", "true");
  return true;
}

const SETTING_FIELDS = { costs: "costs", min_gain: "min-gain", max_uncertainty: "max-uncertainty", top_k: "top-k" };

// Where a problem's errors[].field is shown: the form that sent the value (`scope`: "q" or "edit") or the settings.
function fieldTarget(field, scope) {
  const [head, rest] = [field.split(".")[0], field.split(".").slice(1).join(".")];
  if (head === "observations" && scope && $(`${scope}-form-feature`)?.value === rest) return scope;
  if (head in SETTING_FIELDS) {
    $("settings").open = true;
    return SETTING_FIELDS[head];
  }
  return null;
}

function handleError(error, retry, scope) {
  if (!(error instanceof ApiError)) {
    console.error(error);
    showAlert(`Something went wrong in this page: ${error.message}`);
    return;
  }
  const { status, problem } = error;
  if (status === 404 && state.session && (problem.resource === "session" || /session/.test(problem.type || ""))) {
    sessionExpired();
  } else if (status === 503 || status === 0) {
    const what = status ? "The service is temporarily unavailable" : "The service cannot be reached";
    showAlert(`${what}${problem.detail ? ` (${problem.detail})` : ""}. Please retry in a moment.`, [
      { label: "Retry", run: () => guarded(retry, scope) },
    ]);
    $("alert-actions").querySelector("button")?.focus();
  } else if (status === 422 || status === 400) {
    const loose = [];
    let first = null;
    for (const e of problem.errors || []) {
      const field = String(e.field || "");
      const target = fieldTarget(field, scope);
      const sub = field.split(".").slice(1).join(".");
      const reason = sub && !field.startsWith("observations.") ? `${sub}: ${e.reason}` : e.reason;
      if (target && setFieldError(target, reason)) first ??= target;
      else loose.push(`${fieldLabel(e.field)}: ${e.reason}`);
    }
    showAlert(`Not accepted: ${inWords(problem.detail || problem.title)}`, [], loose);
    if (first) ($(`${first}-input`) || $(first) || $(`${first}-group`)?.querySelector("input"))?.focus();
  } else {
    showAlert(`${problem.title || "Error"} (${status}): ${problem.detail || "the request failed."}`);
  }
}

// Runs one user action: one at a time, errors shown where they belong.
async function guarded(action, scope = null) {
  if (state.busy) return;
  setBusy(true);
  clearAlert();
  clearFieldErrors();
  try {
    await action();
  } catch (error) {
    handleError(error, action, scope);
  } finally {
    setBusy(false);
  }
}

function sessionExpired() {
  state.expired = true;
  const n = Object.keys(state.session.current).length;
  const ttl = state.session.expires_in;
  const session = $("session");
  session.inert = true;
  session.classList.add("expired");
  const actions = [{ label: "Start over", run: () => guarded(() => start({ carry: false })) }];
  if (n) {
    const text = `Start again with my ${n} answer${n === 1 ? "" : "s"}`;
    actions.unshift({ label: text, run: () => guarded(() => start({ carry: true })) });
  }
  showAlert(
    `Your questionnaire session has expired (after ${ttl} s without activity) and the service no longer has it. ` +
      "Start again to continue.",
    actions,
  );
  $("alert-actions").querySelector("button").focus();
}

// ------------------------------------------------------------------------------------------------ inputs

function rangeHint(spec) {
  const r = state.ranges[spec.name];
  if (NUMERIC.has(spec.type) && r?.quantiles) {
    const q = Object.entries(r.quantiles).sort((a, b) => Number(a[0]) - Number(b[0]));
    if (q.length >= 2) {
      const [lo, hi] = [q[0][1], q[q.length - 1][1]];
      const range = `${fmt(lo)} to ${withUnit(fmt(hi), spec.unit)}`;
      return `Plausible range ${range} (the model's 1%–99% range before any answers).`;
    }
  }
  if (r?.probabilities) {
    const parts = Object.entries(r.probabilities).map(
      ([k, p]) => `${categoryName(spec, k)}: ${Math.round(p * 100)}%`,
    );
    return `Before any answers the model expects ${parts.join(", ")}.`;
  }
  return spec.unit ? `In ${spec.unit}.` : "";
}

// A labelled input for one feature; `prefix` names its ids (`${prefix}-input`, `${prefix}-error`, ...).
function buildInput(spec, prefix, value) {
  const hint = el("p", { id: `${prefix}-hint`, class: "hint", text: rangeHint(spec) });
  const error = el("p", { id: `${prefix}-error`, class: "field-error" });
  const description = describe(spec, `${prefix}-description`);
  const describedby = `${description ? `${prefix}-description ` : ""}${prefix}-hint ${prefix}-error`;
  const feature = el("input", { type: "hidden", id: `${prefix}-form-feature`, value: spec.name });
  if (NUMERIC.has(spec.type)) {
    const input = el("input", {
      id: `${prefix}-input`,
      type: "number",
      step: spec.type === "count" ? "1" : "any",
      inputmode: spec.type === "count" ? "numeric" : "decimal",
      autocomplete: "off",
      "aria-describedby": describedby,
      "data-feature": spec.name,
    });
    if (value !== undefined && value !== null) input.value = String(value);
    const text = el("label", { for: input.id, class: "question-label" }, label(spec.name));
    if (spec.unit) text.append(" ", el("span", { class: "unit", text: `(${spec.unit})` }));
    return el("div", { class: "field" }, feature, text, description, input, hint, error);
  }
  const categories = spec.categories || [];
  if (categories.length > 8) {
    const select = el("select", { id: `${prefix}-input`, "aria-describedby": describedby, "data-feature": spec.name });
    select.append(el("option", { value: "", text: "Choose…" }));
    categories.forEach((c, i) =>
      select.append(
        el("option", { value: String(i), text: categoryName(spec, c), selected: isCategory(spec, i, value) }),
      ),
    );
    const text = el("label", { for: select.id, class: "question-label", text: label(spec.name) });
    return el("div", { class: "field" }, feature, text, description, select, hint, error);
  }
  const group = el("fieldset", { id: `${prefix}-group`, class: "choices", "aria-describedby": describedby });
  group.append(el("legend", { class: "question-label", text: label(spec.name) }));
  if (description) group.append(description);
  categories.forEach((c, i) => {
    const radio = el("input", {
      type: "radio",
      name: `${prefix}-value`,
      id: `${prefix}-opt-${i}`,
      value: String(i),
      checked: isCategory(spec, i, value),
      "data-feature": spec.name,
    });
    group.append(el("label", { for: radio.id, class: "choice" }, radio, ` ${categoryName(spec, c)}`));
  });
  return el("div", { class: "field" }, feature, group, hint, error);
}

// The value of the input built by buildInput: {value} or {error}.
function readInput(spec, prefix) {
  if (NUMERIC.has(spec.type)) {
    const input = $(`${prefix}-input`);
    const text = input.value.trim();
    if (!text) {
      return { error: input.validity.badInput ? "Enter a number." : "Enter a value (or skip the question)." };
    }
    const value = Number(text);
    return Number.isFinite(value) ? { value } : { error: "Enter a number." };
  }
  const select = $(`${prefix}-input`);
  const chosen = select ? select.value : document.querySelector(`input[name="${prefix}-value"]:checked`)?.value;
  if (chosen === undefined || chosen === "") return { error: "Choose one of the options." };
  return { value: spec.categories[Number(chosen)] };
}

function focusInput(prefix) {
  const target =
    $(`${prefix}-input`) ||
    document.querySelector(`input[name="${prefix}-value"]:checked`) ||
    document.querySelector(`input[name="${prefix}-value"]`);
  target?.focus();
}

// ------------------------------------------------------------------------------------------------ rendering

function nextParams() {
  const p = new URLSearchParams();
  const topK = $("top-k").value.trim();
  if (topK) p.set("top_k", topK);
  const costs = $("costs").value.replace(/\s+/g, "");
  if (costs) p.set("costs", costs);
  const minGain = $("min-gain").value.trim();
  if (minGain) p.set("min_gain", minGain);
  const maxUnc = $("max-uncertainty").value.trim();
  if (maxUnc) p.set("max_uncertainty", maxUnc);
  const skipped = [...state.skipped].filter((f) => !(f in state.session.current));
  if (skipped.length) p.set("exclude", skipped.join(","));
  p.set("seed", String(state.seed));
  return p;
}

const costsOn = () => $("costs").value.trim() !== "";

const hasCost = (r) => costsOn() && r.cost !== null && r.cost !== undefined;

// What a question is worth, in words ("tells us a little about the prediction ..., for a cost of 5").
function gainText(r) {
  return gainWords(r.gain).text + (hasCost(r) ? `, for a cost of ${fmt(r.cost)}` : "");
}

// The numbers behind gainText, for the details view.
function gainNumbers(r) {
  const se = r.gain_se !== null && r.gain_se !== undefined ? ` (Monte Carlo standard error ${fmt(r.gain_se, 2)})` : "";
  let text = `Expected information gain ${fmtGain(r.gain)}${se}`;
  if (hasCost(r)) text += `; cost ${fmt(r.cost)}, ${fmtGain(r.gain_per_cost)} per unit of cost`;
  return `${text}.`;
}

// "Either question helps about as much" when the best two are within Monte Carlo noise of each other.
function tieText(feature) {
  const tie = state.next?.tie;
  if (!tie?.tied || !tie.features.includes(feature)) return "";
  const other = tie.features.find((f) => f !== feature);
  return other ? ` Asking ${label(other)} instead helps about as much.` : "";
}

function showQuestion(feature, recommended) {
  const form = $("question");
  const spec = state.features[feature];
  state.asking = feature;
  form.hidden = false;
  form.dataset.feature = feature;
  form.dataset.type = spec.type;
  $("done").hidden = true;
  $("question-kind").textContent = recommended ? "Recommended next question" : "Your chosen question";
  $("question-field").replaceChildren(buildInput(spec, "q"));
  const ranked = state.next?.ranking.find((r) => r.feature === feature);
  const text = ranked ? gainText(ranked) : "";
  $("question-meta").textContent = ranked
    ? `${text[0].toUpperCase()}${text.slice(1)}.${tieText(feature)}`
    : "Not among the top-ranked questions.";
  $("question-meta").dataset.words = ranked ? gainWords(ranked.gain).words : "";
  $("question-details").hidden = !ranked;
  $("question-numbers").textContent = ranked ? gainNumbers(ranked) : "";
  renderAlternatives();
  renderOther();
}

function renderAlternatives() {
  const list = $("alternatives");
  const items = (state.next?.ranking || []).filter((r) => r.feature !== state.asking);
  list.replaceChildren(
    ...items.map((r) =>
      el(
        "li",
        {},
        el("button", {
          type: "button",
          class: "alt",
          "data-feature": r.feature,
          text: label(r.feature),
          "aria-label": `Answer ${label(r.feature)} instead (it ${gainText(r)})`,
          onclick: () => {
            clearAlert();
            showQuestion(r.feature, r.feature === state.next?.ranking[0]?.feature);
            focusInput("q");
          },
        }),
        el("span", { class: "gain", title: gainNumbers(r), text: `: ${gainText(r)}` }),
      ),
    ),
  );
  $("alternatives-heading").hidden = items.length === 0;
}

function renderOther() {
  const select = $("other");
  const open = Object.keys(state.features).filter((f) => !(f in state.session.current) && f !== state.asking);
  select.replaceChildren(
    ...open.map((f) => el("option", { value: f, text: label(f) + (state.skipped.has(f) ? " (skipped)" : "") })),
  );
  $("other-form").hidden = open.length === 0;
  const skipped = [...state.skipped].filter((f) => !(f in state.session.current));
  $("skipped").hidden = skipped.length === 0;
  $("skipped-list").textContent = `Skipped: ${skipped.map(label).join(", ")}.`;
}

// The service's stopping rules, in words; its own reason (with the numbers) goes to the details view.
const STOP_WORDS = [
  ["no candidate features remain", "No questions remain to be asked."],
  ["information gain", "The remaining questions would hardly change the prediction."],
  ["prediction uncertainty", "The prediction is already as certain as the settings ask for."],
];

function renderStop() {
  const { stop, ranking } = state.next;
  $("stop").hidden = !stop.stop;
  const words = STOP_WORDS.filter(([rule]) => stop.reason.includes(rule)).map(([, text]) => text);
  $("stop-reason").textContent = stop.stop ? words.join(" ") : "";
  $("stop-numbers").textContent = stop.stop ? `The service's reason: ${stop.reason}.` : "";
  $("stop-more").hidden = ranking.length === 0 && !state.asking;
}

function renderDone() {
  const open = Object.keys(state.features).filter((f) => !(f in state.session.current));
  $("question").hidden = true;
  state.asking = null;
  $("done").hidden = false;
  $("done").textContent =
    open.length === 0
      ? "All questions are answered."
      : "No questions left to recommend: the remaining ones were skipped. You can still answer them below.";
  renderAlternatives();
  renderOther();
}

function quantileSummary(p) {
  const q = Object.entries(p.quantiles || {})
    .map(([k, v]) => [Number(k), v])
    .sort((a, b) => a[0] - b[0]);
  if (q.length < 2) return { lo: p.mean - p.std, hi: p.mean + p.std, median: p.mean, level: null, ...p };
  const mid = q.find((x) => x[0] === 0.5) || q[Math.floor(q.length / 2)];
  const level = Math.round((q[q.length - 1][0] - q[0][0]) * 100);
  return { lo: q[0][1], hi: q[q.length - 1][1], median: mid[1], level, mean: p.mean, std: p.std };
}

function niceTicks(lo, hi, count = 6) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
  const ticks = [];
  for (let t = Math.floor(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  if (ticks[ticks.length - 1] < hi) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

function plotFrame(title, desc, height) {
  const id = `plot-${Math.random().toString(36).slice(2, 8)}`;
  const root = svg("svg", {
    viewBox: `0 0 640 ${height}`,
    width: "100%",
    role: "img",
    "aria-labelledby": `${id}-title ${id}-desc`,
    class: "plot",
  });
  root.append(svg("title", { id: `${id}-title` }, title), svg("desc", { id: `${id}-desc` }, desc));
  return root;
}

// A numeric target: the central interval now (dark bar) over the one at the start (pale box), the median (tick),
// and the mean ± one standard deviation (dot and whisker), on a common axis.
function intervalPlot(target, cur, base, summary) {
  const values = [cur.lo, cur.hi, cur.mean - cur.std, cur.mean + cur.std];
  if (base) values.push(base.lo, base.hi, base.mean - base.std, base.mean + base.std);
  const ticks = niceTicks(Math.min(...values), Math.max(...values));
  const [d0, d1] = [ticks[0], ticks[ticks.length - 1]];
  const [L, R] = [96, 624];
  const x = (v) => L + ((v - d0) / (d1 - d0 || 1)) * (R - L);
  const root = plotFrame(`Prediction of ${label(target.name)}`, summary, 132);
  Object.assign(root.dataset, { lo: cur.lo, hi: cur.hi, median: cur.median, mean: cur.mean, std: cur.std });
  const level = cur.level ? `${cur.level}% interval` : "interval";
  root.append(svg("text", { x: L - 10, y: 36, "text-anchor": "end", class: "row-label" }, level));
  if (base) {
    root.append(
      svg("rect", { x: x(base.lo), y: 20, width: Math.max(1, x(base.hi) - x(base.lo)), height: 24, class: "base" }),
      svg("line", { x1: x(base.median), x2: x(base.median), y1: 18, y2: 46, class: "base-median" }),
    );
  }
  root.append(
    svg("rect", { x: x(cur.lo), y: 26, width: Math.max(2, x(cur.hi) - x(cur.lo)), height: 12, class: "band" }),
    svg("line", { x1: x(cur.median), x2: x(cur.median), y1: 18, y2: 46, class: "median" }),
    svg("text", { x: L - 10, y: 76, "text-anchor": "end", class: "row-label" }, "mean ± sd"),
  );
  if (base) {
    root.append(
      svg("line", { x1: x(base.mean - base.std), x2: x(base.mean + base.std), y1: 80, y2: 80, class: "base-whisker" }),
    );
  }
  root.append(
    svg("line", { x1: x(cur.mean - cur.std), x2: x(cur.mean + cur.std), y1: 72, y2: 72, class: "whisker" }),
    svg("line", { x1: x(cur.mean - cur.std), x2: x(cur.mean - cur.std), y1: 66, y2: 78, class: "whisker" }),
    svg("line", { x1: x(cur.mean + cur.std), x2: x(cur.mean + cur.std), y1: 66, y2: 78, class: "whisker" }),
    svg("circle", { cx: x(cur.mean), cy: 72, r: 5, class: "mean" }),
    svg("line", { x1: L, x2: R, y1: 100, y2: 100, class: "axis" }),
  );
  for (const t of ticks) {
    root.append(
      svg("line", { x1: x(t), x2: x(t), y1: 100, y2: 105, class: "axis" }),
      svg("text", { x: x(t), y: 120, "text-anchor": "middle", class: "tick" }, fmt(t)),
    );
  }
  return root;
}

// A categorical target: one bar per class (probability now), with the probability at the start as a pale box.
function barsPlot(target, probs, baseProbs, summary) {
  const classes = Object.keys(probs);
  const height = 16 + classes.length * 30;
  const [L, R] = [120, 560];
  const root = plotFrame(`Prediction of ${label(target.name)}`, summary, height);
  root.dataset.probabilities = JSON.stringify(probs);
  classes.forEach((c, i) => {
    const y = 10 + i * 30;
    root.append(
      svg("text", { x: L - 10, y: y + 15, "text-anchor": "end", class: "row-label" }, categoryName(target, c)),
    );
    if (baseProbs && c in baseProbs) {
      const width = Math.max(1, baseProbs[c] * (R - L));
      root.append(svg("rect", { x: L, y: y - 1, width, height: 22, class: "base" }));
    }
    root.append(
      svg("rect", { x: L, y: y + 4, width: Math.max(1, probs[c] * (R - L)), height: 12, class: "band" }),
      svg("text", { x: L + probs[c] * (R - L) + 8, y: y + 15, class: "tick" }, `${Math.round(probs[c] * 100)}%`),
    );
  });
  return root;
}

function renderPrediction() {
  const next = state.next;
  const target = state.model.schema.targets.find((t) => t.name === next.target) || { name: next.target };
  const answered = Object.keys(state.session.current).length;
  const base = answered > 0 ? state.baseline : null;
  const p = next.prediction;
  const section = $("prediction");
  section.dataset.answers = String(answered);
  let summary;
  let change = "";
  let plot;
  if (p.probabilities) {
    const ordered = Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]);
    summary =
      `${label(target.name)}: most likely ${categoryName(target, p.mode)} ` +
      `(${ordered.map(([k, v]) => `${categoryName(target, k)} ${Math.round(v * 100)}%`).join(", ")}).`;
    plot = barsPlot(target, p.probabilities, base?.prediction.probabilities, summary);
    if (base) {
      change =
        `Uncertainty (entropy): ${fmt(base.uncertainty)} → ${fmt(next.uncertainty)} nats` +
        `${percentChange(base.uncertainty, next.uncertainty)} since the start.`;
    }
  } else {
    const cur = quantileSummary(p);
    const unit = target.unit ? ` ${target.unit}` : "";
    summary =
      `${label(target.name)}: median ${fmt(cur.median)}${unit}, ` +
      `${cur.level ?? "central"}% interval ${fmt(cur.lo)} to ${fmt(cur.hi)}; mean ${fmt(cur.mean)} ± ${fmt(cur.std)}.`;
    const b = base ? quantileSummary(base.prediction) : null;
    plot = intervalPlot(target, cur, b, summary);
    if (b) {
      change =
        `${cur.level ?? "Central"}% interval width: ${fmt(b.hi - b.lo)} → ${fmt(cur.hi - cur.lo)}` +
        `${percentChange(b.hi - b.lo, cur.hi - cur.lo)}; standard deviation ${fmt(b.std)} → ${fmt(cur.std)}` +
        `${percentChange(b.std, cur.std)} since the start.`;
    }
  }
  $("prediction-heading").textContent = `Prediction: ${label(target.name)}${target.unit ? ` (${target.unit})` : ""}`;
  $("prediction-description").textContent = target.description || "";
  $("prediction-summary").textContent = summary;
  const legend = p.probabilities
    ? "Bars: probability of each class now; pale boxes: at the start."
    : "Dark bar: the interval now; pale box: at the start; tick: median; dot and whisker: mean ± standard deviation.";
  $("prediction-plot").replaceChildren(plot, el("p", { class: "legend hint", text: legend }));
  $("prediction-change").textContent = change || "Answer questions to narrow the prediction.";
  return summary;
}

async function renderOtherTargets() {
  const others = state.model.schema.targets.filter((t) => t.name !== state.next.target);
  if (!others.length) return;
  const out = await api("GET", sessionPath(`/prediction?seed=${state.seed}`));
  $("other-targets").textContent = others
    .map((t) => {
      const s = out.targets[t.name];
      if (!s) return "";
      if (s.probabilities) return `${label(t.name)}: most likely ${categoryName(t, s.mode)}.`;
      return `${label(t.name)}: mean ${fmt(s.mean)} ± ${fmt(s.std)}${t.unit ? ` ${t.unit}` : ""}.`;
    })
    .join(" ");
}

function displayValue(feature, value) {
  const spec = state.features[feature];
  if (spec?.categories) return categoryName(spec, value);
  return withUnit(typeof value === "number" ? fmt(value, 6) : String(value), spec?.unit);
}

function outsideRange(feature, value) {
  const q = Object.values(state.ranges[feature]?.quantiles || {});
  return typeof value === "number" && q.length >= 2 && (value < Math.min(...q) || value > Math.max(...q));
}

// "unusual given the other answers (1 in 300)", with Keep (the answer is right: stop saying so for this value)
// and Correct (edit it).
function unusualNote(feature, value) {
  const check = state.checks?.[feature];
  const key = `${feature}=${JSON.stringify(value)}`;
  if (!check?.unusual || state.kept.has(key)) return null;
  const odds = check.p <= 0.001 ? "1 in 1,000 or rarer" : `1 in ${Math.round(1 / check.p).toLocaleString("en")}`;
  return el(
    "span",
    { class: "a-unusual", role: "note" },
    `${outsideRange(feature, value) ? ";" : ""} unusual given the other answers (${odds}) `,
    el("button", {
      type: "button",
      class: "link keep",
      text: "Keep",
      "aria-label": `Keep the answer to ${label(feature)}`,
      onclick: () => {
        state.kept.add(key);
        renderAnswers();
      },
    }),
    " ",
    el("button", {
      type: "button",
      class: "link correct",
      text: "Correct",
      "aria-label": `Correct the answer to ${label(feature)}`,
      onclick: () => openEdit(feature),
    }),
  );
}

function renderAnswers() {
  const s = state.session;
  const order = [];
  const count = {};
  for (const o of [...s.observations].sort((a, b) => a.seq - b.seq)) {
    count[o.feature] = (count[o.feature] || 0) + 1;
    if (!order.includes(o.feature)) order.push(o.feature);
  }
  const items = order.filter((f) => f in s.current);
  $("no-answers").hidden = items.length > 0;
  $("answers").replaceChildren(
    ...items.map((f) =>
      el(
        "li",
        { "data-feature": f },
        el("span", { class: "a-name", text: label(f) }),
        " ",
        el("span", { class: "a-value", text: displayValue(f, s.current[f]) }),
        count[f] > 1 ? el("span", { class: "a-note", text: " (corrected)" }) : null,
        outsideRange(f, s.current[f]) ? el("span", { class: "a-warn", text: " outside the plausible range" }) : null,
        unusualNote(f, s.current[f]),
        " ",
        el("button", {
          type: "button",
          class: "link edit",
          text: "Edit",
          "aria-label": `Edit ${label(f)}`,
          onclick: () => openEdit(f),
        }),
        el("button", {
          type: "button",
          class: "link remove",
          text: "Remove",
          "aria-label": `Remove the answer to ${label(f)}`,
          onclick: () => guarded(() => submitAnswer(f, null, { focus: "answers" }), null),
        }),
      ),
    ),
  );
  $("session-info").textContent = `Session ${s.session_id} (model ${s.model} v${s.version}).`;
  $("session").dataset.sessionId = s.session_id;
}

function openEdit(feature) {
  const li = $("answers").querySelector(`li[data-feature="${CSS.escape(feature)}"]`);
  const spec = state.features[feature];
  const cancel = () => {
    renderAnswers();
    $("answers").querySelector(`li[data-feature="${CSS.escape(feature)}"] .edit`)?.focus();
  };
  const form = el(
    "form",
    { id: "edit-form", class: "edit-form", novalidate: true },
    buildInput(spec, "edit", state.session.current[feature]),
    el(
      "div",
      { class: "actions" },
      el("button", { type: "submit", text: "Save" }),
      el("button", { type: "button", text: "Cancel", onclick: cancel }),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const got = readInput(spec, "edit");
    if (got.error) {
      clearFieldErrors();
      setFieldError("edit", got.error);
      focusInput("edit");
      return;
    }
    guarded(() => submitAnswer(feature, got.value, { focus: "answers", keep: true }), "edit");
  });
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape") cancel();
    else submitOnEnter(event, form);
  });
  li.replaceChildren(form);
  focusInput("edit");
}

// Enter on a radio button submits its form, as it does in a text field.
function submitOnEnter(event, form) {
  if (event.key === "Enter" && event.target.type === "radio") {
    event.preventDefault();
    form.requestSubmit();
  }
}

// ------------------------------------------------------------------------------------------------ actions

async function refresh({ focus = "question", keep = false, said = "" } = {}) {
  const answered = Object.keys(state.session.current).length;
  const [next, checks] = await Promise.all([
    api("GET", sessionPath(`/next-features?${nextParams()}`)),
    // each answer checked against the others (docs/plausibility.md); optional: the page works without it
    answered >= 2
      ? api("GET", sessionPath(`/prediction?seed=${state.seed}&plausibility=true`)).catch(() => null)
      : null,
  ]);
  state.next = next;
  state.checks = checks?.plausibility || {};
  state.baseline ??= { prediction: next.prediction, uncertainty: next.uncertainty };
  const current = state.session.current;
  const keepAsking = keep && state.asking && !(state.asking in current) ? state.asking : null;
  const feature = keepAsking || next.ranking[0]?.feature || null;
  if (feature) showQuestion(feature, feature === next.ranking[0]?.feature);
  else renderDone();
  renderStop();
  const summary = renderPrediction();
  renderAnswers();
  await renderOtherTargets();
  document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
  const parts = [said, summary];
  parts.push(feature ? `Next question: ${label(feature)}.` : $("done").textContent);
  if (next.stop.stop) parts.push(`You could stop here: ${next.stop.reason}.`);
  announce(parts.filter(Boolean).join(" "));
  if (focus === "question") feature ? focusInput("q") : $("ask-heading").focus();
  else if (focus === "answers") $("answers-heading").focus();
}

async function submitAnswer(feature, value, options = {}) {
  state.session = await api("POST", sessionPath("/observations"), { observations: { [feature]: value } });
  state.skipped.delete(feature);
  const said =
    value === null
      ? `Removed the answer to ${label(feature)}.`
      : `Saved ${label(feature)}: ${displayValue(feature, value)}.`;
  await refresh({ ...options, said });
}

async function loadModel(name, version) {
  const [detail, imputed] = await Promise.all([
    api("GET", `models/${encodeURIComponent(name)}${version ? `?version=${version}` : ""}`),
    api("POST", `models/${encodeURIComponent(name)}/impute`, {
      rows: [{}],
      quantiles: [0.01, 0.5, 0.99],
      seed: state.seed,
    }).catch(() => null), // the range hint is optional
  ]);
  state.model = detail;
  state.features = Object.fromEntries(detail.schema.features.map((f) => [f.name, f]));
  state.ranges = imputed?.rows?.[0]?.imputed || {};
  renderModelCard(detail);
}

// The model card measured at training (manifest metrics.quality): the figures a clinician needs to judge the
// answers, each beside the classical tool fitted on the same rows.
function renderModelCard(detail) {
  const q = detail.metrics?.quality;
  if (!q) return;
  const where = q.cross_fit
    ? `${q.rows} patients a second model, trained the same way on the others, had not seen`
    : q.held_out
      ? `${q.rows} patients held out of training`
      : `${q.rows} training patients (optimistic: none could be held out)`;
  const knn = q.baselines?.knn || {};
  const hgb = q.baselines?.hgb_nan || {};
  const target = detail.schema.targets[0];
  const items = [];
  if (q.target_rmse !== undefined) {
    const vs = hgb.target_rmse !== undefined ? `; gradient boosting: ${fmt(hgb.target_rmse)}` : "";
    const sd = q.target_std !== undefined ? ` (its spread there: ${fmt(q.target_std)})` : "";
    items.push(`Predicting ${label(target.name)} from half the answers: typical error ${fmt(q.target_rmse)}${sd}${vs}.`);
  }
  if (q.target_accuracy !== undefined) {
    const vs = hgb.target_accuracy !== undefined ? `; gradient boosting: ${Math.round(hgb.target_accuracy * 100)}%` : "";
    items.push(`Predicting ${label(target.name)} from half the answers: right ${Math.round(q.target_accuracy * 100)}% of the time${vs}.`);
  }
  if (q.rmse_xu !== undefined) {
    const vs = knn.rmse_xu !== undefined ? `; nearest neighbours: ${fmt(knn.rmse_xu)}` : "";
    items.push(`Filling in a missing answer: error ${fmt(q.rmse_xu)} standard deviations (1.0 = guessing the average)${vs}.`);
  }
  const cover = q.interval_coverage?.target;
  if (cover) {
    const pct = (x) => `${Math.round(x * 100)}%`;
    items.push(
      q.calibration_applied === false
        ? `Its 90% intervals for ${label(target.name)} held the true value ${pct(cover.raw_cover90)} of the time (as trained: a correction measured on these few patients did not help, so it is not applied).`
        : `Its 90% intervals for ${label(target.name)} held the true value ${pct(cover.calibrated_cover90)} of the time (${pct(cover.raw_cover90)} before calibration).`,
    );
  }
  $("model-card-body").replaceChildren(
    el("p", { class: "hint", text: `Measured when the model was trained, on ${where}.` }),
    el("ul", {}, ...items.map((t) => el("li", { text: t }))),
  );
}

async function start({ carry = false } = {}) {
  carry = carry && state.session !== null; // carries the answers over to the same model version
  const name = carry ? state.session.model : $("model").value;
  if (!name) return;
  const observations = carry ? { ...state.session.current } : {};
  const version = carry ? state.session.version : undefined;
  if (!state.model || state.model.name !== name || (version && state.model.version !== version)) {
    await loadModel(name, version);
  }
  const session = await api("POST", "sessions", { model: name, version, observations });
  if (!carry) {
    state.baseline = null;
    state.skipped.clear();
  }
  state.session = session;
  state.asking = null;
  state.expired = false;
  const box = $("session");
  box.hidden = false;
  box.inert = false;
  box.classList.remove("expired");
  $("start").textContent = "Start a new questionnaire";
  $("apply-settings").hidden = false;
  const n = Object.keys(observations).length;
  await refresh({ said: n ? `New questionnaire started with your ${n} earlier answers.` : "Questionnaire started." });
}

async function loadModels() {
  const models = await api("GET", "models");
  state.models = models.filter((m) => m.active);
  const select = $("model");
  const wanted = new URLSearchParams(location.search).get("model");
  select.replaceChildren(
    ...state.models.map((m) =>
      el("option", { value: m.name, text: `${m.name} (version ${m.version})`, selected: m.name === wanted }),
    ),
  );
  $("start").disabled = state.models.length === 0;
  describeModel();
}

function describeModel() {
  const m = state.models.find((x) => x.name === $("model").value);
  const s = m?.summary || {};
  $("model-info").textContent = m
    ? `Predicts ${(s.targets || []).map(label).join(", ") || "its target"} from ${s.n_features ?? "its"} features.`
    : "No model is registered: register one (hhvaem register) and reload this page.";
}

function init() {
  const q = new URLSearchParams(location.search);
  for (const [param, id] of Object.entries(SETTING_FIELDS)) if (q.has(param)) $(id).value = q.get(param);
  if (q.has("seed") && /^\d+$/.test(q.get("seed"))) state.seed = Number(q.get("seed"));
  if (q.has("costs")) $("settings").open = true;

  $("setup").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(() => start());
  });
  $("model").addEventListener("change", describeModel);
  $("apply-settings").addEventListener("click", () =>
    guarded(() => refresh({ keep: true, focus: null, said: "Settings applied." })),
  );
  $("question").addEventListener("submit", (event) => {
    event.preventDefault();
    const feature = state.asking;
    const got = readInput(state.features[feature], "q");
    if (got.error) {
      clearFieldErrors();
      setFieldError("q", got.error);
      focusInput("q");
      return;
    }
    guarded(() => submitAnswer(feature, got.value), "q");
  });
  $("question").addEventListener("keydown", (event) => submitOnEnter(event, $("question")));
  $("skip").addEventListener("click", () => {
    state.skipped.add(state.asking);
    guarded(() => refresh({ said: `Skipped ${label(state.asking)}.` }));
  });
  $("other-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const feature = $("other").value;
    if (!feature) return;
    clearAlert();
    showQuestion(feature, feature === state.next?.ranking[0]?.feature);
    if (state.next) renderStop();
    focusInput("q");
  });
  $("unskip").addEventListener("click", () => {
    state.skipped.clear();
    guarded(() => refresh({ said: "Skipped questions are back in the ranking." }));
  });
  $("restart").addEventListener("click", () => guarded(() => start()));
  guarded(loadModels);
}

init();
