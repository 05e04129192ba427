"""`lmfoundry flow export DIR --to agent-framework OUT`: a flow as a Microsoft Agent Framework
program, a way out of Prompt flow that keeps the flow's own code.

OUT gets the flow folder's files, verbatim, and beside them:
- `main.py`, written here: one executor per node, an edge per `${node.output}` reference, the
  `activate` conditions as conditional edges, and the aggregation nodes behind a fan-in of
  every line;
- `flow_runtime.py`, `flow_cli.py` and `flow_tools.py`, copied from `export_runtime.py`,
  `export_cli.py` and `export_tools.py`: the executors, the command line that prints what
  `lmfoundry flow test` prints, and what flow code imports;
- `promptflow/`, a few lines that give flow code `from promptflow import tool` and its
  friends, so the tool modules run unchanged without Prompt flow installed;
- `requirements.txt` (the versions this was tested with) and a README.

A flow that cannot be translated is refused before anything is written, naming the node and
the reason. Nothing here imports or runs the flow's code.
"""

from __future__ import annotations

import ast
import itertools
import json
import keyword
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows.dag import find_dag_file, load_dag
from lmfoundry.flows.fields import connection_references
from lmfoundry.flows.includes import included_files, with_includes
from lmfoundry.flows.models import Dag, Node, parse_reference

TARGETS = ("agent-framework",)
# The versions the exported programs are tested with (tests/flows/test_export.py).
REQUIREMENTS = (
    "agent-framework-core==1.23.0",
    "agent-framework-openai==1.17.0",  # the OpenAI chat client, for llm nodes
    "jinja2>=3.1,<4",  # prompt and llm templates
)
HERE = Path(__file__).parent
# Written into OUT; a flow file of the same name would be overwritten, so it is refused.
WRITTEN = ("main.py", "flow_runtime.py", "flow_cli.py", "flow_tools.py", "promptflow")
_SKIPPED = {"__pycache__", ".git", ".venv", ".promptflow", ".runs"}
_SHIM = {
    "promptflow/__init__.py": (
        '"""Stands in for Prompt flow: what flow code imports from `promptflow`."""\n\n'
        "from flow_tools import CustomConnection, ToolProvider, log_metric, tool, trace\n\n"
        '__all__ = ["CustomConnection", "ToolProvider", "log_metric", "tool", "trace"]\n'
    ),
    "promptflow/tracing/__init__.py": (
        '"""Stands in for `promptflow.tracing`."""\n\n'
        "from flow_tools import trace\n\n"
        '__all__ = ["trace"]\n'
    ),
    "promptflow/core/__init__.py": (
        '"""Stands in for `promptflow.core`."""\n\n'
        "from flow_tools import ToolProvider, log_metric, tool\n\n"
        '__all__ = ["ToolProvider", "log_metric", "tool"]\n'
    ),
    "promptflow/connections/__init__.py": (
        '"""Stands in for `promptflow.connections`: every connection is a CustomConnection."""\n\n'
        "from flow_tools import CustomConnection\n\n"
        "AzureOpenAIConnection = OpenAIConnection = ServerlessConnection = CustomConnection\n"
        "CustomStrongTypeConnection = CustomConnection\n\n"
        '__all__ = ["AzureOpenAIConnection", "CustomConnection", "CustomStrongTypeConnection", '
        '"OpenAIConnection", "ServerlessConnection"]\n'
    ),
}


def export_flow(folder: Path, target: str, out: Path) -> list[str]:
    """Write the program for the flow in `folder` into `out` (new or empty); returns the
    files written, relative to `out`."""
    if target not in TARGETS:
        raise InvalidRequest(
            f"Unknown export target {target!r}; the targets are {', '.join(TARGETS)}.",
            param="to",
        )
    folder = folder.expanduser().resolve()
    if included_files(folder):  # as Prompt flow's snapshot: the includes beside the flow's files
        with tempfile.TemporaryDirectory(prefix="lmfoundry-export-") as staging:
            snapshot = with_includes(folder, Path(staging) / folder.name)
            return _export(snapshot, out.expanduser().resolve(), folder)
    return _export(folder, out.expanduser().resolve(), folder)


