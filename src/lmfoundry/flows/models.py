"""Flows as loaded from flow.dag.yaml: inputs, outputs, nodes and the references between them.

`dag.py` builds these from a file and validates them; the executor runs them.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows.fields import connection_references

DAG_FILES = ("flow.dag.yaml", "flow.dag.yml")
INPUT_TYPES = ("string", "int", "double", "bool", "list", "object", "image")
NODE_TYPES = ("python", "llm", "prompt")
_REFERENCE = re.compile(r"^\$\{([^{}]+)\}$")


@dataclass(frozen=True)
class Reference:
    """`${inputs.x}` or `${node.output[.field...]}`."""

    text: str
    root: str  # "inputs" or a node name
    path: tuple[str, ...]  # ("x",) for inputs; ("output", "field", ...) for nodes

    @property
    def node(self) -> str | None:
        return None if self.root == "inputs" else self.root


def parse_reference(value: Any) -> Reference | None:
    """The reference in `value`, or None for a literal: `${root.a.b}` split on dots (column
    mappings' `${data.x}` and `${run.outputs.x}`). Flow files use `parse_dag_reference`."""
    if not isinstance(value, str):
        return None
    match = _REFERENCE.match(value.strip())
    if match is None:
        return None
    root, *path = match.group(1).strip().split(".")
    return Reference(value.strip(), root, tuple(path))


# A property after `${node.output.`, as Prompt flow splits it: names, ['quoted keys'], [0].
_PROPERTY_PART = re.compile(r"(\w+)|(\['.*?'\])|(\[\d+\])")


def parse_dag_reference(value: Any) -> Reference | None:
    """A reference in flow.dag.yaml as Prompt flow reads it, or None for a literal.

    `${inputs.x}` and `${flow.x}` are flow inputs (root "inputs", path ("x",)); `${node}` is
    `${node.output}`; `${node.output.a['b c'][0]}` has the path ("output", "a", "['b c']",
    "[0]"), bracketed parts kept as written (`node_property` reads them)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) < 4 or not text.startswith("${") or not text.endswith("}"):
        return None
    body = text[2:-1].strip()
    if not body or "{" in body or "}" in body:
        return None
    for prefix in ("inputs.", "flow."):
        if body.startswith(prefix):
            return Reference(text, "inputs", (body[len(prefix) :],))
    if "." not in body:
        return Reference(text, body, ("output",))
    node, port = body.split(".", 1)
    if "." not in port:
        return Reference(text, node, (port,))
    section, prop = port.split(".", 1)
    parts = [next(p for p in found if p) for found in _PROPERTY_PART.findall(prop)]
    return Reference(text, node, (section, *parts))


def node_property(value: Any, parts: tuple[str, ...]) -> Any:
    """`value` followed along `parts` (from `parse_dag_reference`) as Prompt flow does: a
    `[0]` indexes, a `['key']` looks up a key, a name looks up a dict key or an attribute."""
    for part in parts:
        if part.startswith("[") and part.endswith("]"):
            index: Any = part[1:-1]
            if len(index) >= 2 and index[0] == index[-1] and index[0] in "'\"":
                index = index[1:-1]
            elif index.isdigit():
                index = int(index)
            value = value[index]
        elif isinstance(value, dict):
            value = value[part]
        else:
            value = getattr(value, part)
    return value


@dataclass(frozen=True)
class FlowInput:
    name: str
    type: str
    default: Any
    has_default: bool
    is_chat_input: bool
    is_chat_history: bool


@dataclass(frozen=True)
class FlowOutput:
    name: str
    type: str
    reference: Reference
    is_chat_output: bool
    evaluation_only: bool


@dataclass(frozen=True)
class ToolParam:
    name: str
    annotation: str | None
    has_default: bool

    @property
    def is_connection(self) -> bool:
        """Takes a connection object: annotated `...Connection` or named `connection`."""
        if self.annotation and re.search(r"\w*Connection\b", self.annotation):
            return True
        return self.name == "connection"


@dataclass(frozen=True)
class Activate:
    """`activate: {when: ..., is: ...}`. `when` is a reference, or None when the file gives a
    literal (`literal`), which Prompt flow compares with `is` as it stands."""

    when: Reference | None
    value: Any
    literal: Any = None


@dataclass(frozen=True)
class Node:
    name: str
    type: str
    source: str  # path relative to the flow folder
    inputs: dict[str, Any]
    activate: Activate | None = None
    aggregation: bool = False
    connection: str | None = None  # llm nodes
    function: str | None = None  # python nodes: the @tool function
    params: tuple[ToolParam, ...] = ()
    connection_inputs: dict[str, str] = field(default_factory=dict)  # input -> connection
    # a class tool (a ToolProvider subclass): its name and its __init__ parameters, which
    # take node inputs of those names; `function` is then the @tool method
    tool_class: str | None = None
    init_params: tuple[ToolParam, ...] = ()
    variant: str | None = None  # the node_variants entry this node is (use_variants: true)

    def references(self) -> list[Reference]:
        refs = [r for r in map(parse_dag_reference, self.inputs.values()) if r is not None]
        if self.activate is not None and self.activate.when is not None:
            refs.append(self.activate.when)
        return refs

    @property
    def dependencies(self) -> set[str]:
        return {r.root for r in self.references() if r.node is not None}


@dataclass(frozen=True)
class Dag:
    folder: Path
    inputs: dict[str, FlowInput]
    outputs: dict[str, FlowOutput]
    nodes: tuple[Node, ...]  # in an order that runs every node after its dependencies
    environment_variables: dict[str, str]
    # (file, connection) for .prompty files in the folder that name one: flow code loads them
    prompty_connections: tuple[tuple[str, str], ...] = ()
    name: str | None = None  # the file's top-level `name`
    environment: dict[str, Any] = field(default_factory=dict)  # `environment:` as written
    additional_includes: tuple[str, ...] = ()
    message_format: str = "basic"  # how images are written: "basic" or "openai-vision"
    # what lmfoundry reads differently from Prompt flow, or ignores, said once per flow
    warnings: tuple[str, ...] = ()
    # outputs that refer to aggregation nodes: not line outputs (Prompt flow leaves them out)
    aggregation_outputs: tuple[str, ...] = ()

    @property
    def chat_input(self) -> str | None:
        return next((i.name for i in self.inputs.values() if i.is_chat_input), None)

    @property
    def chat_history(self) -> str | None:
        return next((i.name for i in self.inputs.values() if i.is_chat_history), None)

    @property
    def chat_output(self) -> str | None:
        return next((o.name for o in self.outputs.values() if o.is_chat_output), None)

    @property
    def kind(self) -> str:
        return "chat" if self.chat_input else "standard"

    @property
    def line_nodes(self) -> list[Node]:
        return [n for n in self.nodes if not n.aggregation]

    @property
    def aggregation_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.aggregation]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def connection_uses(self) -> list[tuple[str, str, str]]:
        """(node, input, connection name) for every connection the flow names."""
        uses = []
        for node in self.nodes:
            if node.connection:
                uses.append((node.name, "connection", node.connection))
            uses.extend((node.name, i, c) for i, c in node.connection_inputs.items())
        uses.extend((f, "model.configuration.connection", c) for f, c in self.prompty_connections)
        references = connection_references(self.environment_variables)
        uses.extend(("environment_variables", v, c) for v, (c, _) in references.items())
        return uses

    @property
    def connection_names(self) -> list[str]:
        return sorted({c for _, _, c in self.connection_uses()})

    def interface(self) -> dict[str, Any]:
        """What the API shows about a flow: kind, inputs, outputs, nodes, connections."""
        return {
            "kind": self.kind,
            "inputs": {
                i.name: {
                    "type": i.type,
                    **({"default": i.default} if i.has_default else {}),
                    "is_chat_input": i.is_chat_input,
                    "is_chat_history": i.is_chat_history,
                }
                for i in self.inputs.values()
            },
            "outputs": {
                o.name: {
                    "type": o.type,
                    "reference": o.reference.text,
                    "is_chat_output": o.is_chat_output,
                }
                for o in self.outputs.values()
            },
            "nodes": [
                {"name": n.name, "type": n.type, "aggregation": n.aggregation} for n in self.nodes
            ],
            "connections": self.connection_names,
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }

    def resolve_inputs(self, given: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
        """The inputs of one line: given values converted to their declared types, defaults
        for the rest. `strict` rejects names the flow does not declare."""
        unknown = sorted(set(given) - set(self.inputs))
        if unknown and strict:
            raise InvalidRequest(
                f"The flow has no input {', '.join(map(repr, unknown))}; its inputs are "
                f"{', '.join(self.inputs) or 'none'}.",
                param=f"inputs.{unknown[0]}",
            )
        values: dict[str, Any] = {}
        missing = []
        for spec in self.inputs.values():
            if spec.name in given:
                values[spec.name] = convert_input(spec, given[spec.name])
            elif spec.has_default:
                values[spec.name] = copy.deepcopy(spec.default)
            elif spec.is_chat_history:
                values[spec.name] = []
            else:
                missing.append(spec.name)
        if missing:
            raise InvalidRequest(
                f"Input {', '.join(map(repr, missing))} has no value and no default; give it "
                f"(for example --inputs {missing[0]}=...).",
                param=f"inputs.{missing[0]}",
            )
        return values


def convert_input(spec: FlowInput, value: Any) -> Any:
    """`value` as the input's declared type; InvalidRequest naming the input if it is not."""

    def bad(why: str = "") -> InvalidRequest:
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return InvalidRequest(
            f"Input {spec.name!r} is declared {spec.type} but got {shown}{why}.",
            param=f"inputs.{spec.name}",
        )

    kind = "list" if spec.is_chat_history else spec.type
    if kind == "string":
        if isinstance(value, dict | list):
            return json.dumps(value)
        return value if isinstance(value, str) else str(value)
    if kind == "int":
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if kind == "double":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise bad(" (use true or false)")
    if kind == "image":  # read in the flow process (flows/images.py), never here; an empty
        # one fails the line there, as in Prompt flow, which loads a flow with a "" default
        if isinstance(value, str | dict | list):
            return value
        raise bad(' (give {"data:image/png;path": "FILE"} or ;base64 data)')
    expected = list if kind == "list" else dict
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise bad(" (give it as JSON)") from None
    if not isinstance(value, expected):
        raise bad()
    # chat history is usually [{"inputs": {...}, "outputs": {...}}], but like Prompt flow any
    # list is taken: the flow's code decides what it reads
    return value
