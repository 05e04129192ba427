"""What the flow code of an exported flow imports, and its connections.

`lmfoundry flow export` copies this file, unchanged, beside the program (as `flow_tools.py`);
the `promptflow` folder there re-exports `tool`, `log_metric` and `CustomConnection`, so code
written for Prompt flow runs unchanged. lmfoundry itself never imports it.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def tool(func: Any = None, **_: Any) -> Any:
    """Prompt flow's `@tool` and `@tool(name=...)`: the function is returned unchanged."""
    return func if func is not None else (lambda f: f)


class CustomConnection:
    """A connection's configs and secrets: `c.endpoint`, `c["key"]` (secrets first)."""

    def __init__(
        self,
        configs: dict[str, Any] | None = None,
        secrets: dict[str, Any] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        object.__setattr__(self, "configs", {**(configs or {}), **kwargs})
        object.__setattr__(self, "secrets", dict(secrets or {}))
        object.__setattr__(self, "name", name)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(
                f"Connection {self.name!r} has no config or secret {key!r}"
            ) from None

    def __getitem__(self, key: str) -> Any:
        if key in self.secrets:
            return self.secrets[key]
        return self.configs[key]

    def __contains__(self, key: object) -> bool:
        return key in self.secrets or key in self.configs

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __repr__(self) -> str:
        masked = dict.fromkeys(self.secrets, "***")
        return f"CustomConnection(name={self.name!r}, configs={self.configs!r}, secrets={masked!r})"


_metrics: dict[str, Any] | None = None


@contextmanager
def collecting_metrics() -> Iterator[dict[str, Any]]:
    global _metrics
    _metrics = {}
    try:
        yield _metrics
    finally:
        _metrics = None


def log_metric(key: str, value: Any, variant_id: str | None = None) -> None:
    """Prompt flow's `log_metric`: a run metric, recorded from aggregation nodes only."""
    if _metrics is None:
        print(f"log_metric({key!r}) ignored: metrics come from aggregation nodes", file=sys.stderr)
        return
    _metrics[key] = value


def connection_from_env(name: str) -> CustomConnection:
    """Connection NAME from the environment: NAME_ENDPOINT (a deployment's target URL or an
    endpoint's score URL), NAME_KEY, and optionally NAME_CONFIGS / NAME_SECRETS (JSON objects
    of any other fields); NAME is upper-cased, other characters become `_`."""
    prefix = re.sub(r"\W", "_", name).upper()
    configs = json.loads(os.environ.get(f"{prefix}_CONFIGS") or "{}")
    secrets = json.loads(os.environ.get(f"{prefix}_SECRETS") or "{}")
    endpoint = os.environ.get(f"{prefix}_ENDPOINT")
    key = os.environ.get(f"{prefix}_KEY")
    if endpoint:
        configs.setdefault("endpoint", endpoint)
        configs.setdefault("target_url", _target_url(endpoint))
    if key:
        secrets.setdefault("key", key)
    if not configs and not secrets:
        raise SystemExit(
            f"Connection {name!r} is not set: export {prefix}_ENDPOINT and {prefix}_KEY "
            f"(or {prefix}_CONFIGS / {prefix}_SECRETS as JSON objects)."
        )
    return CustomConnection(configs=configs, secrets=secrets, name=name)


def _target_url(endpoint: str) -> str:
    url = endpoint.rstrip("/")
    for tail in ("/chat/completions", "/score"):
        if url.endswith(tail):
            url = url[: -len(tail)]
    return url + "/"


def convert_literal(function: Callable[..., Any], name: str, value: Any) -> Any:
    """A python node's literal input as Prompt flow passes it: converted to the type the
    parameter is annotated with (`int`, `float`, `bool`, `str`, `list`); JSON text for an
    unannotated (object) parameter is read as JSON."""
    try:
        parameter = inspect.signature(function).parameters.get(name)
    except (TypeError, ValueError):
        return value
    if parameter is None:  # a name only **kwargs takes is passed as written
        return value
    annotation = parameter.annotation
    if isinstance(annotation, str):  # `from __future__ import annotations`
        builtin = {"int": int, "float": float, "bool": bool, "str": str, "list": list}
        annotation = builtin.get(annotation, annotation)
    if typing.get_origin(annotation) is typing.Union:  # Optional[int] is int
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    if annotation in (int, float, str):
        return annotation(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"Invalid boolean value {value!r}")
    if annotation is list:
        value = json.loads(value) if isinstance(value, str) else value
        if not isinstance(value, list):
            raise ValueError(f"Invalid list value {value!r}")
        return value
    connection = isinstance(annotation, type) and annotation.__name__.endswith("Connection")
    if isinstance(value, str) and not connection:
        try:
            return json.loads(value)
        except ValueError:
            return value  # it really is a string
    return value


class ToolProvider:
    """Prompt flow's base of class tools: `__init__` takes the node's init inputs, a `@tool`
    method does the work."""


def trace(func: Any = None, **_: Any) -> Any:
    """Prompt flow's `@trace`: the function is returned unchanged (no tracing here)."""
    return func if func is not None else (lambda f: f)


class ClassTool:
    """A class tool's method, bound to an instance made on the first call with the node's
    init inputs (literals converted to `__init__`'s annotations, connections from the
    environment), as Prompt flow makes one per flow."""

    def __init__(
        self,
        cls: type,
        method: str,
        init: dict[str, Any],
        connections: dict[str, str] | None = None,
    ) -> None:
        self.cls = cls
        self.method = method
        self.init = init
        self.connections = connections or {}
        self._bound: Callable[..., Any] | None = None
        unbound = inspect.signature(getattr(cls, method))
        self.__signature__ = unbound.replace(parameters=list(unbound.parameters.values())[1:])

    def __call__(self, **kwargs: Any) -> Any:
        if self._bound is None:
            values = {
                key: convert_literal(self.cls.__init__, key, raw)  # type: ignore[misc]
                for key, raw in self.init.items()
                if raw is not None and raw != ""
            }
            values.update({k: connection_from_env(c) for k, c in self.connections.items()})
            self._bound = getattr(self.cls(**values), self.method)
        return self._bound(**kwargs)