def _export(folder: Path, out: Path, original: Path) -> list[str]:
    dag = load_dag(folder)
    check_translatable(dag)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidRequest(
            f"{out} is not an empty folder; give a new folder to export into.", param="out"
        )
    if out.is_relative_to(original):
        raise InvalidRequest(
            f"{out} is inside the flow folder; export to a folder outside it.", param="out"
        )
    written = _copy_flow(folder, out)
    (out / "main.py").write_text(program(dag), encoding="utf-8")
    shutil.copyfile(HERE / "export_runtime.py", out / "flow_runtime.py")
    shutil.copyfile(HERE / "export_cli.py", out / "flow_cli.py")
    shutil.copyfile(HERE / "export_tools.py", out / "flow_tools.py")
    for name, text in _SHIM.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text, encoding="utf-8")
    requirements = out / "requirements.txt"
    own = requirements.read_text(encoding="utf-8") if requirements.exists() else ""
    lines = [line for line in own.splitlines() if line.strip()]
    requirements.write_text("\n".join([*lines, *REQUIREMENTS]) + "\n", encoding="utf-8")
    readme = "README.md" if not (out / "README.md").exists() else "README-agent-framework.md"
    (out / readme).write_text(_readme(dag), encoding="utf-8")
    extra = [*WRITTEN[:-1], *_SHIM, "requirements.txt", readme]
    return sorted({*written, *extra})


def check_translatable(dag: Dag) -> None:
    """InvalidRequest naming every node the exporter cannot translate, and why."""
    problems = []
    for node in dag.nodes:
        why = _untranslatable(dag, node)
        if why:
            problems.append(
                {"field": f"nodes.{node.name}", "message": f"node {node.name!r}: {why}"}
            )
    for variable, (name, key) in connection_references(dag.environment_variables).items():
        problems.append(
            {
                "field": f"environment_variables.{variable}",
                "message": f"environment variable {variable} reads ${{{name}.{key}}}; the "
                "exported program has no connection store, so set the variable in its "
                "environment and drop it from environment_variables",
            }
        )
    if problems:
        first = problems[0]["message"]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidRequest(
            f"Cannot export this flow to Agent Framework: {first}{more}.",
            param=problems[0]["field"],
            detail={"problems": problems},
        )


def _untranslatable(dag: Dag, node: Node) -> str | None:
    if node.type not in ("python", "prompt", "llm"):
        return f"tool type {node.type!r} has no Agent Framework translation here"
    if Path(node.source).suffix == ".prompty":
        return "a .prompty source is not translated yet; use an llm node with a jinja2 template"
    if node.type == "python" and not node.function:
        return f"{node.source} has no top-level @tool function to call"
    if node.type == "python" and (missing := _missing_imports(dag, node)):
        return (
            f"{node.source} has `{missing}`, which the exported program does not provide "
            "(it gives tool, log_metric, ToolProvider, trace and the connection classes)"
        )
    if node.type == "llm" and not node.connection:
        return "an llm node needs its connection named"
    if node.aggregation and node.activate is not None:
        return "an aggregation node with activate is not translated yet"
    for key, value in node.inputs.items():
        if parse_reference(value) is None and not _is_plain(value):
            return f"input {key!r} is a {type(value).__name__}, not a JSON value"
    if node.activate is not None and not _is_plain(node.activate.value):
        return "its activate `is:` value is not a JSON value"
    return None


# What the `promptflow` folder written beside main.py provides, module by module.
_SHIM_NAMES = {
    "promptflow": {"CustomConnection", "ToolProvider", "log_metric", "tool", "trace"},
    "promptflow.core": {"ToolProvider", "log_metric", "tool"},
    "promptflow.connections": {
        "AzureOpenAIConnection",
        "CustomConnection",
        "CustomStrongTypeConnection",
        "OpenAIConnection",
        "ServerlessConnection",
    },
    "promptflow.tracing": {"trace"},
}


