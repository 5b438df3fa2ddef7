// The model view: domains, validation metrics of the mixed model and the experts, the
// bundle's checksum and training record, and how often each action is taken for the
// bundle's sample users.

import { call } from "./api.js";
import { clear, domainColor, formatNumber, h, section, showNotice } from "./dom.js";
import { pickTarget } from "./regenerate.js";
import { saveState } from "./state.js";

const METRICS = ["HR@10", "NDCG@10", "MRR@10", "n"];
const BINS = 10;
const ACTIONS = [
  ["keep", "✓ kept"],
  ["replace", "⇄ replaced"],
  ["discard", "✕ discarded"],
];
const TRAINING_KEYS = [
  ["epochs_run", "epochs run (mixed model)"],
  ["best_epoch", "best epoch (validation NDCG@10)"],
  ["patience", "early-stopping patience"],
  ["adapt_epochs", "adaptation epochs per expert"],
  ["lr", "learning rate"],
  ["batch_size", "batch size"],
  ["seed", "seed"],
  ["holdout", "held-out positions per user"],
  ["device", "device"],
  ["world_size", "ranks (torchrun)"],
];

function metric(value) {
  return typeof value === "number" ? value.toFixed(4) : "–";
}

function kvTable(rows) {
  return h("table", { class: "kv" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v)))));
}

function domainsTable(detail) {
  const rows = detail.domains.map((d) =>
    h("tr", {}, h("td", {}, h("span", { class: "swatch", vars: { "--dom": domainColor(detail, d.name) } }), d.name), h("td", { class: "num" }, formatNumber(d.n_items))),
  );
  return h(
    "table",
    {},
    h("caption", {}, `${detail.n_items.toLocaleString("en")} items in ${detail.domains.length} domains`),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "domain"), h("th", { scope: "col", class: "num" }, "items"))),
    h("tbody", {}, rows),
  );
}

function metricsTable(metrics) {
  const rows = [];
  if (metrics.mixed) rows.push(["all items", "mixed", metrics.mixed]);
  for (const [domain, views] of Object.entries(metrics.domains || {})) {
    for (const [who, values] of Object.entries(views || {})) rows.push([domain, who, values]);
  }
  if (!rows.length) return h("p", { class: "hint" }, "This bundle records no validation metrics.");
  return h(
    "table",
    {},
    h("caption", {}, `Validation metrics (${metrics.split || "valid"} split): the mixed model and each domain's expert`),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "scored on"), h("th", { scope: "col" }, "model"), METRICS.map((m) => h("th", { scope: "col", class: "num" }, m)))),
    h("tbody", {}, rows.map(([where, who, values]) => h("tr", {}, h("td", {}, where), h("td", {}, who), METRICS.map((m) => h("td", { class: "num" }, m === "n" ? formatNumber(values[m]) : metric(values[m])))))),
  );
}

function bundleTable(detail) {
  return kvTable([
    ["bundle checksum (sha256 of manifest.json)", h("code", { class: "mono", "data-field": "bundle_sha256" }, detail.bundle_sha256)],
    ["data fingerprint", h("code", { class: "mono" }, detail.data_fingerprint || "–")],
    ["format version", String(detail.format_version)],
    ["created", detail.created_at || "–"],
    ["items with a title", `${formatNumber(detail.titled_items)} of ${formatNumber(detail.n_items)}`],
    ["sample users", formatNumber(detail.sample_users)],
    ["hyper-parameters", Object.entries(detail.hyper_parameters).map(([k, v]) => `${k} ${v}`).join(", ")],
  ]);
}

function trainingTable(training) {
  const rows = TRAINING_KEYS.filter(([k]) => training[k] !== undefined && training[k] !== null).map(([k, label]) => [label, String(training[k])]);
  const timings = training.timings_s || {};
  if (Object.keys(timings).length) rows.push(["time (s)", Object.entries(timings).map(([k, v]) => `${k} ${v}`).join(", ")]);
  const history = training.history || [];
  const table = kvTable(rows);
  if (!history.length) return table;
  const details = h(
    "details",
    {},
    h("summary", {}, `Epoch history (${history.length} epochs)`),
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, ["epoch", "loss", "NDCG@10"].map((c) => h("th", { scope: "col", class: "num" }, c)))),
      h("tbody", {}, history.map((e) => h("tr", {}, h("td", { class: "num" }, e.epoch), h("td", { class: "num" }, formatNumber(e.loss)), h("td", { class: "num" }, formatNumber(e["NDCG@10"]))))),
    ),
  );
  return h("div", {}, table, details);
}

/** Per action, how many users fall in each tenth of "share of their items". */
export function histograms(results) {
  const counts = Object.fromEntries(ACTIONS.map(([a]) => [a, new Array(BINS).fill(0)]));
  const means = Object.fromEntries(ACTIONS.map(([a]) => [a, 0]));
  for (const r of results) {
    const n = r.decisions.length;
    for (const [action] of ACTIONS) {
      const share = r.decisions.filter((d) => d.action === action).length / n;
      counts[action][Math.min(BINS - 1, Math.floor(share * BINS))] += 1;
      means[action] += share / results.length;
    }
  }
  return { counts, means };
}

