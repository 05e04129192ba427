"""Running a .prompty in the flow process: `Prompty` (what `from promptflow.core import Prompty`
gives flow code, and what a prompty flow calls), the model configuration classes, rendering
and the model call.

Rendering follows Prompt flow: Jinja in a sandboxed environment (trim_blocks,
keep_trailing_newline), role lines (`system:`, `user:`, `assistant:`, `function:`, `tool:`,
`#` optional, each alone on its line) split the text into messages, and a role line inside an
input's text is not a role line (inputs cannot inject messages). The model is called through
the connection path llm nodes use (`executor.chat_url`: an lmfoundry connection's target URL
or a custom connection's endpoint, with its key). The answer is shaped as Prompt flow shapes
it: the first choice's text; a dict for `response_format: json_object` (only the `outputs:`
keys when given); the message for a tool call; a generator of text for `stream: true`; the
whole response for `response: all`.

This module runs tenant templates: it is imported only in the flow process.
"""

from __future__ import annotations

import copy
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jinja2.sandbox import SandboxedEnvironment

from lmfoundry.flows.executor import chat_url
from lmfoundry.flows.prompty import PROMPTY_SUFFIX, check, split
from lmfoundry.flows.tools import CustomConnection

ROLES = ("system", "user", "assistant", "function", "tool")
_ROLE_LINE = re.compile(r"^\s*#?\s*(" + "|".join(ROLES) + r")\s*:\s*\n", re.IGNORECASE | re.M)
_NAME_CONTENT = re.compile(
    r"\n*#{0,2}\s*name\s*:\s*\n+\s*(\S+)\s*\n*#{0,2}\s*content\s*:\s*\n?(.*)", re.S
)
_TOOL_CONTENT = re.compile(
    r"\n*#{0,2}\s*tool_call_id\s*:\s*\n+\s*(\S+)\s*\n*#{0,2}\s*content\s*:\s*\n?(.*)", re.S
)
_TOOL_CALLS = re.compile(r"\n*#{0,2}\s*tool_calls\s*:\s*\n+\s*(\[.*?\])\s*$", re.S)
_REFERENCE = re.compile(r"^\$\{(\w+):(.*)\}$")

_connections: dict[str, CustomConnection] = {}


def use_connections(connections: dict[str, CustomConnection]) -> None:
    """The flow process's connections, for prompty files that name one."""
    _connections.clear()
    _connections.update(connections)


@dataclass
class AzureOpenAIModelConfiguration:
    """Prompt flow's model configuration for Azure OpenAI; `connection` names a project
    connection (and excludes endpoint, key and version, as there)."""

    azure_deployment: str
    azure_endpoint: str | None = None
    api_version: str | None = None
    api_key: str | None = None
    connection: str | None = None

    def __post_init__(self) -> None:
        if self.connection and any([self.azure_endpoint, self.api_key, self.api_version]):
            raise ValueError("Cannot configure model config and connection at the same time.")

    @property
    def type(self) -> str:
        return "azure_openai"

    @classmethod
    def from_connection(
        cls, connection: CustomConnection, azure_deployment: str
    ) -> AzureOpenAIModelConfiguration:
        return cls(
            azure_deployment=azure_deployment,
            azure_endpoint=_base_of(connection),
            api_version=connection.get("api_version"),
            api_key=connection.get("key") or connection.get("api_key"),
        )