def _missing_imports(dag: Dag, node: Node) -> str | None:
    """The first `from promptflow... import NAME` in the node's file that the shim lacks."""
    try:
        tree = ast.parse((dag.folder / node.source).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None  # load_dag has said what is wrong with the file
    for stmt in ast.walk(tree):
        if not isinstance(stmt, ast.ImportFrom) or not stmt.module:
            continue
        if stmt.module.split(".")[0] != "promptflow":
            continue
        provided = _SHIM_NAMES.get(stmt.module, set())
        for alias in stmt.names:
            if alias.name not in provided:
                return f"from {stmt.module} import {alias.name}"
    return None


def _is_plain(value: Any) -> bool:
    try:
        return json.loads(json.dumps(value, allow_nan=True)) == value or value != value
    except (TypeError, ValueError):
        return False


def _copy_flow(folder: Path, out: Path) -> list[str]:
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if _SKIPPED & set(relative.parts) or path.is_symlink() or not path.is_file():
            continue
        if relative.parts[0] in WRITTEN:
            raise InvalidRequest(
                f"The flow has {relative.parts[0]!r}, a name the exported program uses for its "
                "own file; rename it in the flow and export again.",
                param="flow",
            )
        files.append(str(relative))
    out.mkdir(parents=True, exist_ok=True)
    dag_file = find_dag_file(folder).name
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / name, out / name)
    return [f for f in files if f != dag_file] + [dag_file]


# -- main.py --------------------------------------------------------------------------------------


