// The jobs view: the caller's recent jobs with live progress, cancel and downloads, and
// a form to queue a job (the model's sample users, or a .jsonl file of sequences).

import { call, describe, download, send } from "./api.js";
import { announce, clear, formatNumber, h, section, showNotice } from "./dom.js";
import { pickTarget } from "./regenerate.js";
import { saveState } from "./state.js";

const POLL_ACTIVE_MS = 1000;
const POLL_IDLE_MS = 5000;
const STATUS_TEXT = {
  queued: "◷ queued",
  running: "▶ running",
  succeeded: "✓ succeeded",
  failed: "✕ failed",
  cancelled: "⊘ cancelled",
};

function percent(job) {
  return job.progress.total ? Math.floor((100 * job.progress.done) / job.progress.total) : 0;
}

class JobsView {
  constructor(ctx) {
    this.ctx = ctx;
    this.state = { ...ctx.state, target: pickTarget(ctx.model, ctx.state.target) };
    saveState(this.state);
    this.timer = null;
    this.stopped = false;
    this.list = h("div", { id: "job-list", "aria-live": "polite" }, h("p", { class: "hint" }, "Loading your jobs…"));
  }

  build() {
    this.ctx.main.append(this.submitForm(), section("Your recent jobs", this.list));
  }

  submitForm() {
    const target = h("select", { id: "job-target", onchange: (e) => saveState({ ...this.state, target: e.target.value }) }, this.ctx.model.domains.map((d) => h("option", { value: d.name, selected: d.name === this.state.target }, d.name)));
    const file = h("input", { id: "job-file", type: "file", accept: ".jsonl,.ndjson,.gz,application/x-ndjson" });
    const titles = h("input", { id: "job-titles", type: "checkbox", checked: true });
    const form = h(
      "form",
      { onsubmit: (e) => this.submit(e, target.value, file, titles.checked) },
      h("p", { class: "hint" }, `Model ${this.ctx.model.name}. Without a file, the job regenerates the model's sample users.`),
      h(
        "div",
        { class: "row-form" },
        h("div", { class: "field" }, h("label", { for: "job-target" }, "Target domain"), target),
        h("div", { class: "field" }, h("label", { for: "job-file" }, "Sequences (.jsonl, optional)"), file),
        h("div", { class: "field" }, h("label", { for: "job-titles" }, titles, " include titles")),
        h("button", { type: "submit", class: "primary", id: "queue-job" }, "Queue a job"),
      ),
    );
    return section("Queue a job", form);
  }

  async submit(event, target, fileInput, includeTitles) {
    event.preventDefault();
    const options = { unknown_items: "drop", include_titles: includeTitles };
    const model = this.ctx.model.name;
    try {
      let job;
      const file = fileInput.files && fileInput.files[0];
      if (file) {
        const headers = { "Content-Type": "application/x-ndjson" };
        if (file.name.endsWith(".gz")) headers["Content-Encoding"] = "gzip";
        const params = { model, target_domain: target, options: JSON.stringify(options) };
        job = await (await send("jobs", { method: "POST", body: file, params, headers })).json();
      } else {
        const { users } = await call(`models/${encodeURIComponent(model)}/samples`);
        if (!users.length) {
          showNotice("This bundle keeps no sample users: choose a .jsonl file of sequences instead.", { warn: true, title: "Nothing to queue" });
          return;
        }
        const sequences = users.map((u) => ({ user_id: u.user_id, items: u.items }));
        job = await call("jobs", { method: "POST", json: { model, target_domain: target, sequences, options } });
      }
      announce(`Job ${job.id} queued`);
      fileInput.value = "";
      await this.refresh();
    } catch (problem) {
      if (problem.code === "unauthorized") return this.ctx.onUnauthorized(problem);
      showNotice(problem, { title: "Cannot queue the job" });
    }
    return null;
  }

