// The page's whole state lives in its URL, so any view can be shared:
//   /ui?view=regenerate&model=ml100k&target=drama&items=50,181,258&open=2
//   /ui?view=model&model=ml100k&target=drama        /ui?view=jobs&model=ml100k
// Item ids are joined with commas; an id holding "," or "%" has those written %2C / %25.

export const VIEWS = ["regenerate", "model", "jobs"];

export function encodeItems(items) {
  return items.map((i) => String(i).replace(/%/g, "%25").replace(/,/g, "%2C")).join(",");
}

export function decodeItems(text) {
  if (!text) return [];
  return text
    .split(",")
    .map((i) => i.replace(/%2C/gi, ",").replace(/%25/g, "%").trim())
    .filter((i) => i !== "");
}

export function readState(search = window.location.search) {
  const q = new URLSearchParams(search);
  const view = VIEWS.includes(q.get("view")) ? q.get("view") : "regenerate";
  const open = (q.get("open") || "")
    .split(",")
    .map((p) => Number.parseInt(p, 10))
    .filter((p) => Number.isInteger(p) && p >= 0);
  return {
    view,
    model: q.get("model") || "",
    target: q.get("target") || "",
    items: decodeItems(q.get("items")),
    open: [...new Set(open)].sort((a, b) => a - b),
  };
}

export function stateUrl(state) {
  const q = new URLSearchParams();
  if (state.view && state.view !== "regenerate") q.set("view", state.view);
  if (state.model) q.set("model", state.model);
  if (state.target) q.set("target", state.target);
  if (state.view === "regenerate" || !state.view) {
    if (state.items && state.items.length) q.set("items", encodeItems(state.items));
    if (state.open && state.open.length) q.set("open", state.open.join(","));
  }
  // URLSearchParams writes "," as %2C; the ids' own commas are already %2C-escaped twice over
  const text = q.toString().replace(/%2C/g, ",");
  return `${window.location.pathname}${text ? `?${text}` : ""}`;
}

/** Write `state` into the address bar: a new history entry (push) or in place. */
export function saveState(state, { push = false } = {}) {
  const url = stateUrl(state);
  if (url === `${window.location.pathname}${window.location.search}`) return;
  if (push) window.history.pushState(null, "", url);
  else window.history.replaceState(null, "", url);
}
