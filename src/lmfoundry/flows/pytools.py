"""Finding the tool in a python node's file by reading it, never importing it.

A tool is a module-level function decorated with `@tool`, or a `@tool` method of a class (a
Prompt flow class tool: a ToolProvider subclass whose `__init__` takes some node inputs).
"""

from __future__ import annotations

import ast

from lmfoundry.flows.models import ToolParam

_Function = ast.FunctionDef | ast.AsyncFunctionDef


def find_tools(tree: ast.Module) -> list[tuple[_Function, ast.ClassDef | None]]:
    """The @tool functions of a module, and the @tool methods of its classes (Prompt flow's
    class tools: a ToolProvider subclass whose __init__ takes some of the node's inputs)."""
    found: list[tuple[_Function, ast.ClassDef | None]] = []
    for stmt in tree.body:
        if isinstance(stmt, _Function) and any(map(is_tool_decorator, stmt.decorator_list)):
            found.append((stmt, None))
        elif isinstance(stmt, ast.ClassDef):
            found.extend(
                (method, stmt)
                for method in stmt.body
                if isinstance(method, _Function)
                and any(map(is_tool_decorator, method.decorator_list))
            )
    return found


def is_tool_decorator(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Name):
        return target.id == "tool"
    return isinstance(target, ast.Attribute) and target.attr == "tool"


def params_of(args: ast.arguments) -> tuple[list[ToolParam], bool]:
    positional = [*args.posonlyargs, *args.args]
    first_default = len(positional) - len(args.defaults)
    params = [
        ToolParam(a.arg, ast.unparse(a.annotation) if a.annotation else None, i >= first_default)
        for i, a in enumerate(positional)
    ]
    params += [
        ToolParam(a.arg, ast.unparse(a.annotation) if a.annotation else None, d is not None)
        for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    return params, args.kwarg is not None
