"""Connection bindings: which connection fills each connection input of a flow's nodes.

Prompt flow lets a flow leave them open in flow.dag.yaml and bind them when it runs
(`pf flow test --connections node.input=name`, or the portal's "Validate and parse input"
step, which picks one per input). lmfoundry does the same: a binding map
`{"node.input": "connection name"}` comes with a test, a run or a deploy (or is saved on an
uploaded flow by the studio's picker), is checked here against the flow and the project's
connections, and is applied to the loaded flow before it runs. An input left unbound takes
the project's only connection of a fitting type; with none or several, it is a 400 naming
the input and the flag that binds it.

Nothing here imports flow code; the flow process imports `apply` to bind its own copy.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows.models import Dag, Node

FLAG = "--connections"
# Connection types whose values flow code can use for each connection class. An `lmfoundry`
# connection reaches flow code as a CustomConnection with `endpoint` and `key`, so it fits
# wherever a chat endpoint is wanted; classes for other services (search, storage) take the
# configs and secrets of a `custom` one.
CHAT_TYPES = ("custom", "lmfoundry")
CHAT_CLASSES = {
    "CustomConnection",
    "OpenAIConnection",
    "AzureOpenAIConnection",
    "ServerlessConnection",
    "AzureAIServicesConnection",
    "connection",  # an untyped parameter named `connection`, and llm nodes
}
_CLASS = re.compile(r"(\w*Connection)\b")


@dataclass(frozen=True)
class Slot:
    """One connection input of a node: what it takes and what flow.dag.yaml names for it."""

    node: str
    input: str
    takes: str  # the connection class of the parameter ("connection" for llm/untyped)
    declared: str | None  # the connection flow.dag.yaml names, if it names one

    @property
    def key(self) -> str:
        return f"{self.node}.{self.input}"

    @property
    def types(self) -> tuple[str, ...]:
        return CHAT_TYPES if self.takes in CHAT_CLASSES else ("custom",)

    def view(self, bound: str | None) -> dict[str, Any]:
        return {
            "key": self.key,
            "node": self.node,
            "input": self.input,
            "takes": self.takes,
            "types": list(self.types),
            "declared": self.declared,
            "bound": bound,
        }


def _class_of(annotation: str | None) -> str:
    match = _CLASS.search(annotation or "")
    return match.group(1) if match else "connection"


def slots(dag: Dag) -> list[Slot]:
    """Every input of the flow that takes a connection, in node order."""
    found = []
    for node in dag.nodes:
        if node.type == "llm":
            found.append(Slot(node.name, "connection", "connection", node.connection))
            continue
        for param in node.params:
            if param.is_connection:
                declared = node.connection_inputs.get(param.name)
                found.append(Slot(node.name, param.name, _class_of(param.annotation), declared))
        for key, name in node.connection_inputs.items():  # declared, without a typed parameter
            if not any(p.name == key for p in node.params):
                found.append(Slot(node.name, key, "connection", name))
    return found


def _needed(dag: Dag, slot: Slot) -> bool:
    """Whether running the flow needs the slot bound (a parameter with a default does not)."""
    node = dag.node(slot.node)
    param = next((p for p in node.params if p.name == slot.input), None)
    return param is None or not param.has_default


def parse_pairs(values: list[str]) -> dict[str, str]:
    """`node.input=name` pairs (the flag's form) as a binding map."""
    result = {}
    for value in values:
        key, sep, name = value.partition("=")
        if not sep or "." not in key or not name:
            raise InvalidRequest(
                f"{FLAG} takes NODE.INPUT=CONNECTION (for example "
                f"{FLAG} my_node.connection=my_connection), not {value!r}.",
                param="connections",
            )
        result[key.strip()] = name.strip()
    return result


@dataclass(frozen=True)
class Resolution:
    """The bindings a flow runs with: given or saved ones, and those chosen by default."""

    bindings: dict[str, str]  # node.input -> connection, for every slot bound at run time
    defaulted: dict[str, str]  # the subset chosen as the project's only fitting connection

    def view(self) -> dict[str, Any]:
        return {"connection_bindings": self.bindings, "defaulted_connections": self.defaulted}


def check(
    dag: Dag, given: Mapping[str, Any], available: Mapping[str, str], defaults: bool = True
) -> Resolution:
    """Check `given` ({node.input: name}) against the flow and the project's connections
    (`available`: name -> type) and bind what is still open by default; 400 naming the input
    and the fix for each problem."""
    by_key = {s.key: s for s in slots(dag)}
    nodes = {n.name for n in dag.nodes}
    bindings: dict[str, str] = {}
    for key, name in given.items():
        node, _, field = str(key).partition(".")
        where = f"connections.{key}"
        if node not in nodes:
            raise InvalidRequest(
                f"{FLAG} names node {node!r}, which is not in the flow (nodes: "
                f"{', '.join(sorted(nodes))}); write {FLAG} NODE.INPUT=CONNECTION.",
                param=where,
            )
        slot = by_key.get(str(key))
        if slot is None:
            own = [s.input for s in by_key.values() if s.node == node]
            has = f"its connection inputs: {', '.join(own)}" if own else "it has none"
            raise InvalidRequest(
                f"Node {node!r} input {field!r} does not take a connection ({has}); "
                f"{FLAG} binds inputs whose tool parameter is typed as a connection class "
                "(such as `connection: CustomConnection`) and llm nodes' `connection`.",
                param=where,
            )
        if not isinstance(name, str) or not name:
            raise InvalidRequest(
                f"{key} must be bound to a connection's name (a string).", param=where
            )
        _check_fits(slot, name, available, where)
        bindings[slot.key] = name
    defaulted: dict[str, str] = {}
    for slot in by_key.values():
        if slot.key in bindings or slot.declared or not _needed(dag, slot):
            continue
        if not defaults:
            continue
        fitting = sorted(n for n, kind in available.items() if kind in slot.types)
        what = f"Node {slot.node!r} input {slot.input!r} takes a {slot.takes} and is not bound"
        if not fitting:
            raise InvalidRequest(
                f"{what}, and the project has no connection of type "
                f"{' or '.join(slot.types)}; create one (`lmfoundry connections create NAME "
                f"--config endpoint=URL --secret key`) and bind it with {FLAG} {slot.key}=NAME.",
                param=f"connections.{slot.key}",
            )
        if len(fitting) > 1:
            raise InvalidRequest(
                f"{what}, and {len(fitting)} connections of the project fit "
                f"({', '.join(fitting)}); choose one with {FLAG} {slot.key}=NAME (or pick it "
                "on the flow's page in the studio).",
                param=f"connections.{slot.key}",
            )
        bindings[slot.key] = defaulted[slot.key] = fitting[0]
    return Resolution(bindings, defaulted)


def _check_fits(slot: Slot, name: str, available: Mapping[str, str], where: str) -> None:
    if name not in available:
        shown = ", ".join(sorted(available)) or "none"
        raise InvalidRequest(
            f"{slot.key} is bound to connection {name!r}, which does not exist in this project "
            f"(connections: {shown}); create it with `lmfoundry connections create {name} "
            "--config endpoint=URL --secret key` (or --file connection.yaml).",
            param=where,
        )
    if available[name] not in slot.types:
        raise InvalidRequest(
            f"{slot.key} takes a {slot.takes}, but connection {name!r} is of type "
            f"{available[name]!r}; bind a connection of type {' or '.join(slot.types)}.",
            param=where,
        )


def carry_over(dag: Dag, saved: Mapping[str, str]) -> dict[str, str]:
    """The saved bindings that still name a connection input of (a new version of) the flow."""
    keys = {s.key for s in slots(dag)}
    return {k: v for k, v in saved.items() if k in keys}


def apply(dag: Dag, bindings: Mapping[str, str]) -> Dag:
    """The flow with each bound input naming its connection, as if flow.dag.yaml said so
    (the portal writes `connection: NAME` into the node's inputs the same way)."""
    if not bindings:
        return dag
    nodes: list[Node] = []
    for node in dag.nodes:
        mine = {
            k.partition(".")[2]: v for k, v in bindings.items() if k.partition(".")[0] == node.name
        }
        if not mine:
            nodes.append(node)
        elif node.type == "llm":
            nodes.append(
                dataclasses.replace(node, connection=mine.get("connection", node.connection))
            )
        else:
            nodes.append(
                dataclasses.replace(
                    node,
                    inputs={**node.inputs, **mine},
                    connection_inputs={**node.connection_inputs, **mine},
                )
            )
    return dataclasses.replace(dag, nodes=tuple(nodes))
