"""Flex flows (`flow.flex.yaml`) and the flow kinds that are not `flow.dag.yaml`.

A flex flow is Prompt flow's "flow as code": `entry: module:function` names a function, or a
class whose `__init__` takes init arguments (`--init NAME=VALUE`, or `sample.init` and the
`init:` defaults of the YAML) and whose `__call__` runs one line; an `__aggregate__(results)`
method runs once after a batch run, over the line outputs, and its dict becomes the run's
metrics. The flow's inputs are the entry's parameters, read here from the source with `ast`
(nothing is imported: the server calls this on an upload); `inputs:` in the YAML may give
types, defaults and chat flags. What the entry returns becomes the line's outputs as Prompt
flow serialises them: a dict as it is, a dataclass as its fields, anything else as `output`.

`flex_executor.py` runs these flows in the flow process; `prompty.py` loads `.prompty` flows.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows import fields
from lmfoundry.flows.dag import load_yaml
from lmfoundry.flows.flex_init import MODEL_CONFIGS, InitParam, init_value
from lmfoundry.flows.models import (
    DAG_FILES,
    INPUT_TYPES,
    Dag,
    FlowInput,
    FlowOutput,
    Node,
    Reference,
    convert_input,
)

FLEX_FILES = ("flow.flex.yaml", "flow.flex.yml")
PROMPTY_SUFFIX = ".prompty"
AGGREGATE = "__aggregate__"  # the pseudo node that stands for a class entry's __aggregate__
_FLEX_KEYS = {
    "$schema",
    "entry",
    "inputs",
    "outputs",
    "init",
    "sample",
    "environment",
    "environment_variables",
    "name",
    "display_name",
    "description",
    "tags",
    "language",
    "additional_includes",
    "message_format",
}
# Python annotations as flow input types (Prompt flow's table); anything else passes through.
_ANNOTATIONS = {
    "str": "string",
    "int": "int",
    "float": "double",
    "bool": "bool",
    "list": "list",
    "List": "list",
    "dict": "object",
    "Dict": "object",
}
ANY = "any"  # an input without a usable annotation: its value reaches the entry unchanged


def flow_kind(folder: Path) -> str | None:
    """ "dag", "flex" or "prompty" for a flow folder, as Prompt flow picks its file: a
    flow.dag.yaml or a flow.flex.yaml (not both), else the folder's one .prompty file."""
    dag = any((folder / name).is_file() for name in DAG_FILES)
    flex = any((folder / name).is_file() for name in FLEX_FILES)
    if dag and flex:
        raise InvalidRequest(
            f"{folder.name or folder} has both flow.dag.yaml and flow.flex.yaml; keep the one "
            "the flow is (Prompt flow refuses the folder too).",
            param="flow",
        )
    if dag or flex:
        return "dag" if dag else "flex"
    prompties = sorted(folder.glob(f"*{PROMPTY_SUFFIX}")) if folder.is_dir() else []
    if len(prompties) > 1:
        raise InvalidRequest(
            f"{folder.name or folder} has no flow.dag.yaml or flow.flex.yaml and more than one "
            f".prompty file ({', '.join(p.name for p in prompties)}); a prompty flow is a "
            "folder with exactly one, or add a flow.flex.yaml whose entry loads them.",
            param="flow",
        )
    return "prompty" if prompties else None


def is_flow_folder(folder: Path) -> bool:
    """Whether `folder` holds a flow file: flow.dag.yaml, flow.flex.yaml or a .prompty."""
    names = (*DAG_FILES, *FLEX_FILES)
    return any((folder / n).is_file() for n in names) or any(folder.glob(f"*{PROMPTY_SUFFIX}"))


def folder_of_flow_file(flow: str) -> str:
    """A flow given by its file (x.prompty, flow.flex.yaml, flow.dag.yaml), as pf takes it, as
    the folder that holds it; anything else unchanged."""
    path = Path(flow).expanduser()
    flow_file = path.suffix == PROMPTY_SUFFIX or path.name in (*DAG_FILES, *FLEX_FILES)
    return str(path.parent) if flow_file and path.is_file() else flow


