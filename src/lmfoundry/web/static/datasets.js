import { markMissing, api, bindForm, el, notice, optional, projectApi, when } from "./studio.js";

const list = document.getElementById("datasets-list");

async function load() {
  const datasets = await optional(projectApi("/datasets"));
  if (datasets === null) {
    markMissing();
    list.replaceChildren();
    return;
  }
  const rows = Array.isArray(datasets) ? datasets : datasets.data || [];
  if (!rows.length) {
    list.replaceChildren(el("p", { class: "empty" }, "No datasets yet: upload a chat JSONL file below."));
    return;
  }
  list.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "datasets-table" },
    el("thead", {}, el("tr", {}, ["Name", "Version", "Rows", "File", "ID", "Created"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((d) => el("tr", {},
      el("td", {}, d.name), el("td", { class: "num" }, d.version ?? ""), el("td", { class: "num" }, d.rows ?? ""), el("td", {}, d.filename ?? ""),
      el("td", { class: "mono" }, d.id ?? ""), el("td", {}, when(d.created_at))))))));
}

const form = document.getElementById("dataset-form");
if (form) {
  bindForm(form, async (data) => {
    if (!data.get("model")) data.delete("model");
    const created = await api("POST", projectApi("/datasets"), data);
    form.reset();
    notice(form, `Uploaded ${created.name} version ${created.version ?? ""}: ${created.rows ?? "?"} rows.`);
    await load();
  });
}
load().catch((err) => list.replaceChildren(el("p", { class: "form-error", role: "alert" }, err.message)));