function histogram(action, label, counts, mean, users) {
  const top = Math.max(...counts, 1);
  const bars = counts.map((c, k) =>
    h("div", { class: "bar", style: { height: `${(100 * c) / top}%` }, title: `${c} users with ${k * 10}–${k * 10 + 10}% ${action}` }, h("span", { "aria-hidden": "true" }, c || "")),
  );
  const table = h(
    "table",
    { class: "visually-hidden" },
    h("caption", {}, `Users by share of items ${label}`),
    h("tbody", {}, counts.map((c, k) => h("tr", {}, h("th", { scope: "row" }, `${k * 10}–${k * 10 + 10}%`), h("td", {}, `${c} users`)))),
  );
  return h(
    "figure",
    { class: `hist hist-${action}`, "data-action": action },
    h("figcaption", {}, `${label}: mean ${(100 * mean).toFixed(1)}% of a user's items`),
    h("div", { class: "bars", "aria-hidden": "true" }, bars),
    h("div", { class: "bar-axis", "aria-hidden": "true" }, h("span", {}, "0%"), h("span", {}, "share of the user's items"), h("span", {}, "100%")),
    table,
    h("p", { class: "visually-hidden" }, `${users} users in all`),
  );
}

async function drawRates(ctx, box, target) {
  clear(box).append(h("p", { class: "hint" }, `Regenerating the sample users into ${target}…`));
  box.setAttribute("aria-busy", "true");
  try {
    const { users } = await call(`models/${encodeURIComponent(ctx.model.name)}/samples`);
    if (!users.length) {
      clear(box).append(h("p", { class: "hint" }, "This bundle keeps no sample users, so there is nothing to count."));
      return;
    }
    const body = { model: ctx.model.name, target_domain: target, sequences: users.map((u) => ({ user_id: u.user_id, items: u.items })) };
    const answer = await call("regenerate", { method: "POST", json: body });
    const { counts, means } = histograms(answer.results);
    const totals = answer.stats;
    clear(box).append(
      h("p", {}, `${users.length} sample users, ${(totals.kept + totals.replaced + totals.discarded).toLocaleString("en")} items: ${formatNumber(totals.kept)} kept, ${formatNumber(totals.replaced)} replaced, ${formatNumber(totals.discarded)} discarded. Each chart counts users by the share of their items that got the action.`),
      h("div", { class: "hists" }, ACTIONS.map(([a, label]) => histogram(a, label, counts[a], means[a], users.length))),
    );
  } catch (problem) {
    if (problem.code === "unauthorized") return ctx.onUnauthorized(problem);
    clear(box).append(h("p", { class: "hint" }, "No histogram: see the message above."));
    showNotice(problem, { retry: () => drawRates(ctx, box, target), title: "Cannot count the decisions" });
  } finally {
    box.removeAttribute("aria-busy");
  }
  return null;
}

function rateSection(ctx, state) {
  const box = h("div", { id: "rates" });
  const select = h(
    "select",
    {
      id: "rate-target",
      onchange: (e) => {
        saveState({ ...state, target: e.target.value });
        drawRates(ctx, box, e.target.value);
      },
    },
    ctx.model.domains.map((d) => h("option", { value: d.name, selected: d.name === state.target }, d.name)),
  );
  const controls = h("div", { class: "row-form" }, h("div", { class: "field" }, h("label", { for: "rate-target" }, "Target domain"), select));
  return { element: section("Decision rates of the sample users", controls, box), draw: () => drawRates(ctx, box, state.target) };
}

export async function renderModel(ctx) {
  const state = { ...ctx.state, target: pickTarget(ctx.model, ctx.state.target) };
  saveState(state);
  const picker = h(
    "select",
    { id: "model-pick", onchange: (e) => ctx.go({ model: e.target.value, target: "" }) },
    ctx.models.map((m) => h("option", { value: m.name, selected: m.name === ctx.model.name }, m.name)),
  );
  ctx.main.append(h("div", { class: "card row-form" }, h("div", { class: "field" }, h("label", { for: "model-pick" }, "Model"), picker)));
  let detail;
  try {
    detail = await call(`models/${encodeURIComponent(ctx.model.name)}`);
  } catch (problem) {
    if (problem.code === "unauthorized") return ctx.onUnauthorized(problem);
    showNotice(problem, { retry: () => ctx.go({}, { push: false }), title: "Cannot load the model" });
    return null;
  }
  const rates = rateSection(ctx, state);
  ctx.main.append(
    h("div", { class: "grid-2" }, section(`Model ${detail.name}: domains`, domainsTable(detail)), section("Bundle", bundleTable(detail))),
    section("Validation metrics", metricsTable(detail.metrics || {})),
    rates.element,
    section("Training record", trainingTable(detail.training || {})),
  );
  await rates.draw();
  return null;
}