  async refresh() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    let jobs;
    try {
      jobs = (await call("jobs", { params: { limit: 20 } })).jobs;
    } catch (problem) {
      if (problem.code === "unauthorized") return this.ctx.onUnauthorized(problem);
      this.unavailable(problem);
      return null;
    }
    if (this.stopped) return null;
    this.draw(jobs);
    const active = jobs.some((j) => j.status === "queued" || j.status === "running");
    this.timer = setTimeout(() => this.refresh(), active ? POLL_ACTIVE_MS : POLL_IDLE_MS);
    return null;
  }

  unavailable(problem) {
    const text = describe(problem).text;
    const title = problem.code === "redis_unavailable" ? "Jobs are unavailable" : "Cannot list your jobs";
    clear(this.list).append(h("p", { class: "job-unavailable", "data-code": problem.code }, h("strong", {}, `${title}. `), text));
    this.timer = setTimeout(() => this.refresh(), POLL_IDLE_MS);
  }

  draw(jobs) {
    if (!jobs.length) {
      clear(this.list).append(h("p", { class: "hint" }, "No jobs yet. Queue one above, or submit one with POST /jobs or the SDK."));
      return;
    }
    const head = ["job", "model → target", "status", "progress", "decisions", "created", "actions"];
    clear(this.list).append(
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, jobs.map((j) => this.row(j))),
      ),
    );
  }

  row(job) {
    const pct = percent(job);
    const progress = h(
      "div",
      {},
      h("progress", { max: job.progress.total || 1, value: job.progress.done, "aria-label": `Progress of job ${job.id}` }),
      h("span", { class: "pct" }, ` ${pct}% (${formatNumber(job.progress.done)} / ${formatNumber(job.progress.total)})`),
    );
    const d = job.decisions;
    const status = h("span", { class: "job-status" }, STATUS_TEXT[job.status] || job.status);
    if (job.error) status.append(h("br"), h("span", { class: "hint" }, `${job.error.code}: ${job.error.message}`));
    return h(
      "tr",
      { class: "job", "data-job": job.id, "data-status": job.status, "data-percent": pct },
      h("td", {}, h("code", { class: "mono", title: job.id }, job.id.slice(0, 8))),
      h("td", {}, `${job.model} → ${job.target_domain}`),
      h("td", {}, status),
      h("td", {}, progress),
      h("td", {}, `✓ ${formatNumber(d.kept)} · ⇄ ${formatNumber(d.replaced)} · ✕ ${formatNumber(d.discarded)}`),
      h("td", {}, new Date(job.created_at).toLocaleString()),
      h("td", {}, this.actions(job)),
    );
  }

  actions(job) {
    const box = h("div", { class: "actions" });
    if (job.status === "queued" || job.status === "running") {
      box.append(h("button", { type: "button", class: "small", "data-act": "cancel", onclick: () => this.cancel(job) }, "Cancel"));
    }
    if (job.status === "succeeded") {
      const get = (format, name) => () => this.fetchResults(job, format, name);
      box.append(
        h("button", { type: "button", class: "small", "data-act": "download-jsonl", onclick: get("jsonl", `${job.id}.jsonl`) }, "Download NDJSON"),
        h("button", { type: "button", class: "small", "data-act": "download-recbole", onclick: get("recbole", `${job.id}.inter`) }, "Download RecBole"),
      );
    }
    return box;
  }

  async cancel(job) {
    try {
      await call(`jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
      announce(`Job ${job.id} cancelled`);
    } catch (problem) {
      showNotice(problem, { title: "Cannot cancel the job" });
    }
    await this.refresh();
  }

  async fetchResults(job, format, name) {
    try {
      const bytes = await download(`jobs/${encodeURIComponent(job.id)}/results`, name, { format });
      announce(`Downloaded ${name} (${bytes} bytes)`);
    } catch (problem) {
      if (problem.code === "unauthorized") return this.ctx.onUnauthorized(problem);
      showNotice(problem, { title: "Cannot download the results" });
    }
    return null;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}

export async function renderJobs(ctx) {
  const view = new JobsView(ctx);
  view.build();
  await view.refresh();
  return () => view.stop();
}
