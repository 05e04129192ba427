// The chat playground: streams through the studio's playground route (the key stays on
// the server) and shows the equivalent curl / Python call.
import { ApiError, clearErrors, el, project, showError } from "./studio.js";

const dataNode = document.getElementById("targets-data");
if (dataNode) {
  const targets = Object.fromEntries(JSON.parse(dataNode.textContent).map((t) => [t.value, t]));
  const settings = document.getElementById("settings");
  const log = document.getElementById("chatlog");
  const composer = document.getElementById("composer");
  const prompt = document.getElementById("prompt");
  const depField = document.getElementById("endpoint-deployment-field");
  const depSelect = document.getElementById("endpoint-deployment");
  const codeBox = document.getElementById("code");
  let history = [];
  let language = "curl";

  const current = () => targets[settings.target.value];

  function syncTarget() {
    const t = current();
    const isEndpoint = t.value.startsWith("endpoint/");
    depField.classList.toggle("hidden", !isEndpoint);
    depSelect.replaceChildren(
      el("option", { value: "" }, "by traffic split"),
      ...t.deployments.map((d) => el("option", { value: d }, d)));
    renderCode();
  }

  function requestBody(messages, stream = true) {
    const body = { messages, stream };
    const temperature = settings.temperature.value.trim();
    const maxTokens = settings.max_tokens.value.trim();
    if (temperature !== "") body.temperature = Number.isFinite(+temperature) ? +temperature : temperature;
    if (maxTokens !== "") body.max_tokens = Number.isFinite(+maxTokens) ? +maxTokens : maxTokens;
    if (stream) body.stream_options = { include_usage: true };
    return body;
  }

  function conversation(next) {
    const system = settings.system.value.trim();
    return [...(system ? [{ role: "system", content: system }] : []), ...history, ...(next ? [next] : [])];
  }

  function renderCode() {
    const t = current();
    const last = [...history].reverse().find((m) => m.role === "user")?.content || "Hello!";
    const messages = conversation(history.length ? null : { role: "user", content: last });
    const body = requestBody(messages, false);
    const deployment = depSelect.value;
    const json = JSON.stringify(body, null, 2);
    const py = (v) => JSON.stringify(v, null, 4).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None");
    const header = deployment ? ` \\\n  -H 'azureml-model-deployment: ${deployment}'` : "";
    const code = {
      curl: `curl -s ${t.url}chat/completions \\\n  -H "Authorization: Bearer $LMFOUNDRY_KEY" \\\n  -H 'Content-Type: application/json'${header} \\\n  -d '${json.replace(/'/g, "'\\''")}'`,
      openai: `import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url="${t.url}v1", api_key=os.environ["LMFOUNDRY_KEY"])\nresponse = client.chat.completions.create(\n    model="${t.model}",\n    messages=${py(messages)},\n${body.temperature !== undefined ? `    temperature=${body.temperature},\n` : ""}${body.max_tokens !== undefined ? `    max_tokens=${body.max_tokens},\n` : ""}${deployment ? `    extra_headers={"azureml-model-deployment": "${deployment}"},\n` : ""})\nprint(response.choices[0].message.content)`,
      azure: `import os\nfrom azure.ai.inference import ChatCompletionsClient\nfrom azure.core.credentials import AzureKeyCredential\n\nclient = ChatCompletionsClient(\n    endpoint="${t.url}", credential=AzureKeyCredential(os.environ["LMFOUNDRY_KEY"])\n)\nresponse = client.complete(\n    messages=${py(messages)},\n${body.temperature !== undefined ? `    temperature=${body.temperature},\n` : ""}${body.max_tokens !== undefined ? `    max_tokens=${body.max_tokens},\n` : ""}${deployment ? `    headers={"azureml-model-deployment": "${deployment}"},\n` : ""})\nprint(response.choices[0].message.content)`,
    };
    codeBox.textContent = code[language];
  }

  function bubble(role, text) {
    const node = el("div", { class: `msg ${role}` }, el("span", { class: "content" }, text));
    log.append(node);
    log.scrollTop = log.scrollHeight;
    return node;
  }

  async function send(text) {
    const t = current();
    const user = { role: "user", content: text };
    const body = {
      kind: t.value.startsWith("endpoint/") ? "endpoint" : "serverless",
      name: t.value.split("/").slice(1).join("/"),
      deployment: depSelect.value || null,
      request: requestBody(conversation(user)),
    };
    const asked = bubble("user", text);
    const answer = bubble("assistant", "");
    try {
      await stream(body, answer);
    } catch (err) {
      asked.remove();
      answer.remove();
      throw err;
    }
    history.push(user, { role: "assistant", content: answer.querySelector(".content").textContent });
    renderCode();
  }

  async function stream(body, answer) {
    answer.setAttribute("aria-busy", "true");
    const content = answer.querySelector(".content");
    const started = performance.now();
    let usage = null;
    const response = await fetch(`/projects/${encodeURIComponent(project)}/playground/chat`, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        Accept: "text/event-stream",
        "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content,
      },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      let data = null;
      try { data = await response.json(); } catch { data = null; }
      throw new ApiError(response.status, data);
    }
    const served = response.headers.get("azureml-model-deployment");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
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
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(chunk.error.status || 500, chunk);
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) { content.textContent += delta; log.scrollTop = log.scrollHeight; }
        if (chunk.usage) usage = chunk.usage;
      }
    }
    answer.removeAttribute("aria-busy");
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const parts = [`${seconds} s`];
    if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
    if (served) parts.push(`served by ${served}`);
    answer.append(el("span", { class: "meta" }, parts.join(" · ")));
  }

  composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    clearErrors(settings);
    log.querySelectorAll(".msg.error").forEach((n) => n.remove());
    const button = document.getElementById("send");
    button.disabled = true;
    prompt.value = "";
    try {
      await send(text);
    } catch (err) {
      prompt.value = text;
      const field = err.param && settings.querySelector(`[name="${CSS.escape(err.param.split(".").pop())}"]`);
      if (field) showError(settings, err);
      else bubble("error", err.message);
    } finally {
      button.disabled = false;
      prompt.focus();
    }
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  document.getElementById("clear").addEventListener("click", () => {
    history = [];
    log.replaceChildren();
    renderCode();
  });
  document.querySelectorAll("[data-code]").forEach((tab) =>
    tab.addEventListener("click", () => {
      language = tab.dataset.code;
      document.querySelectorAll("[data-code]").forEach((t) => t.setAttribute("aria-selected", String(t === tab)));
      renderCode();
    }));
  settings.addEventListener("input", renderCode);
  settings.target.addEventListener("change", () => { history = []; log.replaceChildren(); syncTarget(); });
  depSelect.addEventListener("change", renderCode);
  syncTarget();
}
