"""`.prompty` files: loading and checking, before anything renders.

A prompty is a Markdown file whose YAML front matter (between `---` lines) gives `name`,
`description`, `model` (`api`, `configuration`, `parameters`, `response`), `inputs`,
`outputs` and `sample`, followed by a Jinja chat template (`system:`, `user:` ... lines).
A folder with one .prompty and no flow.dag.yaml or flow.flex.yaml is a prompty flow, as
`pf flow test --flow x.prompty` runs it; flow code (a python node or a flex entry) loads one
with `from promptflow.core import Prompty`.

`model.configuration` (`type: azure_openai` or `openai`) reaches a model through a project
connection (`connection: NAME`: a custom one with endpoint and key, or an `lmfoundry` one that
points at a deployment or an online endpoint), or through `azure_endpoint` / `base_url` with
`api_key` (`${env:NAME}` read from the flow's environment_variables). Here the front matter
is only read (YAML without aliases) and the template only parsed; it renders in the flow
process (`prompty_run.py`), in the sandbox, as llm and prompt nodes do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jinja2
import yaml

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows.dag import load_yaml
from lmfoundry.flows.flex import (
    ANY,
    PROMPTY_SUFFIX,
    FlexFlow,
    environment_variables,
)
from lmfoundry.flows.flex_init import refuse_key
from lmfoundry.flows.models import INPUT_TYPES, FlowInput, FlowOutput, Reference

# Prompt flow's split: the front matter runs from the first `---` line to the last one.
_FRONT_MATTER = re.compile(r"-{3,}\n(.*)-{3,}\n(.*)", re.DOTALL)
_KEYS = {"name", "description", "model", "inputs", "outputs", "sample", "template", "version"}
_KEYS |= {"authors", "tags", "metadata", "$schema", "environment_variables"}
CONFIGURATION_TYPES = ("azure_openai", "openai")


def split(text: str, name: str) -> tuple[dict[str, Any], str]:
    """(front matter, template) of a prompty's text; 400 naming the file when it has no
    front matter or the YAML is not a mapping."""
    match = _FRONT_MATTER.search(text.replace("\r\n", "\n"))
    if match is None:
        raise InvalidRequest(
            f"{name} is not a prompty: it starts with YAML front matter between two `---` "
            "lines (name, model, inputs), followed by the prompt template.",
            param="flow",
        )
    try:
        config = load_yaml(match.group(1), name)
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{name}: the front matter is not valid YAML: {exc}") from exc
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InvalidRequest(f"{name}: the front matter must be a mapping (name, model, inputs).")
    return config, match.group(2)


def front_matter(path: Path, name: str) -> dict[str, Any]:
    try:
        return split(path.read_text(encoding="utf-8"), name)[0]
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{name} is not UTF-8 text.", param="flow") from exc


def check(config: dict[str, Any], template: str, name: str) -> None:
    """The problems Prompt flow finds on load, named by field, without rendering."""
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise InvalidRequest(f"{name}: unknown front matter field {unknown[0]!r}.")
    model = config.get("model") or {}
    if not isinstance(model, dict):
        raise InvalidRequest(f"{name}: model must be a mapping (api, configuration, parameters).")
    api = model.get("api", "chat")
    if api not in ("chat", "completion"):
        raise InvalidRequest(f"{name}: model.api is {api!r}; use chat or completion.")
    configuration = model.get("configuration") or {}
    if not isinstance(configuration, dict):
        raise InvalidRequest(f"{name}: model.configuration must be a mapping.")
    kind = configuration.get("type")
    if configuration and kind not in CONFIGURATION_TYPES:
        raise InvalidRequest(
            f"{name}: model.configuration.type is {kind!r}; use azure_openai or openai (with "
            "connection: NAME, or azure_endpoint/base_url and api_key)."
        )
    others = {k for k, v in configuration.items() if v} - {"type", "connection", "model"}
    if configuration.get("connection") and others - {"azure_deployment"}:
        raise InvalidRequest(
            f"{name}: model.configuration gives both a connection and "
            f"{', '.join(sorted(others - {'azure_deployment'}))}; give one or the other "
            "(Prompt flow refuses both too)."
        )
    for field, value in (
        ("model.parameters", model.get("parameters")),
        ("inputs", config.get("inputs")),
        ("outputs", config.get("outputs")),
    ):
        if value is not None and not isinstance(value, dict):
            raise InvalidRequest(f"{name}: {field} must be a mapping.")
    if model.get("response", "first") not in ("first", "all"):
        raise InvalidRequest(f"{name}: model.response is first or all.")
    try:
        jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidRequest(
            f"{name}: the template (line {exc.lineno} after the front matter) does not parse: "
            f"{exc.message}"
        ) from exc


@dataclass(frozen=True)
class PromptyFlow(FlexFlow):
    """A folder whose flow is one .prompty (`source`); `init_kwargs` may hold `model`, a
    dict merged over the front matter's (Prompt flow's `--init` for prompty flows)."""

    @property
    def kind(self) -> str:
        return "chat" if self.chat_input else "prompty"

    def interface(self) -> dict[str, Any]:
        view = super().interface()
        view["nodes"] = [{"name": self.function, "type": "prompty", "aggregation": False}]
        view.pop("entry", None)
        return view

    def connection_uses(self) -> list[tuple[str, str, str]]:
        uses = list(super().connection_uses())
        model = self.init_kwargs.get("model") or {}
        configuration = model.get("configuration") if isinstance(model, dict) else None
        if isinstance(configuration, dict) and isinstance(configuration.get("connection"), str):
            uses = [u for u in uses if u[0] != self.source]
            uses.append(("__init__", "model.configuration.connection", configuration["connection"]))
        return uses

    def with_init(self, given: dict[str, Any] | None) -> PromptyFlow:
        given = dict(given or {})
        unknown = sorted(set(given) - {"model"})
        if unknown:
            raise InvalidRequest(
                f"A prompty flow takes one init argument, model (a mapping merged over the "
                f"front matter's model), not {', '.join(map(repr, unknown))}.",
                param=f"init.{unknown[0]}",
            )
        model = given.get("model")
        if isinstance(model, str):
            try:
                model = json.loads(model)
            except ValueError:
                model = None
        if "model" in given and not isinstance(model, dict):
            raise InvalidRequest(
                'Init argument model is a JSON object, e.g. {"parameters": {"max_tokens": 64}}.',
                param="init.model",
            )
        configuration = (model or {}).get("configuration")
        if isinstance(configuration, dict):
            refuse_key(configuration, "init.model.configuration")
        return replace(self, init_kwargs={"model": model} if model else {})


def _type(spec: Any) -> str:
    kind = str(spec.get("type", "string")) if isinstance(spec, dict) else "string"
    return kind if kind in INPUT_TYPES else ANY


def _sample(raw: Any, folder: Path, name: str) -> Any:
    """`sample:` inline, or a JSON file beside the prompty (`sample.json` or
    `${file:sample.json}`), as Prompt flow reads it."""
    if not isinstance(raw, str):
        return raw
    target = raw[len("${file:") : -1] if raw.startswith("${file:") and raw.endswith("}") else raw
    path = (folder / target).resolve()
    if path.suffix != ".json" or not path.is_relative_to(folder) or not path.is_file():
        raise InvalidRequest(f"{name}: sample {raw!r} is not a JSON file in the flow folder.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{name}: sample file {target} is not JSON: {exc}") from exc


def load_prompty_flow(folder: Path) -> PromptyFlow:
    """The folder's one .prompty as a flow: its inputs (or the sample's names), its outputs
    (`outputs:` of a JSON answer, else `output`)."""
    folder = folder.resolve()
    path = next(iter(sorted(folder.glob(f"*{PROMPTY_SUFFIX}"))))
    config, template = split(path.read_text(encoding="utf-8"), path.name)
    check(config, template, path.name)
    raw_inputs = config.get("inputs") or {}
    sample = _sample(config.get("sample"), folder, path.name)
    if not raw_inputs and isinstance(sample, dict):  # Prompt flow types them by the sample
        raw_inputs = {k: {"type": ANY} for k in sample}
    inputs = {
        str(k): FlowInput(
            str(k),
            _type(spec),
            spec.get("default") if isinstance(spec, dict) else None,
            isinstance(spec, dict) and "default" in spec,
            bool(isinstance(spec, dict) and spec.get("is_chat_input")),
            bool(isinstance(spec, dict) and spec.get("is_chat_history")),
        )
        for k, spec in raw_inputs.items()
    }
    name = str(config.get("name") or path.stem)
    ref = Reference(f"${{{path.stem}.output}}", path.stem, ("output",))
    declared = config.get("outputs") or {}
    outputs = {
        str(k): FlowOutput(
            str(k), _type(v), ref, bool(isinstance(v, dict) and v.get("is_chat_output")), False
        )
        for k, v in (declared.items() if declared else [("output", {"type": "string"})])
    }
    return PromptyFlow(
        folder,
        inputs,
        outputs,
        (),
        environment_variables(config.get("environment_variables"), path.name),
        entry=path.name,
        source=path.name,
        function=name,
        sample={"inputs": sample} if isinstance(sample, dict) else {},
        prompty_connections=prompty_connections(folder),
    )


def prompty_connections(folder: Path) -> tuple[tuple[str, str], ...]:
    """(file, connection) for every .prompty under `folder` whose model names a connection,
    so that the flow process receives it (flow code loads them with `Prompty.load`)."""
    found = []
    for path in sorted(folder.rglob(f"*{PROMPTY_SUFFIX}")):
        relative = path.relative_to(folder).as_posix()
        if any(p.startswith(".") or p == "__pycache__" for p in Path(relative).parts):
            continue
        try:
            config = front_matter(path, relative).get("model") or {}
        except InvalidRequest:  # not a prompty after all: it fails where code loads it
            continue
        configuration = config.get("configuration") if isinstance(config, dict) else None
        connection = configuration.get("connection") if isinstance(configuration, dict) else None
        if isinstance(connection, str) and connection and "${" not in connection:
            found.append((relative, connection))
    return tuple(found)
