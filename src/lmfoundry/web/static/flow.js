// A flow: its files (flow.dag.yaml edited raw, checked by the studio, saved by re-uploading
// the folder), a graph drawn from the DAG, a chat or test panel, and its batch runs.
import { markMissing, ApiError, api, bindForm, clearErrors, el, notice, optional, project, projectApi, showError, when } from "./studio.js";
import { targz } from "./tar.js";

const name = document.getElementById("flow").dataset.flow;
const base = projectApi(`/flows/${encodeURIComponent(name)}`);
const dagField = document.getElementById("dag");
const dagForm = document.getElementById("dag-form");
const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
let files = {};
let graph = null;
let chatHistory = [];

function filesOf(flow) {
  if (Array.isArray(flow.files)) {
    return Object.fromEntries(flow.files.map((f) => typeof f === "string" ? [f, null] : [f.path || f.name, f.content ?? f.text ?? null]));
  }
  if (flow.files && typeof flow.files === "object") return { ...flow.files };
  const dag = flow.dag ?? flow["flow.dag.yaml"] ?? flow.yaml;
  return dag ? { "flow.dag.yaml": dag } : {};
}

// -- graph -------------------------------------------------------------------------------------
const NS = "http://www.w3.org/2000/svg";
const svgEl = (tag, attrs = {}, text) => {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
};

