"""`flow.dag.yaml`: loading and validation, before any user code runs.

A flow is rejected here, with every problem named by node and field, when it has a cycle, a
reference to a missing node or input, an unknown node type, a missing source file, a Python
file without a `@tool` function (found by reading the file, not importing it), a template
that does not parse, or a tool parameter with no input. Nothing in this module imports or
runs the flow's code, so the server can call it on an upload.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows.fields import environment_variables, top_level
from lmfoundry.flows.models import (
    DAG_FILES,
    INPUT_TYPES,
    NODE_TYPES,
    Activate,
    Dag,
    FlowInput,
    FlowOutput,
    Node,
    Reference,
    ToolParam,
    convert_input,
    parse_dag_reference,
)
from lmfoundry.flows.ordering import topological
from lmfoundry.flows.pytools import find_tools, params_of
from lmfoundry.flows.variants import apply_default_variants
from lmfoundry.flows.yamlfile import compose_yaml, load_yaml

__all__ = ["compose_yaml", "find_dag_file", "load_dag", "load_yaml"]

_FLOW_KEYS = {
    "$schema",
    "inputs",
    "outputs",
    "nodes",
    "environment_variables",
    "description",
    "display_name",
    "tags",
    # Prompt flow's other top-level fields
    "name",
    "id",
    "environment",
    "node_variants",
    "additional_includes",
    "language",
    "message_format",
}
_INPUT_KEYS = {"type", "default", "description", "enum", "is_chat_input", "is_chat_history"}
_OUTPUT_KEYS = {"type", "reference", "description", "is_chat_output", "evaluation_only"}
_NODE_KEYS = {
    "name",
    "type",
    "source",
    "inputs",
    "activate",
    "aggregation",
    "connection",
    "api",
    # informational in Prompt flow files; they change nothing here
    "provider",
    "module",
    "comment",
    "description",
    "enable_cache",
    "use_variants",
    "reduce",  # Prompt flow's old word for aggregation
    "tool",
    "__variant__",  # set by variants.py
}


class _Problems:
    def __init__(self, dag_file: str) -> None:
        self.dag_file = dag_file
        self.items: list[tuple[str, str]] = []  # (field path, message)
        self.warnings: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append((where, message))

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        where, first = self.items[0]
        more = f" (and {len(self.items) - 1} more problem(s))" if len(self.items) > 1 else ""
        raise InvalidRequest(
            f"{self.dag_file} is not a valid flow: {first}{more}",
            param=where,
            detail={"problems": [{"field": w, "message": m} for w, m in self.items]},
        )


def find_dag_file(folder: Path) -> Path:
    for name in DAG_FILES:
        if (folder / name).is_file():
            return folder / name
    raise InvalidRequest(
        f"No flow.dag.yaml in {folder.name or folder}; a flow is a folder with flow.dag.yaml "
        "and the code and templates its nodes name.",
        param="flow",
    )


def load_dag(folder: Path) -> Dag:
    """Read and validate `folder/flow.dag.yaml`; InvalidRequest lists every problem."""
    folder = folder.resolve()
    from lmfoundry.flows.flex import load_other_flow  # flow.flex.yaml and .prompty flows

    if (other := load_other_flow(folder)) is not None:
        return other
    path = find_dag_file(folder)
    problems = _Problems(path.name)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), path.name)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path.name} is not valid YAML: {exc}", param="flow") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path.name} must be a mapping with inputs, outputs and nodes.")
    for key in sorted(set(data) - _FLOW_KEYS):
        hint = " (did you mean node_variants?)" if key == "node_variables" else ""
        problems.warn(f"unknown top-level field {key!r} is ignored{hint}")
    inputs = _inputs(data.get("inputs") or {}, problems)
    raw_nodes = data.get("nodes") or []
    if not isinstance(raw_nodes, list) or not raw_nodes:
        problems.add("nodes", "nodes must be a non-empty list")
        raw_nodes = []
    raw_nodes = apply_default_variants(raw_nodes, data.get("node_variants"), problems.add)
    nodes = [n for n in (_node(folder, i, raw, problems) for i, raw in enumerate(raw_nodes)) if n]
    names = [n.name for n in nodes]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.add(f"nodes.{name}", f"two nodes are named {name!r}; node names are unique")
    by_name: dict[str, Node] = {}
    for node in nodes:
        by_name.setdefault(node.name, node)
    nodes = list(by_name.values())
    for node in nodes:
        _check_references(node, inputs, by_name, problems)
    outputs = _outputs(data.get("outputs") or {}, inputs, by_name, problems)
    _check_chat(inputs, outputs, problems)
    dropped = tuple(
        name
        for name, spec in (data.get("outputs") or {}).items()
        if isinstance(spec, dict)
        and (ref := parse_dag_reference(spec.get("reference"))) is not None
        and ref.root in by_name
        and by_name[ref.root].aggregation
    )
    env = environment_variables(data.get("environment_variables") or {}, problems.add)
    top = top_level(data, problems.add, problems.warn)
    ordered = topological(nodes, lambda cycle: _cycle(cycle, problems))
    problems.raise_if_any()
    from lmfoundry.flows.prompty import prompty_connections  # .prompty files its code loads

    return Dag(
        folder,
        inputs,
        outputs,
        tuple(ordered),
        env,
        prompty_connections=prompty_connections(folder),
        warnings=tuple(problems.warnings),
        aggregation_outputs=dropped,
        **top,
    )


def _flag(raw: dict[str, Any], key: str, where: str, problems: _Problems) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        problems.add(f"{where}.{key}", f"{where}: {key} must be true or false")
        return False
    return value


def _inputs(raw: Any, problems: _Problems) -> dict[str, FlowInput]:
    if not isinstance(raw, dict):
        problems.add("inputs", "inputs must be a mapping of input names to {type, default}")
        return {}
    result = {}
    for name, spec in raw.items():
        where = f"inputs.{name}"
        spec = spec if isinstance(spec, dict) else {"type": spec}
        for key in sorted(set(spec) - _INPUT_KEYS):
            problems.add(f"{where}.{key}", f"input {name!r}: unknown field {key!r}")
        kind = str(spec.get("type", "string"))
        if kind not in INPUT_TYPES:
            problems.add(
                f"{where}.type",
                f"input {name!r} has type {kind!r}; use one of {', '.join(INPUT_TYPES)}",
            )
            kind = "string"
        is_history = _flag(spec, "is_chat_history", f"input {name!r}", problems)
        flow_input = FlowInput(
            name=str(name),
            type=kind,
            default=spec.get("default"),
            has_default="default" in spec,
            is_chat_input=_flag(spec, "is_chat_input", f"input {name!r}", problems),
            is_chat_history=is_history,
        )
        if flow_input.has_default and flow_input.default is not None:
            try:
                convert_input(flow_input, flow_input.default)
            except InvalidRequest as exc:
                problems.add(f"{where}.default", f"default: {exc.message}")
        result[str(name)] = flow_input
    return result


def _node(folder: Path, index: int, raw: Any, problems: _Problems) -> Node | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        problems.add(f"nodes[{index}]", f"node #{index + 1} needs a name")
        return None
    name = raw["name"]
    where = f"nodes.{name}"
    label = f"node {name!r}"
    for key in sorted(set(raw) - _NODE_KEYS):
        problems.warn(f"{label}: unknown field {key!r} is ignored")
    kind = raw.get("type")
    if kind not in NODE_TYPES:
        problems.add(
            f"{where}.type",
            f"{label} has type {kind!r}; the node types are {', '.join(NODE_TYPES)}",
        )
        return None
    inputs = raw.get("inputs") or {}
    if not isinstance(inputs, dict):
        problems.add(f"{where}.inputs", f"{label}: inputs must be a mapping")
        inputs = {}
    source = _source(folder, raw.get("source"), kind, where, label, problems)
    activate = _activate(raw, where, label, problems)
    aggregation = _flag(raw, "aggregation", label, problems) or _flag(
        raw, "reduce", label, problems
    )
    node = Node(
        name=name,
        type=kind,
        source=source or "",
        inputs={str(k): v for k, v in inputs.items()},
        activate=activate,
        aggregation=aggregation,
        variant=raw.get("__variant__"),
    )
    if source is None:
        return node
    if kind == "python":
        return _python_node(folder, node, where, label, problems)
    return _template_node(folder, node, raw, where, label, problems)


def _source(
    folder: Path, raw: Any, kind: str, where: str, label: str, problems: _Problems
) -> str | None:
    if not isinstance(raw, dict) or raw.get("type") != "code" or not raw.get("path"):
        problems.add(
            f"{where}.source",
            f"{label}: source must be {{type: code, path: FILE}} (package tools are not supported)",
        )
        return None
    relative = str(raw["path"])
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder):
        problems.add(f"{where}.source.path", f"{label}: source {relative!r} is outside the flow")
        return None
    if not path.is_file():
        problems.add(
            f"{where}.source.path",
            f"{label}: source file {relative!r} does not exist in the flow folder",
        )
        return None
    if kind == "python" and path.suffix != ".py":
        problems.add(f"{where}.source.path", f"{label}: a python node's source is a .py file")
        return None
    return relative


def _activate(node: dict[str, Any], where: str, label: str, problems: _Problems) -> Activate | None:
    """`activate: {when, is}` in every form Prompt flow reads: `when` a reference to a node
    (`${a.output}`, `${a}`, `${a.output.key}`) or an input (`${inputs.x}`, `${flow.x}`), or a
    literal compared as it stands; `is` any value, null included."""
    if "activate" not in node:
        return None
    raw = node["activate"]
    if not isinstance(raw, dict) or "when" not in raw or "is" not in raw:
        problems.add(
            f"{where}.activate",
            f"{label}: activate needs `when: ${{node.output}}` (or ${{inputs.x}}) and `is: value`",
        )
        return None
    ref = parse_dag_reference(raw["when"])
    if raw["when"] is None and raw["is"] is None:
        problems.warn(f"{label}: activate has empty when and is, so the node always runs")
    return Activate(ref, raw["is"], literal=None if ref is not None else raw["when"])


def _python_node(folder: Path, node: Node, where: str, label: str, problems: _Problems) -> Node:
    path = folder / node.source
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=node.source)
    except (SyntaxError, UnicodeDecodeError) as exc:
        line = f" line {exc.lineno}" if isinstance(exc, SyntaxError) else ""
        problems.add(f"{where}.source.path", f"{label}: {node.source}{line} does not parse: {exc}")
        return node
    tools = find_tools(tree)
    if not tools:
        problems.add(
            f"{where}.source.path",
            f"{label}: {node.source} has no function decorated with @tool; add "
            "`from promptflow import tool` and put @tool on the function this node calls",
        )
        return node
    if len(tools) > 1:
        problems.add(
            f"{where}.source.path",
            f"{label}: {node.source} has more than one @tool function "
            f"({', '.join(t.name for t, _ in tools)}); keep one per file",
        )
        return node
    function, owner = tools[0]
    params, takes_kwargs = params_of(function.args)
    init_params: list[ToolParam] = []
    if owner is not None:  # a class tool: the method's and __init__'s parameters, less self
        params = params[1:]
        init = next(
            (s for s in owner.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"),
            None,
        )
        if init is not None:
            init_params, init_kwargs = params_of(init.args)
            init_params = init_params[1:]
            takes_kwargs = takes_kwargs or init_kwargs
        params = [*init_params, *params]
    names = {p.name for p in params}
    connections = {}
    for key in node.inputs:
        if key not in names and not takes_kwargs:
            problems.add(
                f"{where}.inputs.{key}",
                f"{label} input {key!r} is not a parameter of "
                f"{function.name}({', '.join(p.name for p in params)})",
            )
    for param in params:
        value = node.inputs.get(param.name)
        if param.name not in node.inputs:
            # A connection parameter may be left unbound: it is bound when the flow runs
            # (`--connections node.input=name`, the studio's picker, or the project's only
            # connection of its type; flows/bindings.py), as Prompt flow's portal does.
            if not param.has_default and not param.is_connection:
                problems.add(
                    f"{where}.inputs.{param.name}",
                    f"{label}: {function.name}() needs {param.name!r} but the node has no "
                    f"input {param.name!r}",
                )
            continue
        if param.is_connection:
            if not isinstance(value, str) or parse_dag_reference(value) is not None or not value:
                problems.add(
                    f"{where}.inputs.{param.name}",
                    f"{label} input {param.name!r} takes a connection: give its name "
                    f"(`{param.name}: my_connection`), not a reference or another value",
                )
            else:
                connections[param.name] = value
    return Node(
        name=node.name,
        type=node.type,
        source=node.source,
        inputs=node.inputs,
        activate=node.activate,
        aggregation=node.aggregation,
        function=function.name,
        params=tuple(params),
        connection_inputs=connections,
        variant=node.variant,
        tool_class=owner.name if owner is not None else None,
        init_params=tuple(init_params),
    )


def _template_node(
    folder: Path, node: Node, raw: dict[str, Any], where: str, label: str, problems: _Problems
) -> Node:
    try:
        parsed = jinja2.Environment().parse((folder / node.source).read_text(encoding="utf-8"))
        if node.type == "prompt" and "template" in jinja2.meta.find_undeclared_variables(parsed):
            problems.add(  # Prompt flow's prompt tool takes the template itself as `template`
                f"{where}.source.path",
                f"{label}: template {node.source} uses the variable 'template', which is the "
                "prompt tool's own parameter; rename the variable",
            )
    except jinja2.TemplateSyntaxError as exc:
        problems.add(
            f"{where}.source.path",
            f"{label}: template {node.source} line {exc.lineno} does not parse: {exc.message}",
        )
    except UnicodeDecodeError:
        problems.add(f"{where}.source.path", f"{label}: template {node.source} is not UTF-8")
    connection = raw.get("connection")
    if node.type == "prompt":
        if connection:
            problems.add(f"{where}.connection", f"{label}: a prompt node takes no connection")
        return node
    if raw.get("api", "chat") != "chat":
        problems.add(
            f"{where}.api",
            f"{label}: api {raw.get('api')!r} is not supported; llm nodes use api: chat",
        )
    if not isinstance(connection, str) or not connection or parse_dag_reference(connection):
        problems.add(
            f"{where}.connection",
            f"{label}: an llm node names its connection (`connection: my_connection`), an "
            "lmfoundry connection or a custom one with endpoint and key",
        )
        connection = None
    return Node(
        name=node.name,
        type=node.type,
        source=node.source,
        inputs=node.inputs,
        activate=node.activate,
        aggregation=node.aggregation,
        connection=connection,
        variant=node.variant,
    )


def _check_reference(
    ref: Reference,
    where: str,
    label: str,
    inputs: dict[str, FlowInput],
    nodes: dict[str, Node],
    problems: _Problems,
) -> None:
    if ref.root == "inputs":
        if len(ref.path) != 1:
            problems.add(where, f"{label} refers to {ref.text}; write ${{inputs.NAME}}")
        elif ref.path[0] not in inputs:
            problems.add(
                where,
                f"{label} refers to {ref.text}, but the flow has no input {ref.path[0]!r} "
                f"(inputs: {', '.join(inputs) or 'none'})",
            )
        return
    if ref.root not in nodes:
        problems.add(
            where,
            f"{label} refers to {ref.text}, but there is no node named {ref.root!r} "
            f"(nodes: {', '.join(nodes) or 'none'})",
        )
    elif not ref.path or ref.path[0] != "output":
        problems.add(where, f"{label} refers to {ref.text}; write ${{{ref.root}.output}}")


def _check_references(
    node: Node, inputs: dict[str, FlowInput], nodes: dict[str, Node], problems: _Problems
) -> None:
    label = f"node {node.name!r}"
    for key, value in node.inputs.items():
        ref = parse_dag_reference(value)
        if ref is None:
            continue
        where = f"nodes.{node.name}.inputs.{key}"
        _check_reference(ref, where, f"{label} input {key!r}", inputs, nodes, problems)
        target = nodes.get(ref.root)
        if target is not None and target.aggregation and not node.aggregation:
            problems.add(
                where,
                f"{label} input {key!r} refers to aggregation node {ref.root!r}; only "
                "other aggregation nodes can use its output",
            )
    if node.activate is not None and node.activate.when is not None:
        when = node.activate.when
        where = f"nodes.{node.name}.activate.when"
        _check_reference(when, where, f"{label} activate", inputs, nodes, problems)
        target = nodes.get(when.root)
        if node.aggregation and target is not None and not target.aggregation:
            problems.add(
                where,
                f"{label} is an aggregation node whose activate refers to {when.root!r}, a "
                "line node; an aggregation node's activate refers to inputs or aggregation nodes",
            )


def _outputs(
    raw: Any, inputs: dict[str, FlowInput], nodes: dict[str, Node], problems: _Problems
) -> dict[str, FlowOutput]:
    if not isinstance(raw, dict):
        problems.add("outputs", "outputs must be a mapping of names to {type, reference}")
        return {}
    result = {}
    for name, spec in raw.items():
        where = f"outputs.{name}"
        label = f"output {name!r}"
        if not isinstance(spec, dict):
            problems.add(where, f"{label} must be a mapping with a reference")
            continue
        for key in sorted(set(spec) - _OUTPUT_KEYS):
            problems.add(f"{where}.{key}", f"{label}: unknown field {key!r}")
        ref = parse_dag_reference(spec.get("reference"))
        if ref is None:
            problems.add(
                f"{where}.reference", f"{label} needs `reference: ${{node.output}}` or an input"
            )
            continue
        _check_reference(ref, f"{where}.reference", label, inputs, nodes, problems)
        if ref.root in nodes and nodes[ref.root].aggregation:
            problems.warn(
                f"{label} refers to aggregation node {ref.root!r} and is left out of line "
                "outputs, as in Prompt flow (an aggregation node's results are run metrics)"
            )
            continue
        result[str(name)] = FlowOutput(
            name=str(name),
            type=str(spec.get("type", "string")),
            reference=ref,
            is_chat_output=_flag(spec, "is_chat_output", label, problems),
            evaluation_only=_flag(spec, "evaluation_only", label, problems),
        )
    return result


def _check_chat(
    inputs: dict[str, FlowInput], outputs: dict[str, FlowOutput], problems: _Problems
) -> None:
    for flag, items in (
        ("is_chat_input", [i.name for i in inputs.values() if i.is_chat_input]),
        ("is_chat_history", [i.name for i in inputs.values() if i.is_chat_history]),
        ("is_chat_output", [o.name for o in outputs.values() if o.is_chat_output]),
    ):
        if len(items) > 1:
            problems.add(flag, f"only one field can have {flag}: true (found {', '.join(items)})")
    chat_input = any(i.is_chat_input for i in inputs.values())
    chat_output = any(o.is_chat_output for o in outputs.values())
    if chat_input and not chat_output:
        problems.add(
            "outputs", "a chat flow marks the output that answers with is_chat_output: true"
        )
    if chat_output and not chat_input:  # Prompt flow runs it; only chatting with it needs one
        problems.warn(
            "an output has is_chat_output: true but no input has is_chat_input: true; the flow "
            "runs, but cannot be chatted with until one input is marked"
        )
    for i in inputs.values():
        if i.is_chat_history and i.type != "list":
            problems.add(f"inputs.{i.name}.type", f"chat history {i.name!r} has type list")


def _cycle(cycle: list[str], problems: _Problems) -> None:
    problems.add(
        f"nodes.{cycle[0]}",
        f"nodes {' -> '.join(map(repr, cycle))} form a cycle; a node cannot depend "
        "on its own output",
    )
