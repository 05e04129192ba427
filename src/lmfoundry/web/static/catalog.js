import { api, bindForm, numberOrNull, projectApi, project } from "./studio.js";

const dialog = document.getElementById("deploy-dialog");
const form = document.getElementById("deploy-form");

const slug = (id) => id.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40);

document.querySelectorAll("[data-deploy]").forEach((button) =>
  button.addEventListener("click", () => {
    const model = button.dataset.deploy;
    form.reset();
    form.querySelectorAll(".field-error, .form-error").forEach((n) => n.remove());
    document.getElementById("deploy-model").value = model;
    document.getElementById("deploy-model-label").textContent = model;
    document.getElementById("deploy-name").value = `${slug(model)}-${project}`.slice(0, 63).replace(/-$/, "");
    dialog.showModal();
    document.getElementById("deploy-name").select();
  }));

bindForm(form, async (data) => {
  const body = { name: data.get("name").trim(), model: data.get("model") };
  for (const field of ["tokens_per_minute", "requests_per_minute"]) {
    const value = numberOrNull(data.get(field));
    if (value !== null) body[field] = value;
  }
  const created = await api("POST", projectApi("/serverless-deployments"), body);
  location.assign(`/projects/${encodeURIComponent(project)}/deployments/${encodeURIComponent(created.name)}`);
});
