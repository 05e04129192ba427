"""A flow.dag.yaml as the studio shows it: nodes, edges, layers, and problems with lines.

This is the editor's quick check and the graph's source, not the flow loader: the server
validates a flow again, fully, when it is uploaded, and the studio shows that answer too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from lmfoundry.flows.dag import compose_yaml, load_yaml

REFERENCE = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
INPUTS, OUTPUTS = "inputs", "outputs"


@dataclass
class FlowGraph:
    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    is_chat: bool = False

    def error(self, line: int | None, message: str) -> None:
        problem = {"line": line, "message": message}
        if problem not in self.errors:
            self.errors.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "edges": self.edges,
            "errors": self.errors,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "is_chat": self.is_chat,
        }


def _strings(value: Any, budget: int = 20_000) -> list[str]:
    """The strings inside `value`, visiting at most `budget` items (YAML aliases can make a
    small file a huge tree)."""
    out: list[str] = []
    stack = [value]
    while stack and budget > 0:
        budget -= 1
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return out


def _node_lines(text: str) -> list[int]:
    """1-based line of each entry of `nodes:`, from the composed YAML tree."""
    root = compose_yaml(text)
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if key.value == "nodes" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def dag_text(definition: dict[str, Any]) -> str:
    """flow.dag.yaml text for a parsed flow (`inputs`, `outputs`, `nodes`), for servers that
    answer with the flow's interface rather than its files."""
    keys = ("inputs", "outputs", "nodes")
    return yaml.safe_dump({k: definition.get(k) or {} for k in keys}, sort_keys=False)


def parse_flow(text: str) -> FlowGraph:
    graph = FlowGraph()
    try:
        dag = load_yaml(text)  # anchors and aliases: a 400 naming the line
        lines = _node_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        graph.error(mark.line + 1 if mark else None, f"YAML syntax: {problem}")
        return graph
    if not isinstance(dag, dict):
        graph.error(1, "flow.dag.yaml must be a mapping with inputs, outputs and nodes.")
        return graph
    graph.inputs = dag.get(INPUTS) or {}
    graph.outputs = dag.get(OUTPUTS) or {}
    raw_nodes = dag.get("nodes") or []
    if not isinstance(graph.inputs, dict) or not isinstance(graph.outputs, dict):
        graph.error(None, "inputs and outputs must be mappings of names to definitions.")
        return graph
    if not isinstance(raw_nodes, list) or not raw_nodes:
        graph.error(None, "nodes must be a non-empty list.")
        return graph
    graph.is_chat = any(
        isinstance(v, dict) and v.get("is_chat_input") for v in graph.inputs.values()
    )
    names: dict[str, int | None] = {}
    for index, node in enumerate(raw_nodes):
        line = lines[index] if index < len(lines) else None
        if not isinstance(node, dict) or not node.get("name"):
            graph.error(line, f"node {index + 1} needs a name.")
            continue
        name = str(node["name"])
        if name in (INPUTS, OUTPUTS):
            graph.error(line, f"node name {name!r} is reserved.")
        if name in names:
            graph.error(line, f"node name {name!r} is used twice (also on line {names[name]}).")
        names[name] = line
        if not node.get("type"):
            graph.error(line, f"node {name!r} needs a type (python, llm or prompt).")
        graph.nodes.append({"id": name, "type": str(node.get("type", "")), "line": line})
    for node in raw_nodes:
        if isinstance(node, dict) and node.get("name"):
            _link(graph, str(node["name"]), [node.get("inputs"), node.get("activate")], names)
    for output, spec in graph.outputs.items():
        reference = spec.get("reference") if isinstance(spec, dict) else spec
        _link(graph, f"{OUTPUTS}.{output}", [reference], names, target=OUTPUTS)
    _layer(graph)
    return graph


def _link(
    graph: FlowGraph,
    node: str,
    values: list[Any],
    names: dict[str, int | None],
    target: str | None = None,
) -> None:
    line = names.get(node)
    for text in _strings(values):
        for source, attribute in REFERENCE.findall(text):
            if source == INPUTS:
                if attribute not in graph.inputs:
                    graph.error(
                        line, f"{node} uses ${{inputs.{attribute}}}, which is not an input."
                    )
                    continue
            elif source not in names:
                graph.error(
                    line, f"{node} uses ${{{source}.{attribute}}}; there is no node {source!r}."
                )
                continue
            edge = {"from": source, "to": target or node}
            if edge not in graph.edges:
                graph.edges.append(edge)


def _layer(graph: FlowGraph) -> None:
    """Column of each node: one more than the deepest node it reads from; a cycle is an error."""
    parents: dict[str, list[str]] = {n["id"]: [] for n in graph.nodes}
    for edge in graph.edges:
        if edge["to"] in parents and edge["from"] in parents:
            parents[edge["to"]].append(edge["from"])
    depth: dict[str, int] = {}
    visiting: set[str] = set()

    def visit(name: str) -> int:
        if name in depth:
            return depth[name]
        if name in visiting:
            raise ValueError(name)
        visiting.add(name)
        depth[name] = 1 + max((visit(p) for p in parents[name]), default=0)
        visiting.discard(name)
        return depth[name]

    try:
        for name in parents:
            visit(name)
    except ValueError as exc:
        graph.error(None, f"the nodes form a cycle through {exc.args[0]!r}.")
        return
    rows: dict[int, int] = {}
    for node in graph.nodes:
        layer = depth[node["id"]]
        node["layer"] = layer
        node["row"] = rows.get(layer, 0)
        rows[layer] = node["row"] + 1
