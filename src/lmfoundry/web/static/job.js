// A fine-tuning job: status, a live loss chart (train and validation) and the log tail,
// from the job's events (SSE when the server offers it, else polling the JSON list).
import { markMissing, api, bindForm, el, notice, optional, projectApi, when } from "./studio.js";
import { legend, lineChart } from "./chart.js";

const id = document.getElementById("job").dataset.job;
const base = projectApi(`/fine-tuning-jobs/${encodeURIComponent(id)}`);
const TERMINAL = new Set(["completed", "succeeded", "failed", "canceled", "cancelled"]);
const train = [], validation = [], lines = [], seen = new Set();
let latest = null, status = "", source = null, drawPending = false, lastId = null;

legend(document.getElementById("loss-legend"), ["train_loss", "validation_loss"]);

function draw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    lineChart(document.getElementById("loss-chart"), {
      title: "Training and validation loss by step",
      series: [{ name: "train_loss", points: train }, { name: "validation_loss", points: validation }],
    });
    const tail = document.getElementById("log-tail");
    const atBottom = tail.scrollTop + tail.clientHeight >= tail.scrollHeight - 4;
    tail.textContent = lines.slice(-300).join("\n");
    if (atBottom) tail.scrollTop = tail.scrollHeight;
    if (latest) {
      document.getElementById("job-metrics").replaceChildren(...["step", "train_loss", "validation_loss", "learning_rate", "tokens_per_second"]
        .filter((k) => latest[k] !== undefined && latest[k] !== null)
        .flatMap((k) => [el("dt", {}, k), el("dd", { "data-metric": k }, typeof latest[k] === "number" ? String(+latest[k].toPrecision(5)) : String(latest[k]))]));
    }
  });
}

function setStatus(value) {
  if (!value || value === status) return;
  status = value;
  const badge = document.getElementById("job-status");
  badge.textContent = value;
  badge.className = `badge ${value === "completed" || value === "succeeded" ? "ok" : value === "failed" ? "bad" : "warn"}`;
  document.getElementById("cancel-job")?.classList.toggle("hidden", TERMINAL.has(value));
  if (TERMINAL.has(value) && source) { source.close(); source = null; }
}

/** Take one event in whatever envelope it comes: metrics, a log line, a status. */
function absorb(event) {
  if (event === null || event === undefined) return;
  if (typeof event === "string") { lines.push(event); return; }
  const key = event.id ?? event.seq ?? event.sequence ?? JSON.stringify(event);
  if (seen.has(key)) return;
  seen.add(key);
  if (typeof event.id === "number") lastId = Math.max(lastId ?? 0, event.id);
  const inner = typeof event.data === "object" && event.data !== null ? event.data : null;
  const metrics = event.metrics || (inner && inner.step !== undefined ? inner : null) || (event.step !== undefined ? event : null);
  if (metrics && metrics.step !== undefined) {
    latest = { ...latest, ...metrics };
    if (metrics.train_loss !== undefined && metrics.train_loss !== null) train.push([+metrics.step, +metrics.train_loss]);
    if (metrics.validation_loss !== undefined && metrics.validation_loss !== null) validation.push([+metrics.step, +metrics.validation_loss]);
  }
  const text = event.message ?? event.line ?? event.log ?? event.text ?? (typeof event.data === "string" ? event.data : null);
  const at = event.at ?? event.created_at;
  if (text) lines.push(`${at ? when(at) + "  " : ""}${event.level ? event.level + " " : ""}${text}`);
  else if (metrics && metrics.step !== undefined) {
    lines.push(`step ${metrics.step}` + ["train_loss", "validation_loss", "learning_rate", "tokens_per_second"]
      .filter((k) => metrics[k] !== undefined && metrics[k] !== null).map((k) => ` ${k}=${metrics[k]}`).join(""));
  }
  setStatus(event.status ?? inner?.status);
  draw();
}

async function refreshJob() {
  const job = await optional(base);
  if (job === null) {
    markMissing();
    document.getElementById("job-body").classList.add("hidden");
    document.getElementById("job-status").textContent = "unavailable";
    return false;
  }
  setStatus(job.status);
  document.getElementById("register-form")?.classList.toggle("hidden", !["completed", "succeeded"].includes(job.status));
  const progress = job.step !== undefined ? `${job.step}${job.total_steps ? ` of ${job.total_steps}` : ""}` : null;
  const facts = [["model", job.model], ["training data", job.training_data], ["validation data", job.validation_data],
    ["progress", progress], ["created", when(job.created_at)], ["finished", when(job.finished_at)],
    ["restarts", job.restarts || null], ["output", job.fine_tuned_model],
    ["error", job.error?.message || job.error]];
  const hp = job.hyperparameters || {};
  document.getElementById("job-facts").replaceChildren(
    ...facts.filter(([, v]) => v).flatMap(([k, v]) => [el("dt", {}, k), el("dd", { class: "mono" }, String(v))]));
  document.getElementById("job-hyperparameters").replaceChildren(
    ...Object.entries(hp).flatMap(([k, v]) => [el("dt", {}, k), el("dd", { class: "mono" }, String(v))]));
  return true;
}

function poll() {
  // The JSON list of events, for servers (or proxies) without SSE.
  api("GET", `${base}/events${lastId !== null ? `?after=${lastId}` : ""}`).then((events) => {
    (Array.isArray(events) ? events : events?.data || []).forEach(absorb);
  }).catch(() => {}).finally(() => { if (!TERMINAL.has(status)) setTimeout(poll, 2000); });
}

function stream() {
  source = new EventSource(`${base}/events`);
  let opened = false;
  const take = (message) => {
    try { absorb(JSON.parse(message.data)); } catch { absorb(message.data); }
  };
  source.onopen = () => { opened = true; };
  source.onmessage = take;
  for (const name of ["metrics", "log", "status", "step", "event"]) source.addEventListener(name, take);
  source.onerror = () => {
    if (!opened && source) { source.close(); source = null; poll(); }  // no SSE here: poll
  };
}

const register = document.getElementById("register-form");
if (register) {
  bindForm(register, async (data) => {
    const model = await api("POST", projectApi("/models"), { name: data.get("name").trim(), from_job: id });
    notice(register, `Registered ${model.name} version ${model.version}.`);
  });
}

document.getElementById("cancel-job")?.addEventListener("click", async (event) => {
  if (!confirm("Cancel this job? Checkpoints written so far are kept.")) return;
  const button = event.currentTarget;
  button.disabled = true;
  try {
    const job = await api("POST", `${base}/cancel`);
    setStatus(job?.status || "canceling");
  } catch (err) {
    button.after(el("p", { class: "form-error", role: "alert" }, err.message));
  } finally {
    button.disabled = false;
  }
});

refreshJob().then((exists) => {
  if (!exists) return;
  draw();
  stream();
  const tick = async () => { await refreshJob().catch(() => {}); if (!TERMINAL.has(status)) setTimeout(tick, 3000); };
  setTimeout(tick, 3000);
}).catch((err) => document.getElementById("job-body").prepend(el("p", { class: "form-error", role: "alert" }, err.message)));
