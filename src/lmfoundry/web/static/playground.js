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

  const EXAMPLE_TOOLS = [{
    type: "function",
    function: {
      name: "get_weather",
      description: "The current weather in a city.",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  }];

  /** The tools of the editor, or null when it is empty; a clear error when it is not JSON. */
  function tools() {
    const text = settings.tools.value.trim();
    if (!text) return null;
    let value;
    try { value = JSON.parse(text); } catch (err) {
      throw Object.assign(new Error(`Tools: not JSON (${err.message}).`), { param: "tools" });
    }
    if (!Array.isArray(value)) throw Object.assign(new Error("Tools: give a JSON list of functions."), { param: "tools" });
    return value;
  }

  function requestBody(messages, stream = true) {
    const body = { messages, stream };
    const offered = tools();
    if (offered) {
      body.tools = offered;
      body.tool_choice = settings.tool_choice.value;
    }
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
    let body;
    try {
      body = requestBody(messages, false);
    } catch (err) {  // the tools editor holds no JSON (yet): show why instead of code
      codeBox.textContent = err.message;
      return;
    }
    const deployment = depSelect.value;
    const json = JSON.stringify(body, null, 2);
    const py = (v) => JSON.stringify(v, null, 4).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None");
    const header = deployment ? ` \\\n  -H 'azureml-model-deployment: ${deployment}'` : "";
    const code = {
      curl: `curl -s ${t.url}chat/completions \\\n  -H "Authorization: Bearer $LMFOUNDRY_KEY" \\\n  -H 'Content-Type: application/json'${header} \\\n  -d '${json.replace(/'/g, "'\\''")}'`,
      openai: `import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url="${t.url}v1", api_key=os.environ["LMFOUNDRY_KEY"])\nresponse = client.chat.completions.create(\n    model="${t.model}",\n    messages=${py(messages)},\n${body.temperature !== undefined ? `    temperature=${body.temperature},\n` : ""}${body.max_tokens !== undefined ? `    max_tokens=${body.max_tokens},\n` : ""}${body.tools ? `    tools=${py(body.tools)},\n    tool_choice="${body.tool_choice}",\n` : ""}${deployment ? `    extra_headers={"azureml-model-deployment": "${deployment}"},\n` : ""})\nprint(response.choices[0].message${body.tools ? "" : ".content"})`,
      azure: `import os\nfrom azure.ai.inference import ChatCompletionsClient\nfrom azure.core.credentials import AzureKeyCredential\n\nclient = ChatCompletionsClient(\n    endpoint="${t.url}", credential=AzureKeyCredential(os.environ["LMFOUNDRY_KEY"])\n)\nresponse = client.complete(\n    messages=${py(messages)},\n${body.temperature !== undefined ? `    temperature=${body.temperature},\n` : ""}${body.max_tokens !== undefined ? `    max_tokens=${body.max_tokens},\n` : ""}${body.tools ? `    tools=${py(body.tools)},\n    tool_choice="${body.tool_choice}",\n` : ""}${deployment ? `    headers={"azureml-model-deployment": "${deployment}"},\n` : ""})\nprint(response.choices[0].message${body.tools ? "" : ".content"})`,
    };
    codeBox.textContent = code[language];
  }

  /** A call the model made, with a field for its result; sending the result continues. */
  function callBox(call) {
    const result = el("input", { type: "text", class: "tool-result", "aria-label": `Result of ${call.function.name}`, placeholder: "the function's result" });
    const button = el("button", { type: "button", class: "small" }, "Send result");
    const box = el("div", { class: "toolcall" },
      el("code", {}, `${call.function.name}(${call.function.arguments})`), result, button);
    button.addEventListener("click", async () => {
      if (!result.value.trim()) { result.focus(); return; }
      button.disabled = true;
      result.disabled = true;
      history.push({ role: "tool", tool_call_id: call.id, content: result.value.trim() });
      try {
        await send(null);
      } catch (err) {
        history.pop();
        button.disabled = false;
        result.disabled = false;
        bubble("error", err.message);
      }
    });
    return box;
  }

  function bubble(role, text) {
    const node = el("div", { class: `msg ${role}` }, el("span", { class: "content" }, text));
    log.append(node);
    log.scrollTop = log.scrollHeight;
    return node;
  }

  /** Send a user message (or, with null, the tool results just added) and stream the answer. */
  async function send(text) {
    const t = current();
    const user = text === null ? null : { role: "user", content: text };
    const body = {
      kind: t.value.startsWith("endpoint/") ? "endpoint" : "serverless",
      name: t.value.split("/").slice(1).join("/"),
      deployment: depSelect.value || null,
      request: requestBody(conversation(user)),
    };
    const asked = user ? bubble("user", text) : null;
    const answer = bubble("assistant", "");
    let calls;
    try {
      calls = await stream(body, answer);
    } catch (err) {
      asked?.remove();
      answer.remove();
      throw err;
    }
    if (user) history.push(user);
    if (calls.length) {
      history.push({ role: "assistant", content: null, tool_calls: calls });
      calls.forEach((call) => answer.insertBefore(callBox(call), answer.querySelector(".meta")));
    } else {
      history.push({ role: "assistant", content: answer.querySelector(".content").textContent });
    }
    renderCode();
  }

  async function stream(body, answer) {
    answer.setAttribute("aria-busy", "true");
    const content = answer.querySelector(".content");
    const started = performance.now();
    let usage = null;
    const calls = [];  // tool calls, gathered from their streamed pieces by index
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
        for (const piece of chunk.choices?.[0]?.delta?.tool_calls || []) {
          const call = calls[piece.index] ||= { id: "", type: "function", function: { name: "", arguments: "" } };
          if (piece.id) call.id = piece.id;
          if (piece.function?.name) call.function.name += piece.function.name;
          if (piece.function?.arguments) call.function.arguments += piece.function.arguments;
        }
        if (chunk.usage) usage = chunk.usage;
      }
    }
    answer.removeAttribute("aria-busy");
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const parts = [`${seconds} s`];
    if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
    if (served) parts.push(`served by ${served}`);
    answer.append(el("span", { class: "meta" }, parts.join(" · ")));
    return calls;
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
  document.getElementById("tools-example").addEventListener("click", () => {
    settings.tools.value = JSON.stringify(EXAMPLE_TOOLS, null, 2);
    renderCode();
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