class _Names:
    """Python identifiers for executors, unique and clear of keywords and imports."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = set(taken)
        self.names: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        if key not in self.names:
            base = re.sub(r"\W", "_", key).strip("_") or "node"
            if base[0].isdigit() or keyword.iskeyword(base):
                base = f"n_{base}"
            name, n = base, 2
            while name in self.taken:
                name, n = f"{base}_{n}", n + 1
            self.taken.add(name)
            self.names[key] = name
        return self.names[key]


def _module(source: str) -> str | None:
    """The plain import name of a tool file, or None when `load_tool` must load it."""
    path = Path(source)
    name = path.stem
    reserved = {"main", "flow_runtime", "flow_cli", "flow_tools", "promptflow", "agent_framework"}
    if (
        len(path.parts) != 1
        or not name.isidentifier()
        or keyword.iskeyword(name)
        or name in sys.stdlib_module_names
        or name in reserved
    ):
        return None
    return name


def _tool_expression(node: Node, tools: dict[str, str]) -> str:
    if node.type == "prompt":
        return f"Prompt({node.source!r})"
    if node.type == "llm":
        return f"ChatCall({node.source!r}, connection={node.connection!r})"
    tool_class = getattr(node, "tool_class", None)
    loaded = f"load_tool({node.source!r}, {(tool_class or node.function)!r})"
    target = tools.get(node.name, loaded)
    if tool_class is None:
        return f"PythonTool({target})"
    init = {p.name: node.inputs[p.name] for p in _init_params(node) if p.name in node.inputs}
    literals = {k: v for k, v in init.items() if k not in node.connection_inputs}
    connections = {k: node.connection_inputs[k] for k in init if k in node.connection_inputs}
    extra = f", connections={connections!r}" if connections else ""
    return f"PythonTool(ClassTool({target}, {node.function!r}, {literals!r}{extra}))"


def _init_params(node: Node) -> tuple[Any, ...]:
    return tuple(getattr(node, "init_params", ()))


def _spec(node: Node, tools: dict[str, str]) -> str:
    init = {p.name for p in _init_params(node)}
    inputs = {k: v for k, v in node.inputs.items() if k not in init}
    args = [repr(node.name), _tool_expression(node, tools), repr(inputs)]
    defaults = sorted(p.name for p in node.params if p.has_default and p.name not in init)
    if defaults:
        args.append(f"defaults=frozenset({defaults!r})")
    connections = {k: v for k, v in node.connection_inputs.items() if k not in init}
    if connections:
        args.append(f"connections={connections!r}")
    return f"    {node.name!r}: Spec({', '.join(args)}),"


def _reads(dag: Dag, node: Node) -> tuple[str, ...]:
    line = {n.name for n in dag.line_nodes}
    return tuple(sorted(d for d in node.dependencies if d in line))


def program(dag: Dag) -> str:
    """The text of main.py."""
    # module-level names: `from classify import classify` (`as ...` when the name is taken)
    aliases = _Names({*_RUNTIME_NAMES, "INPUTS", "OUTPUTS", "NODES", "FLOW", "main", "sys", "os"})
    imports: list[tuple[str, str, str]] = []  # (module, function, alias)
    tools: dict[str, str] = {}
    for node in dag.nodes:
        module = _module(node.source) if node.type == "python" else None
        name = getattr(node, "tool_class", None) or node.function
        if module is not None and name:
            key = f"{module}.{name}"
            known = next((a for m, f, a in imports if f"{m}.{f}" == key), None)
            alias = known or aliases(key if name in aliases.taken else name)
            if known is None:
                imports.append((module, name, alias))
            tools[node.name] = alias
    # the executors' names, local to the workflow functions
    local = {"builder", "start", "end", "data", "lines", "report", "single", "count", "index"}
    names = _Names({*_RUNTIME_NAMES, *local, "NODES", "FLOW"})
    line_nodes = dag.line_nodes
    read_by: dict[str, set[str]] = {n.name: set() for n in line_nodes}
    for node in line_nodes:
        for dep in _reads(dag, node):
            read_by[dep].add(node.name)
    sinks = tuple(n.name for n in line_nodes if not read_by[n.name])
    gated = {n.name for n in line_nodes if n.activate is not None}

    def reporters(name: str) -> list[str]:
        """The executors that report node `name`: itself, and its bypass when it has one."""
        return [names(name)] + ([names(f"{name} bypassed")] if name in gated else [])

    out: list[str] = [""]  # the header, once the body says which runtime names it uses
    out.append("INPUTS = {")
    for spec in dag.inputs.values():
        args = [repr(spec.name), repr(spec.type)]
        if spec.has_default:
            args += [f"default={spec.default!r}", "has_default=True"]
        if spec.is_chat_history:
            args.append("is_chat_history=True")
        out.append(f"    {spec.name!r}: Input({', '.join(args)}),")
    out.append("}")
    aggregation_nodes = {n.name for n in dag.aggregation_nodes}
    dropped = set(getattr(dag, "aggregation_outputs", ()))
    out.append("OUTPUTS = {")
    for output in dag.outputs.values():
        if output.reference.node not in aggregation_nodes and output.name not in dropped:
            out.append(f"    {output.name!r}: {output.reference.text!r},")
        else:  # as Prompt flow does
            dropped.add(output.name)
    for name in sorted(dropped):
        out.append(f"    # {name}: left out, it reads an aggregation node (as in Prompt flow)")
    out.append("}")
    out.append("NODES = {")
    out += [_spec(node, tools) for node in dag.nodes]
    out.append("}")
    conditions = []
    for node in line_nodes:
        when = node.activate
        if when is None:
            continue
        if when.when is not None:
            condition = f"Activate({when.when.text!r}, {when.value!r})"
        else:  # a literal `when`
            literal = getattr(when, "literal", None)
            condition = f"Activate(None, {when.value!r}, literal={literal!r})"
        conditions.append(f"    {node.name!r}: {condition},")
    if conditions:
        out += ["ACTIVATE = {  # node -> its activate condition", *conditions, "}"]
    out += ["", "", "def line_workflow() -> Workflow:"]
    out.append('    """One line: an executor per node, an edge per reference."""')
    out.append('    start = Start(id="(inputs)")')
    for node in line_nodes:
        var, reads = names(node.name), _reads(dag, node)
        if node.activate is not None:
            gate = names(f"{node.name} gate")
            out.append(f'    {gate} = Gate("{node.name} (activate)", reads={reads!r})')
            out.append(
                f"    {var} = NodeExecutor(NODES[{node.name!r}], reads={reads!r}, gated=True)"
            )
            out.append(f"    {names(f'{node.name} bypassed')} = Bypass({node.name!r})")
        else:
            out.append(f"    {var} = NodeExecutor(NODES[{node.name!r}], reads={reads!r})")
    out.append(f'    end = End("(outputs)", reads={sinks!r})')
    out.append(f"    builder = WorkflowBuilder(start_executor=start, name={dag_name(dag)!r})")
    for node in line_nodes:
        reads = _reads(dag, node)
        entry = names(f"{node.name} gate") if node.activate is not None else names(node.name)
        sources = [s for dep in reads for s in reporters(dep)] or ["start"]
        for source in sources:
            out.append(f"    builder.add_edge({source}, {entry})")
        if node.activate is not None:
            flag = f"ACTIVATE[{node.name!r}]"
            when_text = node.activate.when.text if node.activate.when else "its literal"
            out.append(
                f"    # activate: {node.name} runs when {when_text} is "
                f"{node.activate.value!r}, else it is bypassed"
            )
            out.append(f"    builder.add_edge({entry}, {names(node.name)}, condition={flag}.holds)")
            bypass = names(f"{node.name} bypassed")
            out.append(f"    builder.add_edge({entry}, {bypass}, condition={flag}.fails)")
    for sink in sinks:
        for source in reporters(sink):
            out.append(f"    builder.add_edge({source}, end)")
    out.append("    return builder.build()")
    out += _batch(dag, names)
    out += [
        "",
        "",
        f"FLOW = Flow({dag_name(dag)!r}, INPUTS, OUTPUTS, line_workflow, batch_workflow)",
        "",
        'if __name__ == "__main__":',
        "    sys.exit(main(FLOW))",
        "",
    ]
    body = "\n".join(out[1:])
    used = [n for n in _RUNTIME_NAMES if re.search(rf"\b{n}\b", body)]
    out[0] = _header(dag, imports, used)
    return "\n".join(out)


def _batch(dag: Dag, names: _Names) -> list[str]:
    out = ["", "", "def batch_workflow(count: int, single: bool = False) -> Workflow:"]
    out.append('    """Every line, then the aggregation nodes over all of them (a fan-in)."""')
    out.append('    data = Data(id="(data)")')
    out.append("    lines = [LineRunner(FLOW, index) for index in range(count)]")
    steps = []
    for node in dag.aggregation_nodes:
        var = names(node.name)
        steps.append(var)
        out.append(f"    {var} = Aggregation(NODES[{node.name!r}], single)")
    out.append('    report = Report(id="(report)")')
    steps.append("report")
    out.append(
        f"    builder = WorkflowBuilder(start_executor=data, name={dag_name(dag) + ' (batch)'!r})"
    )
    out.append("    if count == 1:  # a fan-out and a fan-in take two lines or more")
    out.append(f"        builder.add_edge(data, lines[0]).add_edge(lines[0], {steps[0]})")
    out.append("    else:")
    out.append("        builder.add_fan_out_edges(data, lines)")
    out.append(f"        builder.add_fan_in_edges(lines, {steps[0]})")
    for before, after in itertools.pairwise(steps):
        out.append(f"    builder.add_edge({before}, {after})")
    out.append("    return builder.build()")
    return out


def dag_name(dag: Dag) -> str:
    return str(getattr(dag, "name", None) or dag.folder.name)


def _connection_env(name: str) -> str:
    return re.sub(r"\W", "_", name).upper()


_RUNTIME_NAMES = (
    "Activate",
    "ClassTool",
    "Aggregation",
    "Bypass",
    "ChatCall",
    "Data",
    "End",
    "Flow",
    "Gate",
    "Input",
    "LineRunner",
    "NodeExecutor",
    "Prompt",
    "PythonTool",
    "Report",
    "Spec",
    "Start",
    "load_tool",
    "Workflow",
    "WorkflowBuilder",
)


def _header(dag: Dag, imports: list[tuple[str, str, str]], used: list[str]) -> str:
    connections = dag.connection_names
    env = "".join(
        f"  {_connection_env(c)}_ENDPOINT, {_connection_env(c)}_KEY   connection {c!r}: the "
        "deployment's target URL and key\n"
        for c in connections
    )
    lines = "".join(
        f"from {m} import {f}\n" if f == a else f"from {m} import {f} as {a}\n"
        for m, f, a in sorted(imports)
    )
    runtime = sorted(n for n in used if not n.startswith("Workflow") and n != "ClassTool")
    environment = ""
    if dag.environment_variables:  # set before the tools are imported, as Prompt flow does
        environment = (
            "\n# the flow's environment_variables\n"
            f"os.environ.update({dict(dag.environment_variables)!r})\n"
        )
    return (
        f'"""Flow {dag_name(dag)!r} on Microsoft Agent Framework, exported from its flow.dag.yaml\n'
        "by `lmfoundry flow export`. The tool modules and templates beside it are the flow's\n"
        "own.\n\n"
        "  pip install -r requirements.txt\n"
        "  python main.py NAME=VALUE ...          one line, printed as `lmfoundry flow test` does\n"
        "  python main.py --json NAME=VALUE ...   the same as JSON (status, outputs, metrics)\n"
        "  python main.py --data lines.jsonl      every line, then the aggregation nodes\n"
        + (f"\nEnvironment:\n{env}" if env else "")
        + '"""\n\n'
        "from __future__ import annotations\n\n"
        + ("import os\n" if dag.environment_variables else "")
        + "import sys\n\n"
        "from agent_framework import Workflow, WorkflowBuilder\n"
        "from flow_cli import main\n"
        + ("from flow_tools import ClassTool\n" if "ClassTool" in used else "")
        + f"from flow_runtime import {', '.join(runtime)}\n"
        + environment
        + (f"\n{lines}" if lines else "")
        + "\n"
    )


