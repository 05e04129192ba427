"""Prompt flow compatibility: `from promptflow.tracing import trace` (a no-op here)."""

from typing import Any

from lmfoundry.flows.tools import trace


def start_trace(*_: Any, **__: Any) -> None:
    """Prompt flow starts its trace collector here; lmfoundry traces flows itself."""


__all__ = ["start_trace", "trace"]