function drawGraph(g) {
  const box = document.getElementById("graph");
  if (!g.nodes.length) { box.replaceChildren(el("p", { class: "muted" }, "No nodes to draw.")); return; }
  const W = 160, H = 46, GX = 60, GY = 26;
  const maxLayer = Math.max(...g.nodes.map((n) => n.layer ?? 1));
  const items = [
    ...(g.edges.some((e) => e.from === "inputs") ? [{ id: "inputs", type: Object.keys(g.inputs || {}).join(", "), layer: 0, row: 0, io: true }] : []),
    ...g.nodes.map((n) => ({ ...n, layer: n.layer ?? 1, row: n.row ?? 0 })),
    ...(g.edges.some((e) => e.to === "outputs") ? [{ id: "outputs", type: Object.keys(g.outputs || {}).join(", "), layer: maxLayer + 1, row: 0, io: true }] : []),
  ];
  const rows = Math.max(...items.map((n) => n.row)) + 1;
  const layers = maxLayer + 2;
  const pos = Object.fromEntries(items.map((n) => [n.id, { x: 20 + n.layer * (W + GX), y: 20 + n.row * (H + GY) }]));
  const width = 40 + layers * (W + GX) - GX, height = 40 + rows * (H + GY) - GY;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `Graph of flow ${name}` });
  svg.append(svgEl("title", {}, `Graph of flow ${name}: ${g.nodes.map((n) => n.id).join(", ")}`));
  const defs = svgEl("defs");
  const marker = svgEl("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(svgEl("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a94a3" }));
  defs.append(marker);
  svg.append(defs);
  for (const e of g.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mid = (x1 + x2) / 2;
    svg.append(svgEl("path", { class: "edge", d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 2},${y2}`, "marker-end": "url(#arrow)", "data-edge": `${e.from}->${e.to}` }));
  }
  for (const n of items) {
    const p = pos[n.id];
    const group = svgEl("g", { class: `node${n.io ? " io" : ""}`, "data-node": n.id, transform: `translate(${p.x},${p.y})` });
    group.append(svgEl("rect", { width: W, height: H, rx: 8 }));
    group.append(svgEl("text", { x: 10, y: 19 }, n.id.length > 20 ? n.id.slice(0, 19) + "…" : n.id));
    group.append(svgEl("text", { x: 10, y: 35, class: "kind" }, n.type.length > 26 ? n.type.slice(0, 25) + "…" : n.type));
    svg.append(group);
  }
  svg.style.maxWidth = `${Math.max(width, 480)}px`; // a small flow stays small
  box.replaceChildren(svg);
}

async function check() {
  graph = await api("POST", `/projects/${encodeURIComponent(project)}/flows-check`, { dag: dagField.value });
  drawGraph(graph);
  return graph;
}

function showProblems(problems) {
  const err = new ApiError(400, { error: { message: `flow.dag.yaml has ${problems.length} problem(s):`, param: "flow.dag.yaml", detail: problems } });
  showError(dagForm, err);
}

document.getElementById("validate").addEventListener("click", async () => {
  clearErrors(dagForm);
  dagForm.querySelectorAll(".notice").forEach((n) => n.remove());
  try {
    const g = await check();
    if (g.errors.length) showProblems(g.errors);
    else notice(dagForm, `No problems found: ${g.nodes.length} node(s), ${g.edges.length} edge(s).`);
  } catch (err) {
    showError(dagForm, err);
  }
});

bindForm(dagForm, async () => {
  const g = await check();
  if (g.errors.length) return showProblems(g.errors);
  const missing = Object.entries(files).filter(([, text]) => text === null).map(([path]) => path);
  if (missing.length) throw new Error(`This server did not send the contents of ${missing.join(", ")}; upload the folder instead.`);
  const upload = new FormData();
  upload.append("name", name);
  upload.append("file", await targz({ ...files, "flow.dag.yaml": dagField.value }), `${name}.tar.gz`);
  try {
    await api("POST", projectApi("/flows"), upload);
  } catch (err) {
    err.param = "flow.dag.yaml"; // the server checks the whole folder; show it by the editor
    throw err;
  }
  files["flow.dag.yaml"] = dagField.value;
  notice(dagForm, "Saved: the flow was uploaded again with this flow.dag.yaml.");
  setupTest(g);
  await setupBindings(await api("GET", base));
});

// -- test and chat -------------------------------------------------------------------------------
async function runTest(inputs, onText) {
  const response = await fetch(`${base}/test`, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream, application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify({ inputs }),
  });
  if (!response.ok) {
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    throw new ApiError(response.status, data);
  }
  if (!(response.headers.get("content-type") || "").includes("event-stream")) return response.json();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") continue;
      let event;
      try { event = JSON.parse(data); } catch { onText(data); continue; }
      if (event.error) throw new ApiError(event.error.status || 500, event);
      const delta = event.delta ?? event.chunk ?? event.text;
      if (typeof delta === "string") onText(delta);
      if (event.event === "result" || (!event.event && (event.outputs || event.output))) last = event;
    }
  }
  return last || {};
}

function outputsOf(result) {
  if (result && result.status === "failed") {
    const error = result.error || {};
    throw new Error(`${error.node ? `Node ${error.node}: ` : ""}${error.message || "the flow failed"}`);
  }
  return result.outputs ?? result.output ?? result;
}

function chatOutputName(g) {
  const entries = Object.entries(g.outputs || {});
  return (entries.find(([, v]) => v && v.is_chat_output) || entries[0] || [null])[0];
}

function setupTest(g) {
  const chat = document.getElementById("chat-panel");
  const testForm = document.getElementById("flow-test-form");
  chat.classList.toggle("hidden", !g.is_chat);
  testForm.classList.toggle("hidden", g.is_chat);
  if (g.is_chat) return;
  const box = document.getElementById("flow-inputs");
  box.replaceChildren(...Object.entries(g.inputs || {}).map(([key, spec]) => {
    const type = (spec && spec.type) || "string";
    const value = spec && spec.default !== undefined ? (typeof spec.default === "string" ? spec.default : JSON.stringify(spec.default)) : "";
    return el("div", { class: "field" }, el("label", { for: `in-${key}` }, `${key} `, el("span", { class: "hint" }, type)),
      type === "string" ? el("input", { id: `in-${key}`, name: key, value, "data-type": type })
        : el("textarea", { id: `in-${key}`, name: key, rows: 3, "data-type": type }, value));
  }));
}

const chatForm = document.getElementById("flow-chat-form");
bindForm(chatForm, async (data) => {
  const g = graph || (await check());
  const inputs = {};
  const entries = Object.entries(g.inputs || {});
  const questionKey = (entries.find(([, v]) => v && v.is_chat_input) || entries[0])[0];
  const historyKey = (entries.find(([, v]) => v && v.is_chat_history) || [null])[0];
  const question = data.get("question").trim();
  inputs[questionKey] = question;
  if (historyKey) inputs[historyKey] = chatHistory;
  const log = document.getElementById("flow-chatlog");
  log.append(el("div", { class: "msg user" }, question));
  const answer = el("div", { class: "msg assistant" }, "");
  log.append(answer);
  chatForm.reset();
  try {
    const result = await runTest(inputs, (text) => { answer.textContent += text; });
    const outputs = outputsOf(result);
    const key = chatOutputName(g);
    const text = key && outputs && outputs[key] !== undefined ? outputs[key] : answer.textContent || JSON.stringify(outputs);
    answer.textContent = typeof text === "string" ? text : JSON.stringify(text);
    chatHistory.push({ inputs: { [questionKey]: question }, outputs: { [key || "answer"]: answer.textContent } });
    if (result.duration_s !== undefined) answer.append(el("span", { class: "meta" }, `${result.duration_s} s`));
  } catch (err) {
    answer.remove();
    throw err;
  }
});

const testForm = document.getElementById("flow-test-form");
bindForm(testForm, async () => {
  const inputs = {};
  testForm.querySelectorAll("#flow-inputs [name]").forEach((field) => {
    const type = field.dataset.type;
    if (type === "string" || field.value === "") inputs[field.name] = field.value;
    else {
      try { inputs[field.name] = JSON.parse(field.value); } catch { inputs[field.name] = field.value; }
    }
  });
  const out = document.getElementById("flow-test-output");
  out.textContent = "";
  out.classList.remove("hidden");
  const result = await runTest(inputs, (text) => { out.textContent += text; });
  out.textContent = JSON.stringify(outputsOf(result), null, 2);
});

// -- connections ---------------------------------------------------------------------------------
// Each node input typed as a connection class gets a picker of the project's connections of a
// fitting type; saving stores the bindings on the flow (PUT .../connections).
const bindingsForm = document.getElementById("bindings-form");

async function setupBindings(flow) {
  const inputs = flow.connection_inputs || [];
  document.getElementById("bindings-panel").classList.toggle("hidden", !inputs.length);
  if (!inputs.length) return;
  const connections = (await optional(projectApi("/connections"))) || [];
  const list = Array.isArray(connections) ? connections : connections.data || [];
  document.getElementById("bindings").replaceChildren(...inputs.map((slot) => {
    const id = `bind-${slot.key}`;
    const fitting = list.filter((c) => slot.types.includes(c.type));
    const open = slot.declared ? `as flow.dag.yaml says (${slot.declared})` : fitting.length === 1 ? `default: the only fitting one (${fitting[0].name})` : "choose a connection";
    const select = el("select", { id, name: slot.key, "data-param": `connections.${slot.key}` },
      el("option", { value: "" }, open),
      fitting.map((c) => el("option", { value: c.name, selected: c.name === slot.bound }, `${c.name} (${c.type})`)));
    return el("div", { class: "field" },
      el("label", { for: id }, `${slot.node} · ${slot.input} `, el("span", { class: "hint" }, slot.takes)),
      select,
      fitting.length ? null : el("p", { class: "hint" }, `No connection of type ${slot.types.join(" or ")} in this project yet: add one on the Connections page.`));
  }));
}

bindForm(bindingsForm, async (data) => {
  const connections = {};
  for (const [key, value] of data.entries()) connections[key] = value;
  const flow = await api("PUT", `${base}/connections`, { connections });
  await setupBindings(flow);
  const bound = Object.entries(flow.connection_bindings || {}).map(([k, v]) => `${k} = ${v}`);
  notice(bindingsForm, bound.length ? `Saved: ${bound.join(", ")}.` : "Saved: no connection bound.");
});

// -- runs ----------------------------------------------------------------------------------------
async function loadRuns() {
  const runs = await optional(`${base}/runs`);
  const box = document.getElementById("runs");
  const rows = runs === null ? [] : Array.isArray(runs) ? runs : runs.data || [];
  if (!rows.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No batch runs of this flow yet (`lmfoundry flows run`)."));
    return;
  }
  box.replaceChildren(el("div", { class: "table-wrap" }, el("table", {},
    el("thead", {}, el("tr", {}, ["Run", "Status", "Lines", "Failed", "Created"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {},
      el("td", {}, el("a", { href: `/projects/${encodeURIComponent(project)}/runs/${encodeURIComponent(r.id)}` }, r.id)),
      el("td", {}, el("span", { class: "badge" }, r.status ?? "")),
      el("td", { class: "num" }, r.completed_lines !== undefined ? `${r.completed_lines} / ${r.total_lines}` : r.total_lines ?? ""),
      el("td", { class: "num" }, r.failed_lines ?? ""),
      el("td", {}, when(r.created_at))))))));
}

(async () => {
  const flow = await optional(base);
  if (flow === null) {
    markMissing();
    document.getElementById("flow-body").classList.add("hidden");
    return;
  }
  files = filesOf(flow);
  document.getElementById("flow-type").textContent = [flow.kind || flow.type, flow.version && `v${flow.version}`].filter(Boolean).join(" ");
  document.getElementById("file-list").replaceChildren(...Object.keys(files).sort().map((path) => el("li", { class: "mono" }, path)));
  let g;
  if (files["flow.dag.yaml"] === undefined && Array.isArray(flow.nodes)) {
    // This server answers with the flow's interface, not its files: show it, read-only.
    g = await api("POST", `/projects/${encodeURIComponent(project)}/flows-check`, {
      definition: { inputs: flow.inputs, outputs: flow.outputs, nodes: flow.nodes },
    });
    graph = g;
    drawGraph(g);
    dagField.value = g.dag;
    dagField.readOnly = true;
    dagForm.querySelector('button[type="submit"]')?.classList.add("hidden");
    dagField.after(el("p", { class: "hint" }, "Made from the flow's definition; upload the folder again to change it."));
  } else {
    dagField.value = files["flow.dag.yaml"] ?? "";
    g = await check();
  }
  if (g.errors.length) showProblems(g.errors);
  setupTest(g);
  await setupBindings(flow);
  await loadRuns();
})().catch((err) => document.getElementById("flow-body").prepend(el("p", { class: "form-error", role: "alert" }, err.message)));