def _readme(dag: Dag) -> str:
    lines = [
        f"# {dag_name(dag)} on Microsoft Agent Framework",
        "",
        "Exported from Prompt flow's `flow.dag.yaml` by `lmfoundry flow export --to "
        "agent-framework`. `main.py` builds the workflow: one executor per node, an edge per "
        "`${node.output}` reference, `activate` conditions as conditional edges, aggregation "
        "nodes behind a fan-in of every line. The tool modules and templates are the flow's "
        "own, unchanged; `promptflow/` stands in for Prompt flow's `tool`, `log_metric` and "
        "connections.",
        "",
        "```",
        "pip install -r requirements.txt",
        "python main.py NAME=VALUE ...",
        "python main.py --data lines.jsonl [--column-mapping INPUT='${data.COLUMN}']",
        "```",
    ]
    if dag.connection_names:
        lines += ["", "Connections come from the environment:", ""]
        for name in dag.connection_names:
            env = _connection_env(name)
            lines.append(
                f"- `{name}`: `{env}_ENDPOINT` (an lmfoundry deployment's target URL, such as "
                f"`http://127.0.0.1:8000/serverless/NAME/`), `{env}_KEY` (its key); "
                f"optionally `{env}_MODEL`, and `{env}_CONFIGS` / `{env}_SECRETS` (JSON "
                "objects) for other fields."
            )
    return "\n".join(lines) + "\n"
