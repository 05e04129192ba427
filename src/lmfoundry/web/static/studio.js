// Shared helpers for studio pages: calling the JSON API with the session, showing the
// server's error next to the field it names, copy buttons and small conveniences.

export const project = document.body.dataset.project || "";
export const role = document.body.dataset.role || "";
const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || (body && body.message) || `The server answered ${status}.`);
    this.status = status;
    this.code = error.code || "";
    this.param = error.param || null;
    this.detail = error.detail ?? null;
  }
}

/** Call the API: JSON in and out; the session cookie rides along, the CSRF token too. */
export async function api(method, path, body, { headers = {}, raw = false } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "same-origin" };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = csrf();
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (raw) return response;
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: { message: text.slice(0, 300) } }; }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** GET an API that may not be on this server yet: null when its route is missing (404). */
export async function optional(path) {
  try {
    return await api("GET", path);
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
}

/** This server lacks the page's API: show the empty state, hide what needs the API. */
export function markMissing() {
  document.querySelectorAll("[data-missing]").forEach((n) => n.classList.remove("hidden"));
  document.querySelectorAll("[data-requires-api]").forEach((n) => n.classList.add("hidden"));
}

export const projectApi = (rest = "") => `/api/v1/projects/${encodeURIComponent(project)}${rest}`;

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const fmt = (n, digits = 0) =>
  Number(n ?? 0).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
export const money = (n) => "$" + Number(n ?? 0).toLocaleString("en-US", { maximumFractionDigits: 6 });

// -- errors next to fields -------------------------------------------------------------------

function fieldFor(form, param) {
  if (!param) return null;
  const parts = String(param).split(".");
  const candidates = [];
  for (let i = parts.length; i > 0; i--) candidates.push(parts.slice(0, i).join("."));
  candidates.push(parts[parts.length - 1]);
  for (const name of candidates) {
    const found =
      form.querySelector(`[data-param="${CSS.escape(name)}"]`) ||
      form.querySelector(`[name="${CSS.escape(name)}"]`);
    if (found) return found;
  }
  return null;
}

export function clearErrors(form) {
  form.querySelectorAll(".field-error, .form-error").forEach((n) => n.remove());
  form.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
}

function details(detail) {
  // Per-line problems (a dataset upload): [{line, message}] or {errors: [...]}.
  const list = Array.isArray(detail) ? detail : Array.isArray(detail?.errors) ? detail.errors : null;
  if (!list || !list.length) return null;
  return el("ul", {}, list.slice(0, 50).map((d) =>
    el("li", {}, typeof d === "string" ? d : `${d.line !== undefined ? `line ${d.line}: ` : ""}${d.message || d.msg || JSON.stringify(d)}`)));
}

/** Show an API error next to the field its `param` names (else at the top of the form). */
export function showError(form, err) {
  const message = err instanceof ApiError || err instanceof Error ? err.message : String(err);
  const field = err.param ? fieldFor(form, err.param) : null;
  const id = `err-${Math.random().toString(36).slice(2, 9)}`;
  const box = el(field ? "p" : "div", { class: field ? "field-error" : "form-error", id, role: "alert" }, message);
  const more = details(err.detail);
  if (more) box.append(more);
  if (field) {
    field.setAttribute("aria-invalid", "true");
    const target = field.closest(".field") || field;
    target.append(box);
    if (field.matches("input, select, textarea")) {
      field.setAttribute("aria-describedby", id);
      field.focus();
    }
  } else {
    form.prepend(box);
  }
  return box;
}

/** Submit `form` through `handler(formData, form)`; errors land next to their fields. */
export function bindForm(form, handler) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const button = form.querySelector('button[type="submit"], button:not([type])');
    if (button) button.disabled = true;
    try {
      await handler(new FormData(form), form);
    } catch (err) {
      showError(form, err);
    } finally {
      if (button) button.disabled = false;
    }
  });
}

export function notice(form, text) {
  form.querySelectorAll(".notice").forEach((n) => n.remove());
  const box = el("p", { class: "notice", role: "status" }, text);
  form.prepend(box);
  return box;
}

export function numberOrNull(value) {
  if (value === null || value === undefined || String(value).trim() === "") return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : value; // leave bad input for the server to name
}

export function when(date) {
  if (!date) return "";
  const d = typeof date === "number" ? new Date(date * 1000) : new Date(date);
  return isNaN(d) ? String(date) : d.toLocaleString();
}

// -- page-wide behaviours ---------------------------------------------------------------------

document.addEventListener("click", async (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const source = document.getElementById(copy.dataset.copy);
    const text = source ? (source.value ?? source.textContent) : copy.dataset.copyText || "";
    try {
      await navigator.clipboard.writeText(text);
      copy.textContent = "Copied";
    } catch {
      const range = document.createRange();
      if (source) { range.selectNodeContents(source); getSelection().removeAllRanges(); getSelection().addRange(range); }
      copy.textContent = "Selected — press Ctrl+C";
    }
    setTimeout(() => { copy.textContent = copy.dataset.label || "Copy"; }, 1800);
  }
  const open = event.target.closest("[data-open-dialog]");
  if (open) document.getElementById(open.dataset.openDialog)?.showModal();
  const close = event.target.closest("[data-close-dialog]");
  if (close) close.closest("dialog")?.close();
});

document.querySelectorAll("[data-autosubmit]").forEach((select) =>
  select.addEventListener("change", () => select.form.requestSubmit()));
