import { markMissing, el, optional, projectApi, when } from "./studio.js";

const id = document.getElementById("run").dataset.run;
const show = (v) => (v === null || v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v));

async function load() {
  const run = await optional(projectApi(`/runs/${encodeURIComponent(id)}`));
  if (run === null) {
    markMissing();
    document.getElementById("run-results").replaceChildren();
    return;
  }
  document.getElementById("run-status").textContent = run.status || "";
  const facts = { flow: run.flow, status: run.status, created: when(run.created_at), data: run.data, column_mapping: run.column_mapping, metrics: run.metrics };
  document.getElementById("run-facts").replaceChildren(...Object.entries(facts).filter(([, v]) => v)
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", { class: "mono" }, show(v))]));
  const lines = run.results || run.lines || run.outputs || [];
  const box = document.getElementById("run-results");
  if (!Array.isArray(lines) || !lines.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No results yet."));
  } else {
    const flat = lines.map((line, i) => ({ line: line.line ?? line.line_number ?? i, status: line.status ?? "", ...(line.inputs ? Object.fromEntries(Object.entries(line.inputs).map(([k, v]) => [`inputs.${k}`, v])) : {}), ...(line.outputs ? Object.fromEntries(Object.entries(line.outputs).map(([k, v]) => [`outputs.${k}`, v])) : {}), ...(line.error ? { error: line.error } : {}) }));
    const columns = [...new Set(flat.flatMap(Object.keys))];
    box.replaceChildren(el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c)))),
      el("tbody", {}, flat.map((row) => el("tr", {}, columns.map((c) => el("td", {}, show(row[c])))))))));
  }
  if (!["completed", "failed", "canceled"].includes(run.status)) setTimeout(load, 2000);
}
load();
