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

// Flow code runs only in projects whose owner switched flows on: say so, and let an owner do it.
const switchBox = document.getElementById("flows-switch");
async function showSwitch() {
  const info = await optional(projectApi(""));
  if (!info || info.flows_enabled) {
    switchBox.replaceChildren();
    return;
  }
  const owner = info.role === "owner";
  switchBox.replaceChildren(el("div", { class: "panel stack", id: "flows-off", role: "status" },
    el("p", {}, "Flows are switched off in this project: flows can be uploaded and read, but their code ",
      "does not run (no tests, runs, deployments or scores) until an owner switches flows on."),
    owner
      ? el("div", {}, el("button", {
        type: "button", id: "enable-flows",
        onclick: async () => { await api("PATCH", projectApi(""), { flows_enabled: true }); await showSwitch(); },
      }, "Switch flows on"))
      : el("p", { class: "muted" }, "Ask an owner of the project to switch them on.")));
}
showSwitch().catch((err) => switchBox.replaceChildren(el("p", { class: "form-error", role: "alert" }, err.message)));

const form = document.getElementById("flow-form");
if (form) {
  bindForm(form, async (data) => {
    const flow = await api("POST", projectApi("/flows"), data);
    location.assign(flowUrl(flow.name));
  });
}
load().catch((err) => list.replaceChildren(el("p", { class: "form-error", role: "alert" }, err.message)));