def load_other_flow(folder: Path) -> Dag | None:
    """The flex or prompty flow in `folder`, or None when it holds a flow.dag.yaml (or
    nothing a flow could be)."""
    kind = flow_kind(folder)
    if kind == "flex":
        return load_flex(folder)
    if kind == "prompty":
        from lmfoundry.flows.prompty import load_prompty_flow

        return load_prompty_flow(folder)
    return None


@dataclass(frozen=True)
class FlexFlow(Dag):
    """A flex flow (or, subclassed, a prompty flow): a Dag without nodes, run by
    `flex_executor.py`. `nodes` holds only the `__aggregate__` pseudo node, when there is one,
    so batch runs gather line outputs for it as they do for aggregation nodes."""

    entry: str = ""  # "module:function" as written
    source: str = ""  # the entry's file, relative to the folder
    function: str = ""  # the function or class name
    is_class: bool = False
    init: dict[str, InitParam] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)
    init_kwargs: dict[str, Any] = field(default_factory=dict)  # this run's, from --init
    takes_kwargs: bool = False  # the entry has **kwargs: inputs it does not name reach it

    @property
    def kind(self) -> str:
        return "chat" if self.chat_input else "flex"

    @property
    def aggregate_input(self) -> str | None:
        node = next(iter(self.aggregation_nodes), None)
        return next(iter(node.inputs), None) if node is not None else None

    def interface(self) -> dict[str, Any]:
        view = super().interface()
        view["nodes"] = [{"name": self.function, "type": "flex", "aggregation": False}] + [
            {"name": AGGREGATE, "type": "flex", "aggregation": True} for _ in self.nodes
        ]
        view["entry"] = self.entry
        view["init"] = {
            p.name: {"type": p.kind, **({"default": p.default} if p.has_default else {})}
            for p in self.init.values()
        }
        return view

    def connection_uses(self) -> list[tuple[str, str, str]]:
        uses = super().connection_uses()  # the .prompty files' connections
        for name, value in self.init_kwargs.items():
            param = self.init.get(name)
            if param is None:
                continue
            if param.kind == "connection" and isinstance(value, str):
                uses.append(("__init__", name, value))
            elif (
                param.kind in MODEL_CONFIGS and isinstance(value, dict) and value.get("connection")
            ):
                uses.append(("__init__", f"{name}.connection", str(value["connection"])))
        return uses

    def resolve_inputs(self, given: Any, strict: bool = True) -> dict[str, Any]:
        """As Dag's, but an input without a value or a YAML default is left out, so the
        entry's own default applies; with no inputs at all, `sample.inputs` are used."""
        if not given and isinstance(self.sample.get("inputs"), dict):
            given = self.sample["inputs"]
        unknown = sorted(set(given) - set(self.inputs))
        if unknown and strict and not self.takes_kwargs:
            raise InvalidRequest(
                f"The flow has no input {', '.join(map(repr, unknown))}; its inputs are "
                f"{', '.join(self.inputs) or 'none'} (the parameters of {self.entry}).",
                param=f"inputs.{unknown[0]}",
            )
        values: dict[str, Any] = {}
        missing = []
        for spec in self.inputs.values():
            if spec.name in given:
                value = given[spec.name]
                values[spec.name] = value if spec.type == ANY else convert_input(spec, value)
            elif spec.has_default and spec.default is not _CODE_DEFAULT:
                values[spec.name] = spec.default
            elif not spec.has_default:
                missing.append(spec.name)
        if self.takes_kwargs:
            values.update({k: v for k, v in given.items() if k not in self.inputs})
        if missing:
            raise InvalidRequest(
                f"Input {', '.join(map(repr, missing))} has no value and no default; give it "
                f"(for example --inputs {missing[0]}=...).",
                param=f"inputs.{missing[0]}",
            )
        return values

    def with_init(self, given: dict[str, Any] | None) -> FlexFlow:
        """This flow with the init arguments of one test, run or deployment: `given` (from
        --init), else `sample.init`, then the YAML's and the code's defaults. 400 naming an
        unknown or missing one."""
        given = dict(given or {})
        if not given and isinstance(self.sample.get("init"), dict):
            given = dict(self.sample["init"])
        if given and not self.is_class:
            raise InvalidRequest(
                f"{self.entry} is a function, so it takes no init arguments (--init); a class "
                "entry takes them in its __init__.",
                param="init",
            )
        unknown = sorted(set(given) - set(self.init))
        if unknown:
            raise InvalidRequest(
                f"{self.function}.__init__ has no parameter {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(self.init) or 'none'}.",
                param=f"init.{unknown[0]}",
            )
        values: dict[str, Any] = {}
        for param in self.init.values():
            if param.name in given:
                values[param.name] = init_value(param, given[param.name])
            elif param.has_default and param.default is not _CODE_DEFAULT:
                values[param.name] = param.default
            elif not param.has_default:
                raise InvalidRequest(
                    f"{self.function}.__init__ needs {param.name!r}; give it with --init "
                    f"{param.name}=VALUE (a connection's name for a connection, JSON for a "
                    "model configuration), or under sample.init in flow.flex.yaml.",
                    param=f"init.{param.name}",
                )
        return replace(self, init_kwargs=values)


