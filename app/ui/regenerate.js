// The regenerate view: a mixed sequence in, one decision per item out (keep / replace /
// discard, with the replacement and the reason), and on demand the candidates behind it.
// Opening /ui?model=..&target=..&items=.. renders the decisions without any click.

import { call } from "./api.js";
import { announce, chip, clear, domainTag, h, hideNotice, itemText, legend, showNotice } from "./dom.js";
import { SequenceEditor } from "./sequence.js";
import { saveState } from "./state.js";

const EXPLAIN_TOP_K = 5;
const ICONS = { keep: "✓", replace: "⇄", discard: "✕" };

export function pickTarget(model, target) {
  return model.domains.some((d) => d.name === target) ? target : model.domains[0].name;
}

function reasonText(decision, target) {
  switch (decision.reason) {
    case "global_not_target":
      return `the best item by the global score is not a ${target} item`;
    case "no_context":
      return "first position: there is no history to decide from";
    case "duplicate":
      return `it would repeat the previous regenerated item${decision.replacement ? ` (${decision.replacement})` : ""}`;
    case "repeat":
      return `its replacement${decision.replacement ? ` ${decision.replacement}` : ""} is already in the regenerated sequence`;
    case "unknown_item":
      return "not in the model's catalogue";
    default:
      if (decision.action === "keep") return `already a ${target} item`;
      if (decision.action === "replace") return `the global score favours a ${target} item; the local score picked this one`;
      return decision.reason || "";
  }
}

function explainable(decision) {
  return decision.action !== "keep" && decision.reason !== "no_context" && decision.reason !== "unknown_item";
}

class RegenerateView {
  constructor(ctx) {
    this.ctx = ctx;
    this.model = ctx.model;
    this.state = { ...ctx.state, target: pickTarget(ctx.model, ctx.state.target) };
    saveState(this.state);
    this.known = {}; // item id -> {domain, title}
    this.result = null;
    this.explained = false;
    this.runs = 0;
    this.editor = new SequenceEditor(ctx, this.state.items, (ids, how = {}) => this.itemsChanged(ids, how));
    this.output = h("section", { class: "card", "aria-labelledby": "result-title", "aria-live": "polite" });
  }

  itemsChanged(ids, { sample = false } = {}) {
    this.state = { ...this.state, items: ids, open: [] };
    saveState(this.state);
    if (sample) this.run();
  }

