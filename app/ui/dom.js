// Building the page: elements from plain values (text is always text, never parsed as
// HTML), the message areas, and how items and domains look.

import { describe } from "./api.js";

/** h("button", {class: "x", onclick: f, "aria-label": "..."}, "text", child, ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (name === "vars") for (const [k, v] of Object.entries(value)) el.style.setProperty(k, v);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** Tell screen readers what just happened (polite). */
export function announce(text) {
  const status = document.getElementById("status");
  status.textContent = "";
  setTimeout(() => {
    status.textContent = text;
  }, 50);
}

/** Show an error (an ApiProblem or text) above the view; `retry` adds a Try again button. */
export function showNotice(problem, { retry, warn = false, title } = {}) {
  const box = clear(document.getElementById("notice"));
  const text = typeof problem === "string" ? problem : describe(problem).text;
  box.className = warn ? "notice warn" : "notice";
  box.append(h("strong", {}, title || (warn ? "Note" : "Something went wrong")), h("span", {}, text));
  const actions = h("div", { class: "notice-actions" });
  if (retry) actions.append(h("button", { type: "button", onclick: () => retry() }, "Try again"));
  actions.append(h("button", { type: "button", onclick: hideNotice }, "Dismiss"));
  box.append(actions);
  box.hidden = false;
  return box;
}

export function hideNotice() {
  const box = document.getElementById("notice");
  clear(box);
  box.hidden = true;
}

// Okabe-Ito's colour-blind-safe colours, then more of Tol's; a domain is also always
// named in text next to its colour.
const PALETTE = [
  "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999",
  "#882255", "#44AA99", "#117733", "#332288", "#AA4499", "#DDCC77", "#88CCEE", "#661100",
];

export function domainColor(model, domain) {
  const k = model ? model.domains.findIndex((d) => d.name === domain) : -1;
  return k >= 0 ? PALETTE[k % PALETTE.length] : "#8c959f";
}

export function domainTag(model, domain) {
  if (!domain) return h("span", { class: "dom-tag", vars: { "--dom": "#cf222e" } }, "⚠ unknown item");
  return h("span", { class: "dom-tag", vars: { "--dom": domainColor(model, domain) } }, domain);
}

export function legend(model) {
  return h(
    "ul",
    { class: "legend", "aria-label": "Domain colours" },
    model.domains.map((d) =>
      h("li", {}, h("span", { class: "swatch", vars: { "--dom": domainColor(model, d.name) } }), d.name),
    ),
  );
}

/** One item as a chip: its title (or id), then id and domain in words. */
export function chip(model, { id, domain, title, position, extra = [], cls = "" }) {
  const unknown = domain === null; // undefined: not looked up yet
  const label = title || id;
  const where = unknown ? "⚠ unknown" : domain || "…";
  const meta = [position !== undefined ? `#${position}` : null, title ? `id ${id}` : null, where];
  return h(
    "li",
    {
      class: `chip ${unknown ? "unknown" : ""} ${cls}`.trim(),
      vars: { "--dom": domainColor(model, domain) },
      title: `${label} (id ${id}, ${unknown ? "not in the catalogue" : `domain ${domain || "not looked up yet"}`})`,
    },
    h("span", { class: "chip-title" }, label),
    h("span", { class: "chip-meta" }, meta.filter(Boolean).join(" · ")),
    extra,
  );
}

/** "Title (id 50)" or "50" */
export function itemText(id, title) {
  return title ? `${title} (id ${id})` : id;
}

export function formatNumber(value, digits = 4) {
  if (typeof value !== "number" || !Number.isFinite(value)) return value === null || value === undefined ? "–" : String(value);
  return Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(digits);
}

export function section(title, ...children) {
  const id = `h-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, title), children);
}
