// The input sequence of the regenerate view: chips that can be removed, a catalogue
// search (by id or title), a paste box (ids or titles) and the bundle's sample users.

import { call, describe } from "./api.js";
import { chip, clear, h, itemText, showNotice } from "./dom.js";

const SEARCH_LIMIT = 12;
const SEARCH_DELAY_MS = 200;
const MAX_PASTE_TERMS = 1000;

/** {id: {id, domain, title}} for ids, looked up in one call (unknown ids: domain null). */
export async function describeIds(model, ids) {
  const unique = [...new Set(ids)];
  const known = {};
  for (let start = 0; start < unique.length; start += MAX_PASTE_TERMS) {
    const terms = unique.slice(start, start + MAX_PASTE_TERMS);
    const { matches } = await call(`models/${encodeURIComponent(model.name)}/items/lookup`, { method: "POST", json: { terms } });
    terms.forEach((id, k) => {
      const m = matches[k];
      known[id] = m && m.id === id ? m : { id, domain: null, title: null };
    });
  }
  return known;
}

export class SequenceEditor {
  constructor(ctx, ids, onChange) {
    this.ctx = ctx;
    this.model = ctx.model;
    this.items = ids.map((id) => ({ id, domain: undefined, title: null }));
    this.onChange = onChange;
    this.samples = null;
    this.searchTimer = null;
    this.chips = h("ol", { class: "seq", "aria-label": "Input sequence" });
    this.count = h("p", { class: "hint", "aria-live": "polite" });
    this.results = h("ul", { class: "search-results", "aria-label": "Matching items" });
    this.element = h("div", { class: "sequence-editor" }, this.chips, this.count, this.controls());
  }

  ids() {
    return this.items.map((i) => i.id);
  }

  /** Look up the titles and domains of the current items, then draw them. */
  async resolve() {
    this.draw();
    if (!this.items.length) return;
    try {
      const known = await describeIds(this.model, this.ids());
      this.items = this.items.map((i) => known[i.id]);
    } catch (problem) {
      if (problem.code === "unauthorized") return this.ctx.onUnauthorized(problem);
      showNotice(problem, { title: "Cannot look up the items" });
    }
    this.draw();
  }

  setItems(items) {
    this.items = items;
    this.draw();
    this.onChange(this.ids());
  }

  draw() {
    clear(this.chips);
    this.items.forEach((item, position) => {
      const label = item.title || item.id;
      const remove = h(
        "button",
        { type: "button", class: "small chip-remove", "aria-label": `Remove ${label} (position ${position})`, onclick: () => this.remove(position) },
        "✕ remove",
      );
      this.chips.append(chip(this.model, { ...item, position, extra: [remove], cls: "editable" }));
    });
    const unknown = this.items.filter((i) => i.domain === null).length;
    this.count.textContent = this.items.length
      ? `${this.items.length} item${this.items.length === 1 ? "" : "s"}${unknown ? `, ${unknown} not in the catalogue` : ""}.`
      : "No items yet: search the catalogue, paste a list, or pick a sample user.";
  }

  remove(position) {
    const focusNext = this.chips.querySelectorAll(".chip-remove")[position + 1] ? position : position - 1;
    this.setItems(this.items.filter((_, k) => k !== position));
    const buttons = this.chips.querySelectorAll(".chip-remove");
    (buttons[focusNext] || this.searchInput).focus();
  }

  controls() {
    return h("div", { class: "grid-2" }, this.searchControl(), this.pasteControl(), this.sampleControl());
  }

  searchControl() {
    this.searchInput = h("input", {
      id: "item-search",
      type: "search",
      autocomplete: "off",
      "aria-describedby": "item-search-hint",
      oninput: () => this.scheduleSearch(),
      onkeydown: (event) => {
        if (event.key === "Enter") {
          event.preventDefault();
          const first = this.results.querySelector("button");
          if (first) first.click();
        }
      },
    });
    return h(
      "div",
      { class: "field" },
      h("label", { for: "item-search" }, "Add an item: search by id or title"),
      this.searchInput,
      h("p", { id: "item-search-hint", class: "hint" }, "Enter adds the first match; Tab reaches the others."),
      this.results,
    );
  }

  scheduleSearch() {
    clearTimeout(this.searchTimer);
    this.searchTimer = setTimeout(() => this.search(this.searchInput.value), SEARCH_DELAY_MS);
  }

