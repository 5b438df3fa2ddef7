// Calls to the Taesar API from the page: the API key (kept in sessionStorage, sent in a
// header, never put in a URL), the one error shape turned into readable messages.

const KEY_STORE = "taesar.apiKey";

export class ApiProblem extends Error {
  constructor(status, code, message, details = {}, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
    this.retryAfter = retryAfter;
  }
}

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORE);
  } catch {
    return null; // storage disabled: calls go without a key
  }
}

export function setApiKey(key) {
  sessionStorage.setItem(KEY_STORE, key);
}

export function forgetApiKey() {
  try {
    sessionStorage.removeItem(KEY_STORE);
  } catch {
    // nothing stored
  }
}

/** An API URL relative to the page (/ui -> /models), so a proxy's path prefix is kept. */
export function apiUrl(path, params = {}) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  return url;
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const key = apiKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

/** fetch() an API path; resolves to the Response when it is 2xx, else throws ApiProblem. */
export async function send(path, { method = "GET", json, body, params, headers: extra } = {}) {
  const init = { method, headers: headers(extra), cache: "no-store", credentials: "same-origin" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(apiUrl(path, params), init);
  } catch (err) {
    throw new ApiProblem(0, "network", "The service did not answer: it may be stopped or unreachable.", {
      error: String(err),
    });
  }
  if (!response.ok) throw await problemOf(response);
  return response;
}

/** Like send(), resolving to the parsed JSON body. */
export async function call(path, options = {}) {
  const response = await send(path, options);
  return response.status === 204 ? null : response.json();
}

async function problemOf(response) {
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  const retryAfter = Number.isFinite(retry) ? retry : null;
  try {
    const body = await response.json();
    const e = body && body.error;
    if (e && typeof e.code === "string") {
      return new ApiProblem(response.status, e.code, String(e.message || e.code), e.details, retryAfter);
    }
  } catch {
    // not our error shape: described by its status below
  }
  const text = `The service answered HTTP ${response.status} ${response.statusText || ""}`.trim();
  return new ApiProblem(response.status, `http_${response.status}`, text, {}, retryAfter);
}

const REASONS = {
  unauthorized: () => "The service needs a valid API key.",
  queue_full: (p) => `The service is busy: too many regenerations are waiting (${p.message}).`,
  rate_limited: (p) => `Too many requests (${p.message}).`,
  too_many_uploads: (p) => `Too many uploads at once (${p.message}).`,
  model_not_ready: (p) => `The model is not ready: ${p.message}. It may still be loading.`,
  redis_unavailable: () =>
    "Jobs are unavailable: the job queue (Redis) does not answer. Regenerating and the model view still work.",
  unknown_item: (p) => unknownItemText(p),
  network: (p) => `${p.message} Check that it is running, then try again.`,
  internal_error: (p) =>
    `The service failed unexpectedly and logged it${p.details.request_id ? ` (request ${p.details.request_id})` : ""}.`,
};

function unknownItemText(p) {
  const d = p.details || {};
  const where = Number.isInteger(d.position) ? ` at position ${d.position}` : "";
  return d.item !== undefined
    ? `Item “${d.item}”${where} is not in this model's catalogue. Remove it or pick another item.`
    : p.message;
}

/** A readable sentence for a failed call, and a hint when waiting may help. */
export function describe(problem) {
  if (!(problem instanceof ApiProblem)) {
    return { text: `Something went wrong on this page: ${problem && problem.message ? problem.message : problem}` };
  }
  const explain = REASONS[problem.code];
  const text = explain ? explain(problem) : `${problem.message} (${problem.code}, HTTP ${problem.status})`;
  const transient = problem.status === 429 || problem.status === 503 || problem.status === 0;
  const wait = problem.retryAfter !== null ? ` Try again in ${problem.retryAfter} s.` : "";
  return { text: text + (transient ? wait : ""), transient };
}

/** Download an API path as a file (with the key in a header, not in the link). */
export async function download(path, fileName, params = {}) {
  const response = await send(path, { params, headers: { Accept: "*/*" } });
  const blob = await response.blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = fileName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  return blob.size;
}
