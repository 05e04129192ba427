"""Loading a python node's tool as Prompt flow does, inside the flow process.

The node's file is executed as a module named `__pf_main__` (so `if __name__ == "__main__"`
blocks do not run, and `__file__` is the file's path), with the flow's folder on `sys.path`
so that `from my_utils import x` finds the flow's own modules. Each node loads its file anew,
as in Prompt flow. A class tool (a `ToolProvider` subclass with a `@tool` method) is built
once with the node's inputs named like its `__init__` parameters, which must be literals.

Literal node inputs are converted to the type the parameter is annotated with (`int`,
`float`, `bool`, `str`, `list`; anything else, or no annotation, reads a JSON string as JSON
and keeps other values), and literals that are empty or null are left out, so the parameter's
default applies: Prompt flow's rules.

This module runs user code: it is imported only in the flow process (`process.py`).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmfoundry.flows import images
from lmfoundry.flows.models import Node, parse_dag_reference

MODULE_NAME = "__pf_main__"  # what Prompt flow names a tool's module


def load_tool(folder: Path, node: Node, connections: dict[str, Any]) -> Callable[..., Any]:
    """The callable a python node runs: its @tool function, or its class tool's @tool
    method bound to an instance made with the node's init inputs."""
    path = (folder / node.source).resolve()
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {node.source}: it is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if node.tool_class is None:
        function = getattr(module, node.function or "", None)
        if not callable(function):
            raise ImportError(f"{node.source} has no function {node.function!r}")
        return function  # type: ignore[no-any-return]
    cls = getattr(module, node.tool_class, None)
    if not isinstance(cls, type):
        raise ImportError(f"{node.source} has no class {node.tool_class!r}")
    init = {}
    for param in node.init_params:
        if param.name not in node.inputs:
            continue
        raw = node.inputs[param.name]
        if param.name in node.connection_inputs:
            init[param.name] = connections[node.connection_inputs[param.name]]
        elif parse_dag_reference(raw) is not None:
            raise TypeError(
                f"{node.tool_class}.__init__ input {param.name!r} takes a literal value, "
                f"but the node gives {raw}; init inputs are fixed when the flow loads"
            )
        elif raw is not None and raw != "":
            init[param.name] = convert_literal(raw, _annotation(cls.__init__, param.name))  # type: ignore[misc]
    return getattr(cls(**init), node.function or "")  # type: ignore[no-any-return]


def literal_inputs(node: Node, function: Callable[..., Any]) -> dict[str, Any]:
    """The node's literal inputs as the call gets them: converted to the parameters' types,
    without empty ones, without init inputs of a class tool and connections."""
    skip = {p.name for p in node.init_params} | set(node.connection_inputs)
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    values = {}
    for key, raw in node.inputs.items():
        if key in skip or parse_dag_reference(raw) is not None or raw is None or raw == "":
            continue
        # a name only **kwargs takes is passed as written
        values[key] = convert_literal(raw, _annotation(function, key)) if key in parameters else raw
    return values


def defaults(function: Callable[..., Any]) -> set[str]:
    """The names of the parameters that have a default."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return set()
    return {n for n, p in parameters.items() if p.default is not inspect.Parameter.empty}


def _annotation(function: Callable[..., Any], name: str) -> Any:
    try:
        parameter = inspect.signature(function).parameters.get(name)
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.annotation is inspect.Parameter.empty:
        return None
    annotation = parameter.annotation
    if isinstance(annotation, str):  # `from __future__ import annotations`
        annotation = {"int": int, "float": float, "bool": bool, "str": str, "list": list}.get(
            annotation, annotation
        )
    if typing.get_origin(annotation) is typing.Union:  # Optional[int] is int
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    return annotation


def convert_literal(value: Any, annotation: Any) -> Any:
    """Prompt flow's `ValueType.parse` for the parameter's annotation."""
    if isinstance(annotation, type) and issubclass(annotation, images.PFBytes):
        return images.create_image(value, Path.cwd())  # the flow's folder
    if annotation is int:
        return int(value)
    if annotation is float:
        return float(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"Invalid boolean value {value!r}")
    if annotation is str:
        return str(value)
    # Image dicts anywhere in a list or object literal are images, as Prompt flow loads them
    # (`load_multimedia_data_recursively` after parsing)
    if annotation is list:
        value = json.loads(value) if isinstance(value, str) else value
        if not isinstance(value, list):
            raise ValueError(f"Invalid list value {value!r}")
        return images.load_nested(value, Path.cwd())
    if _is_connection(annotation):
        return value
    if isinstance(value, str):
        try:  # Prompt flow's "object": JSON text is read as JSON
            value = json.loads(value)
        except ValueError:
            return value  # it really is a string
    return images.load_nested(value, Path.cwd())


def _is_connection(annotation: Any) -> bool:
    return isinstance(annotation, type) and annotation.__name__.endswith("Connection")
