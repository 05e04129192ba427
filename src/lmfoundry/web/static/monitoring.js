// The monitoring page: polls the monitoring API and draws the charts (static/chart.js).
import { legend, timeChart } from "./chart.js";

const root = document.getElementById("monitoring");
const api = root.dataset.api;
const pollMs = Number(root.dataset.poll || 5) * 1000;
const live = document.getElementById("live");
let windowName = "hour";
let timer = null;

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const GREEN = "#2b8a3e", RED = "#c92a2a", ORANGE = "#e8590c";

function ms(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1000) return `${Math.round(n)} ms`;
  return `${(n / 1000).toFixed(n < 10000 ? 2 : 1)} s`;
}
const mib = (b) => (b === null || b === undefined ? "–" : `${(b / 2 ** 20).toFixed(0)} MiB`);

function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function text(id, value) {
  const node = document.getElementById(id);
  if (node) node.textContent = value;
}

function cells(row, values) {
  const tr = document.createElement("tr");
  values.forEach((v, i) => {
    const td = document.createElement(i === 0 ? "th" : "td");
    if (i === 0) td.scope = "row";
    td.textContent = v;
    tr.append(td);
  });
  row.append(tr);
}

function chart(id, key, title, series, start, end, unit) {
  const node = document.getElementById(id);
  if (!node) return;
  legend(document.querySelector(`[data-legend="${key}"]`), series.map((s) => s.name), series.map((s) => s.color));
  timeChart(node, { title, series, start, end, unit });
}

function draw(data) {
  const t = data.totals;
  text("total-requests", fmt(t.requests));
  text("total-ok", fmt(t.ok));
  text("total-errors", fmt(t.errors));
  text("total-429", fmt(t.rate_limited));
  text("total-prompt", fmt(t.prompt_tokens));
  text("total-completion", fmt(t.completion_tokens));
  text("total-latency", `${ms(t.latency_p50_ms)} / ${ms(t.latency_p99_ms)}`);
  text("total-ttft", `${ms(t.ttft_p50_ms)} / ${ms(t.ttft_p99_ms)}`);
  const statuses = document.querySelector("#by-status tbody");
  statuses.replaceChildren();
  for (const [status, count] of Object.entries(t.by_status)) cells(statuses, [status, fmt(count)]);
  if (!Object.keys(t.by_status).length) cells(statuses, ["–", "no requests"]);
  statuses.closest("table").dataset.total = String(t.requests);

  const step = data.bucket_seconds * 1000;
  const start = Date.parse(data.start), end = Date.parse(data.start) + step * data.buckets.length;
  const at = (b) => Date.parse(b.at) + step / 2; // a bucket's middle
  const line = (name, pick) => ({ name, points: data.buckets.map((b) => [at(b), pick(b)]) });
  const per = data.bucket_seconds === 60 ? "minute" : `${data.bucket_seconds / 60} minutes`;
  document.querySelectorAll("[data-bucket-label]").forEach((n) => (n.textContent = per));
  chart("chart-rps", "rps", "Requests per second", [line("requests/s", (b) => b.requests_per_second)], start, end, "req/s");
  chart("chart-status", "status", `Responses per ${per}`, [
    { ...line("succeeded", (b) => b.ok), color: GREEN },
    { ...line("errors", (b) => b.errors), color: RED },
    { ...line("429", (b) => b.rate_limited), color: ORANGE },
  ], start, end, "requests");
  chart("chart-latency", "latency", "Latency", [
    line("p50", (b) => b.latency_p50_ms), line("p99", (b) => b.latency_p99_ms),
  ], start, end, "ms");
  chart("chart-ttft", "ttft", "Time to first token", [
    line("p50", (b) => b.ttft_p50_ms), line("p99", (b) => b.ttft_p99_ms),
  ], start, end, "ms");
  chart("chart-tps", "tps", "Completion tokens per second", [line("tokens/s", (b) => b.tokens_per_second)], start, end, "tok/s");
  if (data.instance_samples) {
    const points = (pick) => data.instance_samples.map((s) => [Date.parse(s.at), pick(s)]);
    chart("chart-instances", "instances", "Instances and busy slots", [
      { name: "ready instances", points: points((s) => s.instances) },
      { name: "busy slots", points: points((s) => s.busy) },
      { name: "slots", points: points((s) => s.slots) },
    ], start, end, "count");
  }
  const byDeployment = document.querySelector("#by-deployment tbody");
  if (byDeployment) {
    byDeployment.replaceChildren();
    for (const [name, d] of Object.entries(data.deployments)) {
      cells(byDeployment, [name, fmt(d.requests), fmt(d.ok), fmt(d.errors), fmt(d.rate_limited), fmt(d.completion_tokens), ms(d.latency_p50_ms), ms(d.latency_p99_ms)]);
    }
  }
  const instances = document.querySelector("#instances tbody");
  if (instances && data.instances) {
    instances.replaceChildren();
    for (const i of data.instances) {
      cells(instances, [i.id, i.model, i.state, mib(i.rss_bytes), `${i.busy} / ${i.slots ?? "–"}`, duration(i.uptime_seconds)]);
    }
    if (!data.instances.length) cells(instances, ["–", "no instance runs this model now", "", "", "", ""]);
  }
}

async function poll() {
  clearTimeout(timer);
  try {
    const answer = await fetch(`${api}?window=${windowName}`, { headers: { accept: "application/json" } });
    const data = await answer.json();
    if (!answer.ok) throw new Error(data?.error?.message || answer.statusText);
    draw(data);
    root.dataset.loaded = windowName;
    live.className = "badge ok";
    live.textContent = `live · ${new Date().toLocaleTimeString("en-GB")}`;
  } catch (exc) {
    live.className = "badge bad";
    live.textContent = `not updating: ${exc.message}`;
  }
  // a day's view reads a day of records: asked for less often
  timer = setTimeout(poll, windowName === "day" ? pollMs * 6 : pollMs);
}

document.querySelectorAll("[data-window]").forEach((button) => {
  button.addEventListener("click", () => {
    windowName = button.dataset.window;
    document.querySelectorAll("[data-window]").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
    document.querySelectorAll("[data-window-label]").forEach((n) => (n.textContent = button.textContent.toLowerCase()));
    poll();
  });
});
poll();
