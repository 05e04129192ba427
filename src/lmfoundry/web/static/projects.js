import { api, bindForm } from "./studio.js";

bindForm(document.getElementById("project-form"), async (data) => {
  const created = await api("POST", "/api/v1/projects", {
    name: data.get("name").trim(),
    description: data.get("description"),
  });
  location.assign(`/projects/${encodeURIComponent(created.name)}/catalog`);
});