def with_init(dag: Dag, init: dict[str, Any] | None) -> Dag:
    """`dag` with the init arguments of one test, run or deployment; 400 when a flow that
    takes none is given some."""
    if isinstance(dag, FlexFlow):
        return dag.with_init(init)
    if init:
        raise InvalidRequest(
            "Init arguments (--init) are for flex flows (flow.flex.yaml with a class entry) "
            "and prompty flows; this flow is a flow.dag.yaml.",
            param="init",
        )
    return dag


INIT_FILE = "init.json"  # in a run's folder: the init arguments it runs with


def write_init(folder: Path, dag: Dag) -> None:
    """Keep a flex flow's init arguments with a run, so a resumed run builds it the same."""
    if isinstance(dag, FlexFlow):
        (folder / INIT_FILE).write_text(json.dumps(dag.init_kwargs))


def read_init(folder: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((folder / INIT_FILE).read_text())
    except (OSError, ValueError):  # not a flex flow, or a run from before init was kept
        return None
    return value if isinstance(value, dict) else None


class _CodeDefault:
    """A default the code gives but `ast` cannot evaluate (a call, a name): left to Python."""

    def __repr__(self) -> str:
        return "<default in code>"


_CODE_DEFAULT: Any = _CodeDefault()


# -- loading --------------------------------------------------------------------------------


def _problem(path: str, message: str, param: str = "flow") -> InvalidRequest:
    return InvalidRequest(f"{path} is not a valid flow: {message}", param=param)


def load_flex(folder: Path) -> FlexFlow:
    """Read and check `folder/flow.flex.yaml` and its entry's source; nothing runs."""
    folder = folder.resolve()
    path = next(folder / n for n in FLEX_FILES if (folder / n).is_file())
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), path.name)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path.name} is not valid YAML: {exc}", param="flow") from exc
    if not isinstance(data, dict):
        raise _problem(path.name, "it must be a mapping with entry: module:function")
    unknown = sorted(set(data) - _FLEX_KEYS)
    if unknown:
        raise _problem(path.name, f"unknown top-level field {unknown[0]!r}", unknown[0])
    entry = data.get("entry")
    if not isinstance(entry, str) or entry.count(":") != 1 or not all(entry.split(":")):
        raise _problem(
            path.name,
            f"entry must be module:function (or module:Class), not {entry!r}",
            "entry",
        )
    module, name = (part.strip() for part in entry.split(":"))
    source = _module_file(folder, module, path.name)
    tree = _parse(folder / source, source, path.name)
    definition = next(
        (
            s
            for s in tree.body
            if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and s.name == name
        ),
        None,
    )
    if definition is None:
        raise _problem(
            path.name,
            f"{source} defines no function or class {name!r} (entry {entry}); define it at the "
            "top of the module",
            "entry",
        )
    init: dict[str, InitParam] = {}
    aggregate: str | None = None
    if isinstance(definition, ast.ClassDef):
        methods = {
            s.name: s
            for s in definition.body
            if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        call = methods.get("__call__")
        if call is None:
            raise _problem(
                path.name, f"class {name} has no __call__ method, so it cannot run a line", "entry"
            )
        function = call
        if "__init__" in methods:
            init = {p.name: p for p in _init_params(methods["__init__"].args)}
        if AGGREGATE in methods:
            params = _positional(methods[AGGREGATE].args)[1:]
            if len(params) != 1:
                raise _problem(
                    path.name,
                    f"{name}.__aggregate__ takes exactly one parameter (the list of line "
                    f"outputs), not {len(params)}",
                    "entry",
                )
            aggregate = params[0].arg
    else:
        function = definition
    inputs, signature = _inputs(function, isinstance(definition, ast.ClassDef))
    inputs = _yaml_inputs(inputs, data.get("inputs"), path.name, "**" in signature)
    init = _yaml_init(init, data.get("init"), path.name)
    outputs = _outputs(data.get("outputs"), function, name)
    sample = data.get("sample") or {}
    if not isinstance(sample, dict):
        raise _problem(path.name, "sample must be a mapping with inputs (and init)", "sample")
    nodes: tuple[Node, ...] = ()
    if aggregate is not None:
        nodes = (Node(AGGREGATE, "python", source, {aggregate: "line outputs"}, aggregation=True),)
    from lmfoundry.flows.prompty import prompty_connections

    flow = FlexFlow(
        folder,
        inputs,
        outputs,
        nodes,
        environment_variables(data.get("environment_variables"), path.name),
        takes_kwargs=bool(signature),
        entry=entry,
        source=source,
        function=name,
        is_class=isinstance(definition, ast.ClassDef),
        init=init,
        sample=sample,
        prompty_connections=prompty_connections(folder),
    )
    try:  # sample.init and the defaults, for runs and deployments that give no --init
        return flow.with_init(None)
    except InvalidRequest:
        return flow  # a required init argument: `with_init` names it when a test gives none


def _module_file(folder: Path, module: str, flow_file: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w.]*", module) or ".." in module:
        raise _problem(flow_file, f"entry module {module!r} is not a module path", "entry")
    base = Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        path = (folder / candidate).resolve()
        if path.is_relative_to(folder) and path.is_file():
            return candidate.as_posix()
    raise _problem(
        flow_file,
        f"entry module {module!r} is not in the flow folder (no {base.as_posix()}.py)",
        "entry",
    )


def _parse(path: Path, source: str, flow_file: str) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=source)
    except SyntaxError as exc:
        raise _problem(flow_file, f"{source} line {exc.lineno} does not parse: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise _problem(flow_file, f"{source} is not UTF-8") from exc


def _positional(args: ast.arguments) -> list[ast.arg]:
    return [*args.posonlyargs, *args.args]


def _annotation_kind(annotation: ast.expr | None) -> str:
    if annotation is None:
        return ANY
    text = ast.unparse(annotation).strip("'\"")
    if re.search(r"\w*Connection\b", text):
        return "connection"
    for config in MODEL_CONFIGS:
        if text.endswith(config):
            return config
    base = text.split("[", 1)[0].split(".")[-1]
    return _ANNOTATIONS.get(base, ANY)


def _default(node: ast.expr | None) -> tuple[bool, Any]:
    if node is None:
        return False, None
    try:
        return True, ast.literal_eval(node)
    except ValueError:
        return True, _CODE_DEFAULT


def _signature(args: ast.arguments) -> list[tuple[ast.arg, ast.expr | None]]:
    positional = _positional(args)
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    pairs = list(zip(positional, [*defaults, *args.defaults], strict=True))
    return pairs + list(zip(args.kwonlyargs, args.kw_defaults, strict=True))


def _inputs(
    function: ast.FunctionDef | ast.AsyncFunctionDef, method: bool
) -> tuple[dict[str, FlowInput], str]:
    pairs = _signature(function.args)[1 if method else 0 :]
    inputs = {}
    for arg, default in pairs:
        has_default, value = _default(default)
        kind = _annotation_kind(arg.annotation)
        kind = kind if kind in INPUT_TYPES else ANY
        inputs[arg.arg] = FlowInput(arg.arg, kind, value, has_default, False, False)
    return inputs, "**" if function.args.kwarg is not None else ""


def _init_params(args: ast.arguments) -> list[InitParam]:
    params = []
    for arg, default in _signature(args)[1:]:
        has_default, value = _default(default)
        params.append(InitParam(arg.arg, _annotation_kind(arg.annotation), has_default, value))
    return params


def _yaml_inputs(
    inputs: dict[str, FlowInput], raw: Any, flow_file: str, takes_kwargs: bool
) -> dict[str, FlowInput]:
    """The YAML's `inputs:` over the signature's: type, default and the chat flags."""
    if raw is None:
        return inputs
    if not isinstance(raw, dict):
        raise _problem(flow_file, "inputs must be a mapping of names to {type, default}", "inputs")
    result = dict(inputs)
    for name, spec in raw.items():
        spec = spec if isinstance(spec, dict) else {"type": spec}
        if name not in inputs and not takes_kwargs:
            raise _problem(
                flow_file,
                f"input {name!r} is not a parameter of the entry ({', '.join(inputs) or 'none'})",
                f"inputs.{name}",
            )
        kind = str(spec.get("type", inputs[name].type if name in inputs else ANY))
        if kind not in (*INPUT_TYPES, ANY):
            raise _problem(
                flow_file,
                f"input {name!r} has type {kind!r}; use one of {', '.join(INPUT_TYPES)}",
                f"inputs.{name}.type",
            )
        code = inputs.get(name)
        # Prompt flow reads a YAML default "" as "the code's default" (its SDK writes that)
        has_default = "default" in spec and spec["default"] != ""
        result[name] = FlowInput(
            str(name),
            kind,
            spec["default"] if has_default else (code.default if code else None),
            has_default or bool(code and code.has_default),
            bool(spec.get("is_chat_input", False)),
            bool(spec.get("is_chat_history", False)),
        )
    return result


def _yaml_init(init: dict[str, InitParam], raw: Any, flow_file: str) -> dict[str, InitParam]:
    if raw is None:
        return init
    if not isinstance(raw, dict):
        raise _problem(flow_file, "init must be a mapping of names to {type, default}", "init")
    result = dict(init)
    for name, spec in raw.items():
        if name not in init:
            raise _problem(
                flow_file,
                f"init {name!r} is not a parameter of __init__ ({', '.join(init) or 'none'})",
                f"init.{name}",
            )
        if isinstance(spec, dict) and "default" in spec and spec["default"] != "":
            result[name] = replace(init[name], has_default=True, default=spec["default"])
    return result


def _outputs(
    raw: Any, function: ast.FunctionDef | ast.AsyncFunctionDef, name: str
) -> dict[str, FlowOutput]:
    """Declared outputs (with is_chat_output), for the interface only: what a line returns
    decides its outputs."""
    declared = raw if isinstance(raw, dict) and raw else {"output": {}}
    ref = Reference(f"${{{name}.output}}", name, ("output",))
    return {
        str(n): FlowOutput(
            str(n), "object", ref, isinstance(s, dict) and bool(s.get("is_chat_output")), False
        )
        for n, s in declared.items()
    }


def environment_variables(raw: Any, flow_file: str) -> dict[str, str]:
    """As flow.dag.yaml's (`fields.environment_variables`), refusing with the flow file named."""

    def problem(where: str, message: str) -> None:
        raise _problem(flow_file, message, where)

    return fields.environment_variables(raw, problem)
