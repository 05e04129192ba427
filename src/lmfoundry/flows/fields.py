"""flow.dag.yaml's top-level fields beside inputs, outputs and nodes: `name`, `environment`,
`additional_includes` and `environment_variables`, read as Prompt flow reads them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

Problem = Callable[[str, str], None]  # (field path, message): the flow is refused
Warn = Callable[[str], None]  # the flow runs; the message is shown


# `${my_connection.api_key}`: the value of one field of a connection, as Prompt flow resolves
# an environment variable when the flow starts
CONNECTION_REFERENCE = re.compile(r"^\$\{([^.${}\s]+)\.([^${}\s]+)\}$")


def environment_variables(raw: Any, problem: Problem) -> dict[str, str]:
    """Prompt flow's conversion: lists and dicts as JSON, anything else as str(); a value
    `${connection.field}` is kept as written and resolved when the flow process starts
    (`connection_references`)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problem("environment_variables", "environment_variables must be a mapping")
        return {}
    return {
        str(key): json.dumps(value) if isinstance(value, dict | list) else str(value)
        for key, value in raw.items()
    }


def connection_references(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{variable: (connection, field)} for the variables that name a connection's field."""
    found = {}
    for key, value in env.items():
        match = CONNECTION_REFERENCE.match(value.strip())
        if match:
            found[key] = (match.group(1), match.group(2))
    return found


def top_level(data: dict[str, Any], problem: Problem, warn: Warn) -> dict[str, Any]:
    """`name`, `environment`, `additional_includes` and `message_format`, checked for shape."""
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        problem("name", "name must be a string")
        name = None
    environment = data.get("environment") or {}
    if not isinstance(environment, dict):
        problem("environment", "environment must be a mapping (python_requirements_txt, image)")
        environment = {}
    if environment:
        warn(
            "environment is not installed by lmfoundry: the flow runs with the packages of "
            "the server's flow runtime"
        )
    includes = data.get("additional_includes") or []
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        problem("additional_includes", "additional_includes must be a list of paths")
        includes = []
    message_format = str(data.get("message_format") or "basic").lower()
    if message_format not in ("basic", "openai-vision"):
        problem("message_format", "message_format must be basic or openai-vision")
        message_format = "basic"
    return {
        "name": name,
        "environment": environment,
        "additional_includes": tuple(includes),
        "message_format": message_format,
    }
