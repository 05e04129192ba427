// The keys panel: reveal, copy and regenerate (with confirmation) through the JSON API.
import { api, bindForm } from "./studio.js";

export function keysPanel() {
  const panel = document.getElementById("keys");
  if (!panel || !panel.querySelector("[data-key-reveal]")) return;
  const base = panel.dataset.keysApi;
  let keys = null;
  const show = (values) => {
    keys = values;
    for (const slot of ["primary", "secondary"]) {
      const code = document.getElementById(`key-${slot}`);
      code.textContent = values[`${slot}_key`];
      code.dataset.hidden = "false";
    }
    panel.querySelectorAll("[data-key-reveal]").forEach((b) => (b.textContent = "Hide"));
  };
  const hide = () => {
    for (const slot of ["primary", "secondary"]) {
      const code = document.getElementById(`key-${slot}`);
      code.textContent = "••••••••••••••••••••";
      code.dataset.hidden = "true";
    }
    panel.querySelectorAll("[data-key-reveal]").forEach((b) => (b.textContent = "Reveal"));
  };
  const fail = (err) => {
    panel.querySelectorAll(".form-error").forEach((n) => n.remove());
    const box = document.createElement("p");
    box.className = "form-error";
    box.setAttribute("role", "alert");
    box.textContent = err.message;
    panel.append(box);
  };
  panel.querySelectorAll("[data-key-reveal]").forEach((button) =>
    button.addEventListener("click", async () => {
      if (document.getElementById("key-primary").dataset.hidden === "false") return hide();
      try { show(await api("GET", `${base}/keys`)); } catch (err) { fail(err); }
    }));
  panel.querySelectorAll("[data-key-copy]").forEach((button) =>
    button.addEventListener("click", async () => {
      try {
        const values = keys || (await api("GET", `${base}/keys`));
        keys = values;
        await navigator.clipboard.writeText(values[`${button.dataset.keyCopy}_key`]);
        button.textContent = "Copied";
      } catch (err) {
        if (err.status) return fail(err);
        button.textContent = "Reveal, then select";
      }
      setTimeout(() => (button.textContent = "Copy"), 1800);
    }));
  const dialog = document.getElementById("regenerate-dialog");
  const form = document.getElementById("regenerate-form");
  panel.querySelectorAll("[data-key-regenerate]").forEach((button) =>
    button.addEventListener("click", () => {
      form.key_type.value = button.dataset.keyRegenerate;
      dialog.querySelectorAll("[data-slot]").forEach((s) => (s.textContent = button.dataset.keyRegenerate));
      dialog.showModal();
    }));
  bindForm(form, async (data) => {
    show(await api("POST", `${base}/keys/regenerate`, { key_type: data.get("key_type") }));
    dialog.close();
  });
}
