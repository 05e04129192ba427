import { markMissing, api, bindForm, el, notice, optional, projectApi, role } from "./studio.js";

const list = document.getElementById("connections-list");
const canWrite = role === "developer" || role === "owner";
let counter = 0;

function pair(kind, key = "", value = "") {
  const n = ++counter;
  const secret = kind === "secrets";
  return el("div", { class: "row", "data-pair": "" },
    el("div", { class: "field" }, el("label", { for: `${kind}-k-${n}` }, secret ? "Secret name" : "Config name"),
      el("input", { id: `${kind}-k-${n}`, "data-key": "", value: key, spellcheck: "false", name: `${kind}-key-${n}` })),
    el("div", { class: "field grow" }, el("label", { for: `${kind}-v-${n}` }, "Value"),
      el("input", { id: `${kind}-v-${n}`, "data-value": "", value, type: secret ? "password" : "text", autocomplete: secret ? "new-password" : "off", name: `${kind}-value-${n}` })),
    el("button", { type: "button", class: "secondary small", "aria-label": `Remove this ${secret ? "secret" : "config"}`, onclick: (e) => e.currentTarget.closest("[data-pair]").remove() }, "Remove"));
}

function collect(form, kind) {
  const out = {};
  form.querySelectorAll(`[data-pairs="${kind}"] [data-pair]`).forEach((row) => {
    const key = row.querySelector("[data-key]").value.trim();
    if (key) out[key] = row.querySelector("[data-value]").value;
  });
  return out;
}

async function load() {
  const items = await optional(projectApi("/connections"));
  if (items === null) {
    markMissing();
    list.replaceChildren();
    return;
  }
  const rows = Array.isArray(items) ? items : items.data || [];
  if (!rows.length) {
    list.replaceChildren(el("p", { class: "empty" }, "No connections yet."));
    return;
  }
  const show = (obj) => Object.entries(obj || {}).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join("\n");
  list.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "connections-table" },
    el("thead", {}, el("tr", {}, ["Name", "Type", "Configs", "Secrets", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((c) => el("tr", {},
      el("td", {}, c.name), el("td", {}, c.type ?? ""),
      el("td", { class: "mono" }, el("pre", { class: "plain" }, show(c.configs))),
      el("td", { class: "mono" }, Object.keys(c.secrets || {}).map((k) => `${k}: ***`).join(", ")),
      el("td", {}, canWrite ? el("button", { type: "button", class: "danger small", onclick: () => remove(c.name) }, "Delete") : "")))))));
}

async function remove(name) {
  if (!confirm(`Delete connection ${name}? Flows that name it stop working.`)) return;
  try {
    await api("DELETE", projectApi(`/connections/${encodeURIComponent(name)}`));
    await load();
  } catch (err) {
    alert(err.message);
  }
}

const form = document.getElementById("connection-form");
if (form) {
  const addPair = (kind) => form.querySelector(`[data-pairs="${kind}"]`).append(pair(kind));
  form.querySelectorAll("[data-add-pair]").forEach((b) => b.addEventListener("click", () => addPair(b.dataset.addPair)));
  addPair("configs");
  addPair("secrets");
  bindForm(form, async (data) => {
    const name = data.get("name").trim();
    await api("PUT", projectApi(`/connections/${encodeURIComponent(name)}`), {
      type: data.get("type"),
      configs: collect(form, "configs"),
      secrets: collect(form, "secrets"),
    });
    form.reset();
    form.querySelectorAll("[data-pairs]").forEach((p) => p.replaceChildren());
    addPair("configs");
    addPair("secrets");
    notice(form, `Saved ${name}. Its secrets are stored encrypted and will not be shown again.`);
    await load();
  });
}
load().catch((err) => list.replaceChildren(el("p", { class: "form-error", role: "alert" }, err.message)));
