// The page's entry point: loads the models, asks for an API key when the service needs
// one, and shows the view the URL names. Any failure ends in a readable message.

import { ApiProblem, apiKey, call, forgetApiKey, setApiKey } from "./api.js";
import { announce, clear, h, hideNotice, showNotice } from "./dom.js";
import { renderJobs } from "./jobs.js";
import { renderModel } from "./model.js";
import { renderRegenerate } from "./regenerate.js";
import { readState, saveState, stateUrl } from "./state.js";

const RENDERERS = { regenerate: renderRegenerate, model: renderModel, jobs: renderJobs };
const app = { models: [], failures: [], cleanup: null };

/** Everything a view needs: the models, the state, and how to move to another state. */
function context(state) {
  const model = app.models.find((m) => m.name === state.model) || app.models[0] || null;
  return {
    state: { ...state, model: model ? model.name : "" },
    models: app.models,
    model,
    main: document.getElementById("main"),
    go: (next, options) => navigate(next, options),
    onUnauthorized: askForKey,
  };
}

async function loadModels() {
  const list = await call("models");
  app.models = list.models;
  app.failures = list.errors || [];
}

function renderNav(state) {
  for (const tab of document.querySelectorAll(".tab")) {
    const view = tab.dataset.view;
    tab.setAttribute("href", stateUrl({ view, model: state.model, target: state.target }));
    if (view === state.view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  const status = clear(document.getElementById("key-status"));
  if (apiKey()) {
    status.append(
      h("span", {}, "API key set for this tab"),
      h("button", { type: "button", class: "small", onclick: () => forgetKey() }, "Forget key"),
    );
  }
}

async function render({ focus = false } = {}) {
  if (app.cleanup) app.cleanup();
  app.cleanup = null;
  const ctx = context(readState());
  saveState(ctx.state);
  renderNav(ctx.state);
  const main = clear(ctx.main);
  document.title = `Taesar · ${ctx.state.view}${ctx.model ? ` · ${ctx.model.name}` : ""}`;
  if (!ctx.model) {
    main.append(noModel());
    return;
  }
  app.cleanup = (await RENDERERS[ctx.state.view](ctx)) || null;
  if (focus) main.focus();
}

function noModel() {
  const failures = app.failures.map((f) => h("li", {}, h("code", {}, f.model || "(model folder)"), `: ${f.message || f.code}`));
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "No model is loaded"),
    h("p", {}, "The service answers, but it has no model to regenerate with."),
    failures.length ? h("ul", {}, failures) : null,
  );
}

function navigate(next, { push = true, focus = false } = {}) {
  const state = { ...readState(), ...next };
  saveState(state, { push });
  hideNotice();
  return render({ focus });
}

function askForKey(problem) {
  const panel = document.getElementById("key-panel");
  const sent = Boolean(apiKey());
  document.getElementById("key-message").textContent = sent
    ? "The API key you gave was refused (401 unauthorized). Check it and enter it again."
    : "This service needs an API key: enter one of the keys it was started with (TAESAR_API_KEYS).";
  if (sent) forgetApiKey();
  panel.hidden = false;
  clear(document.getElementById("main"));
  renderNav(readState());
  document.getElementById("api-key").focus();
  announce(document.getElementById("key-message").textContent);
  return problem;
}

function forgetKey() {
  forgetApiKey();
  announce("API key forgotten");
  start();
}

async function start() {
  hideNotice();
  try {
    await loadModels();
  } catch (problem) {
    if (problem instanceof ApiProblem && problem.code === "unauthorized") return askForKey(problem);
    clear(document.getElementById("main"));
    showNotice(problem, { retry: start, title: "Cannot load the models" });
    return null;
  }
  document.getElementById("key-panel").hidden = true;
  return render();
}

function installHandlers() {
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("api-key");
    const key = input.value.trim();
    input.value = "";
    if (!key) return;
    setApiKey(key);
    start();
  });
  document.querySelector(".tabs").addEventListener("click", (event) => {
    const tab = event.target.closest(".tab");
    if (!tab || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    navigate({ view: tab.dataset.view }, { focus: true });
  });
  window.addEventListener("popstate", () => render());
  window.addEventListener("error", (event) => showNotice(`This page failed: ${event.message}`));
  window.addEventListener("unhandledrejection", (event) => showNotice(event.reason));
}

installHandlers();
start();
