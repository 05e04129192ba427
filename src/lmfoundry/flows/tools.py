"""What flow code imports: `tool`, `CustomConnection` and `log_metric`.

Code written for Prompt flow reaches these through the compatibility package in `compat/`
(`from promptflow import tool`, `from promptflow.connections import CustomConnection`), which
is put on the path of flow processes only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])

TOOL_MARK = "__lmfoundry_tool__"


@overload
def tool(func: F) -> F: ...


@overload
def tool(
    func: None = None, *, name: str | None = None, description: str | None = None, **_: Any
) -> Callable[[F], F]: ...


def tool(
    func: F | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    **_: Any,
) -> F | Callable[[F], F]:
    """Mark the function a python node calls. Works bare (`@tool`) and with arguments
    (`@tool(name="x")`), as in Prompt flow; the function itself is returned unchanged."""

    def mark(f: F) -> F:
        setattr(f, TOOL_MARK, {"name": name or f.__name__, "description": description})
        return f

    return mark(func) if func is not None else mark


class CustomConnection:
    """A connection's configs and secrets. `connection.endpoint` and `connection["key"]` look in
    secrets, then configs; `repr()` masks the secrets."""

    configs: dict[str, str]
    secrets: dict[str, str]
    name: str | None

    def __init__(
        self,
        configs: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Prompt flow also accepts the configs as keyword arguments.
        object.__setattr__(self, "configs", {**(configs or {}), **kwargs})
        object.__setattr__(self, "secrets", dict(secrets or {}))
        object.__setattr__(self, "name", name)

    def __getattr__(self, key: str) -> str:
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(
                f"Connection {self.name!r} has no config or secret {key!r}; it has "
                f"{', '.join(sorted({**self.configs, **self.secrets})) or 'nothing'}."
            ) from None

    def __getitem__(self, key: str) -> str:
        if key in self.secrets:
            return self.secrets[key]
        if key in self.configs:
            return self.configs[key]
        raise KeyError(key)

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


class ToolProvider:
    """Base of Prompt flow's class tools: a subclass's `__init__` takes the node's init
    inputs and a method decorated with `@tool` is what the node calls."""

    def __init__(self) -> None:
        pass

    @classmethod
    def get_initialize_inputs(cls) -> dict[str, Any]:
        import inspect

        return {k: v for k, v in inspect.signature(cls.__init__).parameters.items() if k != "self"}

    @classmethod
    def get_required_initialize_inputs(cls) -> dict[str, Any]:
        return {
            k: v
            for k, v in cls.get_initialize_inputs().items()
            if v.default is v.empty and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)
        }


def trace(func: F | None = None, **_: Any) -> Any:
    """Prompt flow's `@trace`: tracing is lmfoundry's business, so the function is returned
    unchanged (bare `@trace` and `@trace(...)` both)."""

    def mark(f: F) -> F:
        return f

    return mark(func) if func is not None else mark


_metrics: dict[str, Any] | None = None


@contextmanager
def collecting_metrics() -> Iterator[dict[str, Any]]:
    """Record `log_metric` calls made while aggregation nodes run (one flow process runs one
    aggregation at a time, so a module-level slot is enough)."""
    global _metrics
    _metrics = {}
    try:
        yield _metrics
    finally:
        _metrics = None


def log_metric(key: str, value: float, variant_id: str | None = None) -> None:
    """Record a run metric from an aggregation node (Prompt flow's `log_metric`)."""
    if _metrics is None:
        print(
            f"log_metric({key!r}) ignored: metrics are recorded from aggregation nodes only "
            "(aggregation: true).",
            file=sys.stderr,
        )
        return
    _metrics[key] = value
