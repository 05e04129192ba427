import { api, bindForm, project, projectApi } from "./studio.js";

const form = document.getElementById("endpoint-form");
if (form) {
  bindForm(form, async (data) => {
    const created = await api("POST", projectApi("/online-endpoints"), {
      name: data.get("name").trim(),
      description: data.get("description"),
      auth_mode: "key",
    });
    location.assign(`/projects/${encodeURIComponent(project)}/endpoints/${encodeURIComponent(created.name)}`);
  });
}
