import { markMissing, api, bindForm, el, optional, project, projectApi, when } from "./studio.js";

const list = document.getElementById("flows-list");
const flowUrl = (name) => `/projects/${encodeURIComponent(project)}/flows/${encodeURIComponent(name)}`;

async function load() {
  const flows = await optional(projectApi("/flows"));
  if (flows === null) {
    markMissing();
    list.replaceChildren();
    return;
  }
  const rows = Array.isArray(flows) ? flows : flows.data || [];
  if (!rows.length) {
    list.replaceChildren(el("p", { class: "empty" }, "No flows yet: upload a flow folder below."));
    return;
  }
  list.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "flows-table" },
    el("thead", {}, el("tr", {}, ["Name", "Kind", "Version", "Connections", "Deployed", "Updated"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((f) => el("tr", {},
      el("td", {}, el("a", { href: flowUrl(f.name) }, f.name)), el("td", {}, f.kind ?? f.type ?? ""),
      el("td", { class: "num" }, f.version ?? ""), el("td", {}, (f.connections || []).join(", ")),
      el("td", {}, f.deployed_version ? `v${f.deployed_version}` : "no"), el("td", {}, when(f.updated_at || f.created_at))))))));
}

const form = document.getElementById("flow-form");
if (form) {
  bindForm(form, async (data) => {
    const flow = await api("POST", projectApi("/flows"), data);
    location.assign(flowUrl(flow.name));
  });
}
load().catch((err) => list.replaceChildren(el("p", { class: "form-error", role: "alert" }, err.message)));