  async search(query) {
    if (!query.trim()) {
      clear(this.results);
      return;
    }
    try {
      const found = await call(`models/${encodeURIComponent(this.model.name)}/items`, { params: { q: query, limit: SEARCH_LIMIT } });
      if (this.searchInput.value !== query) return; // a newer search is under way
      clear(this.results);
      for (const item of found.items) {
        const add = () => {
          this.setItems([...this.items, item]);
          this.searchInput.focus();
        };
        this.results.append(h("li", {}, h("button", { type: "button", onclick: add }, h("span", {}, "＋"), h("span", {}, itemText(item.id, item.title)), h("span", { class: "hint" }, item.domain))));
      }
      if (!found.items.length) this.results.append(h("li", { class: "hint" }, `Nothing matches “${query}”.`));
    } catch (problem) {
      clear(this.results).append(h("li", { class: "hint" }, describe(problem).text));
    }
  }

  pasteControl() {
    const area = h("textarea", { id: "paste", "aria-describedby": "paste-hint", spellcheck: "false" });
    const add = async () => {
      const added = await this.addPasted(area.value);
      if (added !== null) area.value = "";
    };
    return h(
      "div",
      { class: "field" },
      h("label", { for: "paste" }, "Paste item ids or titles"),
      area,
      h("p", { id: "paste-hint", class: "hint" }, "One per line, or ids separated by commas or spaces."),
      h("div", { class: "actions" }, h("button", { type: "button", onclick: add }, "Add pasted items"), h("button", { type: "button", onclick: () => this.setItems([]) }, "Clear the sequence")),
    );
  }

  /** Resolve pasted text: whole lines first (an id or a title), then their comma or space separated parts. */
  async addPasted(text) {
    const lines = text.split(/\r?\n/).map((l) => l.trim()).filter(Boolean).slice(0, MAX_PASTE_TERMS);
    if (!lines.length) {
      showNotice("Nothing to add: paste item ids or titles first.", { warn: true });
      return null;
    }
    try {
      const path = `models/${encodeURIComponent(this.model.name)}/items/lookup`;
      const whole = (await call(path, { method: "POST", json: { terms: lines } })).matches;
      const parts = lines.flatMap((line, k) => (whole[k] ? [] : line.split(/[,;\s]+/).filter(Boolean)));
      const split = parts.length ? (await call(path, { method: "POST", json: { terms: parts.slice(0, MAX_PASTE_TERMS) } })).matches : [];
      const found = [];
      const missing = [];
      let next = 0; // index into parts / split
      lines.forEach((line, k) => {
        if (whole[k]) {
          found.push(whole[k]);
          return;
        }
        for (const piece of line.split(/[,;\s]+/).filter(Boolean)) {
          if (split[next]) found.push(split[next]);
          else missing.push(piece);
          next += 1;
        }
      });
      this.setItems([...this.items, ...found]);
      if (missing.length) showNotice(`Not in the catalogue, so not added: ${missing.slice(0, 20).map((m) => `“${m}”`).join(", ")}${missing.length > 20 ? " …" : ""}.`, { warn: true, title: "Some pasted items were not found" });
      return found.length;
    } catch (problem) {
      if (problem.code === "unauthorized") return this.ctx.onUnauthorized(problem);
      showNotice(problem, { title: "Cannot look up the pasted items" });
      return null;
    }
  }

  sampleControl() {
    this.sampleSelect = h("select", { id: "sample-user", disabled: true }, h("option", { value: "" }, "loading…"));
    const use = () => {
      const sample = this.samples && this.samples[Number(this.sampleSelect.value)];
      if (!sample) return;
      this.items = sample.items.map((id) => ({ id, domain: undefined, title: null }));
      this.onChange(this.ids(), { sample: true });
      this.resolve();
    };
    this.loadSamples();
    return h(
      "div",
      { class: "field" },
      h("label", { for: "sample-user" }, "Or start from a sample user of the model"),
      h("div", { class: "actions" }, this.sampleSelect, h("button", { type: "button", onclick: use }, "Use this user")),
    );
  }

  async loadSamples() {
    try {
      const { users } = await call(`models/${encodeURIComponent(this.model.name)}/samples`);
      this.samples = users;
      clear(this.sampleSelect);
      if (!users.length) this.sampleSelect.append(h("option", { value: "" }, "this bundle keeps no sample users"));
      users.forEach((u, k) => this.sampleSelect.append(h("option", { value: String(k) }, `user ${u.user_id} (${u.items.length} items)`)));
      this.sampleSelect.disabled = !users.length;
    } catch (problem) {
      clear(this.sampleSelect).append(h("option", { value: "" }, "sample users unavailable"));
      if (problem.code === "unauthorized") this.ctx.onUnauthorized(problem);
    }
  }
}