  build() {
    const modelSelect = h(
      "select",
      { id: "model", onchange: (e) => this.ctx.go({ model: e.target.value, target: "", open: [] }) },
      this.ctx.models.map((m) => h("option", { value: m.name, selected: m.name === this.model.name }, m.name)),
    );
    this.targetSelect = h(
      "select",
      { id: "target", onchange: (e) => this.targetChanged(e.target.value) },
      this.model.domains.map((d) => h("option", { value: d.name, selected: d.name === this.state.target }, `${d.name} (${d.n_items} items)`)),
    );
    const form = h(
      "form",
      { onsubmit: (e) => this.submit(e), "aria-label": "Regenerate" },
      h("div", { class: "row-form" }, field("model", "Model", modelSelect), field("target", "Target domain", this.targetSelect)),
      h("h3", {}, "Mixed input sequence"),
      legend(this.model),
      this.editor.element,
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "regenerate-button" }, "Regenerate"), h("button", { type: "button", onclick: () => this.copyLink() }, "Copy link to this view")),
    );
    this.ctx.main.append(h("section", { class: "card", "aria-labelledby": "input-title" }, h("h2", { id: "input-title" }, "Regenerate a sequence"), form), this.output);
  }

  targetChanged(target) {
    this.state = { ...this.state, target, open: [] };
    saveState(this.state);
    if (this.result) this.run();
  }

  submit(event) {
    event.preventDefault();
    this.state = { ...this.state, items: this.editor.ids(), open: [] };
    saveState(this.state, { push: true });
    this.run();
  }

  async copyLink() {
    try {
      await navigator.clipboard.writeText(window.location.href);
      announce("Link copied");
      showNotice("The link to this view is copied: whoever opens it sees these decisions.", { warn: true, title: "Link copied" });
    } catch {
      showNotice(`Copy this address: ${window.location.href}`, { warn: true, title: "Link to this view" });
    }
  }

  /** Regenerate the current items (with explanations when any is open). */
  async run({ explain = this.state.open.length > 0, keep = false } = {}) {
    const items = this.editor.ids();
    if (!items.length) {
      clear(this.output).append(h("h2", { id: "result-title" }, "Result"), h("p", { class: "hint" }, "Nothing to regenerate yet."));
      showNotice("Add at least one item first: search the catalogue, paste ids or titles, or pick a sample user.", { warn: true, title: "The sequence is empty" });
      return;
    }
    hideNotice();
    const run = ++this.runs;
    this.output.setAttribute("aria-busy", "true");
    if (!keep) {
      // a new result replaces the old one; fetching explanations keeps the decisions on screen
      clear(this.output).append(h("h2", { id: "result-title" }, "Result"), h("p", { class: "hint" }, `Regenerating ${items.length} items into ${this.state.target}…`));
    }
    try {
      const answer = await call("regenerate", { method: "POST", json: this.body(items, explain) });
      if (run !== this.runs) return;
      this.result = answer.results[0];
      this.explained = explain;
      await this.learnDomains(this.result);
      this.draw();
      announce(`Regenerated: ${this.result.stats.kept} kept, ${this.result.stats.replaced} replaced, ${this.result.stats.discarded} discarded.`);
    } catch (problem) {
      if (run !== this.runs) return;
      this.failed(problem);
    } finally {
      this.output.removeAttribute("aria-busy");
    }
  }

  body(items, explain) {
    const options = { include_titles: true, explain, explain_top_k: EXPLAIN_TOP_K };
    return { model: this.model.name, target_domain: this.state.target, sequences: [{ user_id: "ui", items }], options };
  }

  failed(problem) {
    if (problem.code === "unauthorized") {
      this.ctx.onUnauthorized(problem);
      return;
    }
    clear(this.output).append(h("h2", { id: "result-title" }, "Result"), h("p", { class: "hint" }, "No result: see the message above."));
    showNotice(problem, { retry: () => this.run(), title: "Cannot regenerate" });
    if (problem.code === "unknown_item") this.editor.resolve();
  }

  /** Domains and titles of every item the result names (candidates need a lookup). */
  async learnDomains(result) {
    const titles = result.titles || {};
    for (const item of this.editor.items) if (item.domain !== undefined) this.known[item.id] = item;
    for (const d of result.decisions) {
      this.known[d.item] = { id: d.item, domain: d.domain, title: titles[d.item] || null };
      if (d.replacement) this.known[d.replacement] = { id: d.replacement, domain: result.target_domain, title: titles[d.replacement] || null };
    }
    const candidates = result.decisions.flatMap((d) => (d.explain ? [...d.explain.global, ...d.explain.local].map((c) => c[0]) : []));
    const missing = [...new Set(candidates)].filter((id) => !this.known[id]);
    if (!missing.length) return;
    const { matches } = await call(`models/${encodeURIComponent(this.model.name)}/items/lookup`, { method: "POST", json: { terms: missing } });
    missing.forEach((id, k) => {
      this.known[id] = matches[k] && matches[k].id === id ? matches[k] : { id, domain: null, title: titles[id] || null };
    });
  }

  draw() {
    const r = this.result;
    const target = r.target_domain;
    const titles = r.titles || {};
    const stats = h(
      "p",
      { class: "stats" },
      h("span", { class: "stat-keep" }, `${ICONS.keep} kept ${r.stats.kept}`),
      h("span", { class: "stat-replace" }, `${ICONS.replace} replaced ${r.stats.replaced}`),
      h("span", { class: "stat-discard" }, `${ICONS.discard} discarded ${r.stats.discarded}`),
    );
    const mixed = h("ol", { class: "seq", "aria-label": "Mixed sequence, coloured by domain" }, r.decisions.map((d) => chip(this.model, { id: d.item, domain: d.domain, title: titles[d.item], position: d.position })));
    const regenerated = r.sequence.length
      ? h("ol", { class: "seq", "aria-label": `Regenerated ${target} sequence` }, r.sequence.map((id) => chip(this.model, { id, domain: target, title: titles[id] })))
      : h("p", { class: "hint" }, "Empty: every item was discarded.");
    clear(this.output).append(
      h("h2", { id: "result-title" }, `Result: ${r.decisions.length} items into ${target}`),
      stats,
      h("h3", {}, "Mixed sequence"),
      mixed,
      h("h3", {}, `Regenerated ${target} sequence (${r.sequence.length} items)`),
      regenerated,
      h("h3", {}, "Decisions"),
      h("ol", { class: "decisions", "aria-label": "One decision per input item" }, r.decisions.map((d) => this.decision(d, target, titles))),
    );
  }

  decision(d, target, titles) {
    const explainId = `explain-${d.position}`;
    const what = h("div", { class: "what" }, h("span", { class: "from" }, itemText(d.item, titles[d.item])), domainTag(this.model, d.domain));
    if (d.replacement && d.action === "replace") {
      what.append(h("span", { "aria-hidden": "true" }, "→"), h("span", { class: "visually-hidden" }, "replaced by"), h("span", { class: "to" }, itemText(d.replacement, titles[d.replacement])), domainTag(this.model, target));
    }
    what.append(h("span", { class: "reason" }, reasonText(d, target)));
    const li = h(
      "li",
      { class: "decision", id: `decision-${d.position}`, "data-action": d.action, "data-position": d.position },
      h("span", { class: "pos" }, `#${d.position}`),
      h("span", { class: `action action-${d.action}` }, `${ICONS[d.action]} ${d.action}`),
      what,
    );
    if (!explainable(d)) return li;
    const open = this.state.open.includes(d.position);
    const panel = h("div", { id: explainId, class: "explain", hidden: !open });
    const toggle = h("button", { type: "button", class: "small toggle", "aria-expanded": String(open), "aria-controls": explainId, onclick: () => this.toggle(d.position) }, open ? "Hide why" : "Why?");
    if (open) panel.append(this.explanation(d, target));
    li.append(toggle, panel);
    return li;
  }

  async toggle(position) {
    const open = this.state.open.includes(position) ? this.state.open.filter((p) => p !== position) : [...this.state.open, position].sort((a, b) => a - b);
    this.state = { ...this.state, open };
    saveState(this.state);
    if (open.includes(position) && !this.explained) await this.run({ explain: true, keep: true });
    else this.draw();
    const button = document.querySelector(`#decision-${position} .toggle`);
    if (button) button.focus();
  }

  explanation(d, target) {
    if (!d.explain) return h("p", { class: "hint" }, "No candidates were scored for this position.");
    const top = d.explain.global[0];
    const topDomain = top && this.known[top[0]] ? this.known[top[0]].domain : null;
    const verdict = topDomain === target
      ? `The best global candidate is a ${target} item, so the item is replaced by the best local candidate.`
      : `The best global candidate is a ${topDomain || "non-target"} item, not a ${target} item, so the item is discarded.`;
    return h(
      "div",
      {},
      h("p", {}, verdict),
      h("div", { class: "explain-tables" }, this.candidates("Global score g, whole catalogue", d.explain.global), this.candidates(`Local score l, ${target} items`, d.explain.local)),
    );
  }

  candidates(caption, pairs) {
    if (!pairs.length) return h("p", { class: "hint" }, `${caption}: not computed for this decision.`);
    const rows = pairs.map(([id, score], k) => {
      const info = this.known[id] || {};
      return h("tr", {}, h("td", { class: "num" }, k + 1), h("td", {}, itemText(id, info.title)), h("td", {}, domainTag(this.model, info.domain)), h("td", { class: "num" }, score.toFixed(3)));
    });
    return h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, h("th", { scope: "col", class: "num" }, "rank"), h("th", { scope: "col" }, "item"), h("th", { scope: "col" }, "domain"), h("th", { scope: "col", class: "num" }, "score"))),
      h("tbody", {}, rows),
    );
  }
}

function field(id, label, control) {
  return h("div", { class: "field" }, h("label", { for: id }, label), control);
}

export async function renderRegenerate(ctx) {
  const view = new RegenerateView(ctx);
  view.build();
  await view.editor.resolve();
  if (view.state.items.length) await view.run();
  else clear(view.output).append(h("h2", { id: "result-title" }, "Result"), h("p", { class: "hint" }, "Add items above and press Regenerate; the decisions appear here."));
  return null;
}
