import { api, bindForm, notice, numberOrNull, project } from "./studio.js";
import { barChart, legend } from "./chart.js";
import { keysPanel } from "./keys.js";

keysPanel();

const quota = document.getElementById("quota-form");
if (quota) {
  bindForm(quota, async (data) => {
    const body = {};
    for (const [k, v] of data.entries()) body[k] = numberOrNull(v);
    await api("PATCH", quota.dataset.api, body);
    notice(quota, "Saved.");
    setTimeout(() => location.reload(), 600);
  });
}

const remove = document.getElementById("delete-deployment");
if (remove) {
  remove.addEventListener("click", async () => {
    const name = remove.dataset.name;
    if (!confirm(`Delete ${name}? Its target URL and keys stop working.`)) return;
    try {
      await api("DELETE", `/api/v1/projects/${encodeURIComponent(project)}/serverless-deployments/${encodeURIComponent(name)}`);
      location.assign(`/projects/${encodeURIComponent(project)}/deployments`);
    } catch (err) {
      alert(err.message);
    }
  });
}

const rows = JSON.parse(document.getElementById("usage-data").textContent);
legend(document.getElementById("usage-legend"), ["prompt tokens", "completion tokens"]);
barChart(document.getElementById("usage-chart"), {
  title: "Tokens per day",
  labels: rows.map((r) => r.day),
  series: [
    { name: "prompt tokens", values: rows.map((r) => r.prompt_tokens) },
    { name: "completion tokens", values: rows.map((r) => r.completion_tokens) },
  ],
});
