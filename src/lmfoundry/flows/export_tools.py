"""What the flow code of an exported flow imports, and its connections.

`lmfoundry flow export` copies this file, unchanged, beside the program (as `flow_tools.py`);
the `promptflow` folder there re-exports `tool`, `log_metric` and `CustomConnection`, so code
written for Prompt flow runs unchanged. lmfoundry itself never imports it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
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
