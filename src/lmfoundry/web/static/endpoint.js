import { api, bindForm, notice, numberOrNull, project, projectApi } from "./studio.js";
import { keysPanel } from "./keys.js";

keysPanel();
const name = document.getElementById("endpoint").dataset.name;
const base = projectApi(`/online-endpoints/${encodeURIComponent(name)}`);

function splitOf(form, prefix) {
  const split = {};
  form.querySelectorAll(`input[name^="${prefix}."]`).forEach((input) => {
    split[input.dataset.deployment] = numberOrNull(input.value) ?? 0;
  });
  return split;
}

const traffic = document.getElementById("traffic-form");
if (traffic) {
  const total = () => {
    const sum = Object.values(splitOf(traffic, "traffic")).reduce((a, b) => a + (Number(b) || 0), 0);
    document.getElementById("traffic-total").textContent = String(sum);
  };
  traffic.addEventListener("input", total);
  total();
  bindForm(traffic, async () => {
    await api("PUT", `${base}/traffic`, splitOf(traffic, "traffic"));
    notice(traffic, "Traffic saved.");
    setTimeout(() => location.reload(), 700);
  });
  const mirror = document.getElementById("mirror-form");
  bindForm(mirror, async () => {
    await api("PUT", `${base}/mirror-traffic`, splitOf(mirror, "mirror_traffic"));
    notice(mirror, "Mirror saved.");
    setTimeout(() => location.reload(), 700);
  });
}

const form = document.getElementById("deployment-form");
if (form) {
  bindForm(form, async (data) => {
    const dep = data.get("name").trim();
    await api("PUT", `${base}/deployments/${encodeURIComponent(dep)}`, {
      model: data.get("model").trim(),
      instance_count: numberOrNull(data.get("instance_count")) ?? 1,
    });
    location.reload();
  });
}

document.querySelectorAll("[data-delete-deployment]").forEach((button) =>
  button.addEventListener("click", async () => {
    const dep = button.dataset.deleteDeployment;
    if (!confirm(`Delete deployment ${dep}? Its instances stop.`)) return;
    try {
      await api("DELETE", `${base}/deployments/${encodeURIComponent(dep)}`);
      location.reload();
    } catch (err) {
      alert(err.message);
    }
  }));

document.getElementById("delete-endpoint")?.addEventListener("click", async () => {
  if (!confirm(`Delete endpoint ${name} and all its deployments?`)) return;
  try {
    await api("DELETE", base);
    location.assign(`/projects/${encodeURIComponent(project)}/endpoints`);
  } catch (err) {
    alert(err.message);
  }
});

// While a deployment is being created or updated, poll its state.
const rows = [...document.querySelectorAll("tr[data-deployment]")];
async function poll() {
  const pending = rows.some((r) => /creating|updating|deleting/.test(r.querySelector("[data-state]").textContent));
  if (!pending) return;
  try {
    const deployments = await api("GET", `${base}/deployments`);
    for (const d of deployments) {
      const row = rows.find((r) => r.dataset.deployment === d.name);
      if (!row) continue;
      const badge = row.querySelector("[data-state] .badge");
      badge.textContent = d.provisioning_state;
      badge.className = `badge ${d.provisioning_state === "succeeded" ? "ok" : d.provisioning_state === "failed" ? "bad" : "warn"}`;
      if (d.error) badge.title = d.error;
    }
  } catch { /* the next poll tries again */ }
  setTimeout(poll, 1000);
}
poll();