@dataclass
class OpenAIModelConfiguration:
    """Prompt flow's model configuration for OpenAI-style APIs (`base_url`, `api_key`)."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    organization: str | None = None
    connection: str | None = None

    def __post_init__(self) -> None:
        if self.connection and any([self.base_url, self.api_key, self.organization]):
            raise ValueError("Cannot configure model config and connection at the same time.")

    @property
    def type(self) -> str:
        return "openai"

    @classmethod
    def from_connection(cls, connection: CustomConnection, model: str) -> OpenAIModelConfiguration:
        return cls(
            model=model,
            base_url=_base_of(connection),
            api_key=connection.get("key") or connection.get("api_key"),
        )


def _base_of(connection: CustomConnection) -> str:
    return str(chat_url(connection)).removesuffix("/chat/completions")


def connection_named(name: str) -> CustomConnection:
    if name not in _connections:
        raise ValueError(
            f"Connection {name!r} is not available to this flow; create it in the project "
            f"(`lmfoundry connections create {name} ...`) and name it in the .prompty's "
            "model.configuration.connection or the flow's init."
        )
    return _connections[name]


def model_connection(configuration: Any) -> CustomConnection:
    """The connection a prompty's model configuration (a dict or a configuration object)
    reaches its model through."""
    if isinstance(configuration, AzureOpenAIModelConfiguration | OpenAIModelConfiguration):
        configuration = {"type": configuration.type, **asdict(configuration)}
    if isinstance(configuration, CustomConnection):
        return configuration
    if not isinstance(configuration, dict) or not configuration:
        raise ValueError(
            "The prompty has no model.configuration; give `type: azure_openai` (or openai) "
            "with `connection: NAME`, or azure_endpoint/base_url and api_key."
        )
    if configuration.get("connection"):
        return connection_named(str(configuration["connection"]))
    endpoint = configuration.get("azure_endpoint") or configuration.get("base_url")
    key = configuration.get("api_key") or ""
    if not endpoint:
        raise ValueError(
            "The prompty's model.configuration names no connection and no azure_endpoint or "
            "base_url; name a project connection with `connection: NAME`."
        )
    return CustomConnection(
        configs={"endpoint": str(endpoint)}, secrets={"key": str(key)}, name="prompty"
    )


def resolve_references(value: Any, base: Path) -> Any:
    """`${env:NAME}` (the flow's environment; kept as written when unset) and
    `${file:path}` (a file beside the prompty: JSON, YAML or text)."""
    if isinstance(value, dict):
        return {k: resolve_references(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_references(v, base) for v in value]
    if not isinstance(value, str) or (match := _REFERENCE.match(value)) is None:
        return value
    kind, target = match.groups()
    if kind == "env":
        return os.environ.get(target, value)
    if kind == "file":
        path = base / target
        if not path.is_file():
            raise ValueError(f"Cannot find the reference file {target}.")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            return json.loads(text)
        if path.suffix.lower() in (".yaml", ".yml"):
            from lmfoundry.flows.dag import load_yaml

            return load_yaml(text, path.name)
        return text
    return value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, mappings merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = merge(base[key], value)
        else:
            merged[key] = value
    return merged


# -- rendering ------------------------------------------------------------------------------

_jinja = SandboxedEnvironment(trim_blocks=True, keep_trailing_newline=True)


def render_text(template: str, inputs: dict[str, Any]) -> str:
    return _jinja.from_string(template).render(**inputs)


def render_messages(template: str, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of a template: role lines in the inputs' text are masked while the
    rendered text is split, then put back."""
    masks: dict[str, str] = {}
    escaped = {}
    for name, value in inputs.items():
        if isinstance(value, str):
            for role in _ROLE_LINE.findall(value):
                if role not in masks.values():
                    masks[uuid.uuid4().hex] = role
            for token, role in masks.items():
                value = value.replace(role, token)
        escaped[name] = value
    messages = parse_chat(render_text(template, escaped))
    for message in messages:
        for key, value in message.items():
            if isinstance(value, str):
                for token, role in masks.items():
                    value = value.replace(token, role)
                message[key] = value
    return messages


def parse_chat(text: str) -> list[dict[str, Any]]:
    """Prompt flow's chat format: text before the first role line must be blank; a role's
    text may start with `name:` / `content:` (and `tool_call_id:` for tool); an assistant's
    may be `tool_calls:` and a list."""
    import ast

    chunks = _ROLE_LINE.split(text)
    if chunks[0].strip():
        raise ValueError(
            "The Chat API requires a role line such as 'system:' or 'user:' (alone on its line) "
            f"before any text; the prompt starts with {chunks[0].strip()[:40]!r}."
        )
    messages: list[dict[str, Any]] = []
    for role, body in zip(chunks[1::2], chunks[2::2], strict=True):
        message: dict[str, Any] = {"role": role.strip().lower()}
        if message["role"] == "tool":
            found = _TOOL_CONTENT.search(body)
            if found is None:
                raise ValueError(
                    "A tool message gives 'tool_call_id:' then the id, then 'content:' and "
                    "the tool's answer."
                )
            message["tool_call_id"], message["content"] = found.group(1), found.group(2).strip()
        elif message["role"] == "assistant" and (calls := _TOOL_CALLS.search(body)):
            try:
                message["tool_calls"] = ast.literal_eval(calls.group(1))
            except (ValueError, SyntaxError):
                message["content"] = body.strip()
        elif named := _NAME_CONTENT.search(body):
            message["name"], message["content"] = named.group(1), named.group(2).strip()
        elif message["role"] == "function":
            raise ValueError(
                "A function message gives 'name:' then the function's name, then 'content:'."
            )
        else:
            message["content"] = body.strip()
        messages.append(message)
    return messages


# -- the prompty ----------------------------------------------------------------------------


class Prompty:
    """A .prompty loaded for calling: `Prompty.load(source, model={...})`, then
    `prompty(**inputs)` answers and `prompty.render(**inputs)` shows the messages."""

    def __init__(self, path: str | Path, model: dict[str, Any] | None = None, **kwargs: Any):
        self.path = Path(path).resolve()
        config, self._template = split(self.path.read_text(encoding="utf-8"), self.path.name)
        check(config, self._template, self.path.name)
        base = self.path.parent
        config = merge(resolve_references(config, base), resolve_references(kwargs, base))
        override = {
            k: (
                v
                if k == "configuration" and not isinstance(v, dict)
                else resolve_references(v, base)
            )
            for k, v in (model or {}).items()
        }
        model_config = config.get("model") or {}
        if not isinstance(override.get("configuration", {}), dict):
            model_config = {k: v for k, v in model_config.items() if k != "configuration"}
        self._model = merge(model_config, override)
        self._inputs: dict[str, Any] = config.get("inputs") or {}
        self._outputs: dict[str, Any] = config.get("outputs") or {}
        self._sample = config.get("sample")
        self._name = str(config.get("name") or self.path.stem)

    @classmethod
    def load(cls, source: str | Path, **kwargs: Any) -> Prompty:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"Source {path.as_posix()} does not exist")
        if path.suffix != PROMPTY_SUFFIX:
            raise ValueError("Source must be a file with .prompty extension.")
        return cls(path, **kwargs)

    @property
    def api(self) -> str:
        return str(self._model.get("api", "chat"))

    def _resolve_inputs(self, given: dict[str, Any]) -> dict[str, Any]:
        if not given and isinstance(self._sample, dict):
            given = self._sample
        signature = self._inputs or (
            {k: {} for k in self._sample} if isinstance(self._sample, dict) else {}
        )
        missing = [k for k, v in signature.items() if k not in given and "default" not in (v or {})]
        if missing:
            raise ValueError(f"Missing required inputs: {missing}")
        return {k: given.get(k, (v or {}).get("default")) for k, v in signature.items()}

    def render(self, *args: Any, **kwargs: Any) -> str:
        """The rendered prompt: the messages' text for chat (as Prompt flow prints them)."""
        if args:
            raise TypeError("Prompty can only be rendered with keyword arguments.")
        inputs = self._resolve_inputs(kwargs)
        if self.api == "completion":
            return render_text(self._template, inputs)
        return str(render_messages(self._template, inputs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("Prompty can only be called with keyword arguments.")
        inputs = self._resolve_inputs(kwargs)
        connection = model_connection(self._model.get("configuration"))
        params = copy.deepcopy(self._model.get("parameters") or {})
        body: dict[str, Any] = dict(params)
        url = chat_url(connection)
        if self.api == "completion":
            body["prompt"] = render_text(self._template, inputs)
            url = url.removesuffix("/chat/completions") + "/v1/completions"
        else:
            body["messages"] = render_messages(self._template, inputs)
        return self._answer(_post(connection, url, body), body)

    def _answer(self, response: Any, body: dict[str, Any]) -> Any:
        json_format = (body.get("response_format") or {}).get("type") == "json_object"
        if self._model.get("response") == "all":
            return response if not isinstance(response, Iterator) else list(response)
        if isinstance(response, Iterator):
            return self._choice("".join(response)) if json_format else response
        choice = response["choices"][0]
        if self.api == "completion":
            return self._choice(choice.get("text", ""), json_format)
        if choice.get("finish_reason") in ("tool_calls", "function_calls"):
            return choice["message"]
        return self._choice(choice["message"].get("content") or "", json_format)

    def _choice(self, text: str, json_format: bool = True) -> Any:
        if not json_format:
            return text
        answer = json.loads(text)
        if not self._outputs:
            return answer
        missing = [k for k in self._outputs if k not in answer]
        if missing:
            raise KeyError(f"Cannot find {missing[0]} in response {list(answer)}")
        return {k: answer[k] for k in self._outputs}


def _post(connection: CustomConnection, url: str, body: dict[str, Any]) -> Any:
    """The model's answer as JSON; with `stream`, a generator of the answer's text (the path
    llm nodes stream on)."""
    import httpx  # imported here: slow to import, and most flows never call a model

    from lmfoundry.flows.executor import _message, chat_completion

    if body.get("stream"):
        if "messages" not in body:
            raise ValueError("stream: true needs model.api: chat.")
        params = {k: v for k, v in body.items() if k != "messages"}
        return chat_completion(connection, body["messages"], params)
    key = connection.get("key") or connection.get("api_key") or ""
    headers = {"api-key": key, "Authorization": f"Bearer {key}"}
    response = httpx.post(url, json=body, headers=headers, timeout=600)
    if response.status_code >= 400:
        raise RuntimeError(f"{url} answered {response.status_code}: {_message(response)}")
    return response.json()
