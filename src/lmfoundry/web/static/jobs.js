import { markMissing, api, bindForm, el, numberOrNull, optional, project, projectApi, when } from "./studio.js";

const list = document.getElementById("jobs-list");
const badge = (s) => el("span", { class: `badge ${s === "completed" || s === "succeeded" ? "ok" : s === "failed" ? "bad" : "warn"}` }, s || "");

async function load() {
  const jobs = await optional(projectApi("/fine-tuning-jobs"));
  if (jobs === null) {
    markMissing();
    list.replaceChildren();
    return;
  }
  const rows = Array.isArray(jobs) ? jobs : jobs.data || [];
  if (!rows.length) {
    list.replaceChildren(el("p", { class: "empty" }, "No fine-tuning jobs yet."));
    return;
  }
  list.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "jobs-table" },
    el("thead", {}, el("tr", {}, ["Job", "Status", "Progress", "Model", "Training data", "Created"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((j) => el("tr", {},
      el("td", {}, el("a", { href: `/projects/${encodeURIComponent(project)}/fine-tuning/${encodeURIComponent(j.id)}` }, j.id)),
      el("td", {}, badge(j.status)),
      el("td", { class: "num" }, j.step !== undefined ? `${j.step}${j.total_steps ? ` / ${j.total_steps}` : ""}` : ""),
      el("td", { class: "mono" }, j.model ?? ""),
      el("td", { class: "mono" }, j.training_data ?? ""), el("td", {}, when(j.created_at))))))));
}

async function fillDatasets() {
  const datasets = (await optional(projectApi("/datasets"))) || [];
  const rows = Array.isArray(datasets) ? datasets : datasets.data || [];
  document.querySelectorAll("select[data-datasets]").forEach((select) => {
    const options = rows.map((d) => el("option", { value: d.id ?? d.name }, `${d.name}${d.version ? ` v${d.version}` : ""} (${d.rows ?? "?"} rows)`));
    select.replaceChildren(...(select.hasAttribute("data-optional") ? [el("option", { value: "" }, "none")] : []), ...options);
  });
}

const form = document.getElementById("job-form");
if (form) {
  fillDatasets();
  bindForm(form, async (data) => {
    const body = { model: data.get("model"), training_data: data.get("training_data"), hyperparameters: {} };
    if (data.get("validation_data")) body.validation_data = data.get("validation_data");
    if (data.get("suffix").trim()) body.suffix = data.get("suffix").trim();
    for (const [k, v] of data.entries()) {
      if (!k.startsWith("hyperparameters.")) continue;
      const name = k.slice("hyperparameters.".length);
      body.hyperparameters[name] = name === "lr_scheduler_type" ? v : numberOrNull(v);
      if (body.hyperparameters[name] === null) delete body.hyperparameters[name];
    }
    const job = await api("POST", projectApi("/fine-tuning-jobs"), body);
    location.assign(`/projects/${encodeURIComponent(project)}/fine-tuning/${encodeURIComponent(job.id)}`);
  });
}
load().catch((err) => list.replaceChildren(el("p", { class: "form-error", role: "alert" }, err.message)));
