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

DAG_FILES = ("flow.dag.yaml", "flow.dag.yml")
INPUT_TYPES = ("string", "int", "double", "bool", "list", "object")
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
    """The reference in `value`, or None for a literal."""
    if not isinstance(value, str):
        return None
    match = _REFERENCE.match(value.strip())
    if match is None:
        return None
    root, *path = match.group(1).strip().split(".")
    return Reference(value.strip(), root, tuple(path))


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
    when: Reference
    value: Any


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

    def references(self) -> list[Reference]:
        refs = [r for r in map(parse_reference, self.inputs.values()) if r is not None]
        if self.activate is not None:
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
    expected = list if kind == "list" else dict
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise bad(" (give it as JSON)") from None
    if not isinstance(value, expected):
        raise bad()
    if spec.is_chat_history and not all(isinstance(item, dict) for item in value):
        raise bad(' (chat history is a list of {"inputs": {...}, "outputs": {...}})')
    return value
