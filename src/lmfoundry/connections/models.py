"""Connection types, the targets an `lmfoundry` connection points at, connection files, and
what the connection service answers (`ConnectionView`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, Field

from lmfoundry.errors import InvalidRequest

MASK = "***"  # what the API shows instead of a secret value, and what keeps it on update


class ConnectionType(StrEnum):
    """`custom`: configs and secrets typed in by a developer (Prompt flow's CustomConnection).
    `lmfoundry`: one of this server's deployments, whose URL and key are looked up each time a
    flow runs, so no key is ever copied by hand."""

    custom = "custom"
    lmfoundry = "lmfoundry"


class ConnectionView(BaseModel):
    """A connection as the API shows it: configs, and the names of its secrets, never their
    values."""

    name: str
    project: str
    type: str = Field(description="'custom' or 'lmfoundry'.")
    configs: dict[str, str]
    secrets: dict[str, str] = Field(description=f'Secret names; every value is "{MASK}".')
    created_by: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Target:
    """Where an `lmfoundry` connection sends requests, resolved when a flow starts."""

    kind: str
    name: str
    target_url: str  # `{base}/serverless/{name}/`: chat/completions, info, v1/... live under it
    endpoint: str  # the URL flow code posts to: the target URL, or an endpoint's /score URL
    key: str


class TargetResolver(Protocol):
    """Looks up one kind of deployment (`serverless`, later `endpoint`) in a project."""

    def exists(self, project_id: int, name: str) -> bool: ...

    def resolve(self, project_id: int, name: str) -> Target: ...


@dataclass(frozen=True)
class ResolvedConnection:
    """A connection as a flow process receives it: plaintext secrets. Never logged, never
    returned by the API; it exists only on the way from the database to the flow process."""

    name: str
    type: str
    configs: dict[str, str]
    secrets: dict[str, str]

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "configs": self.configs,
            "secrets": self.secrets,
        }

    def __repr__(self) -> str:  # keep secrets out of tracebacks and debug output
        masked = dict.fromkeys(self.secrets, MASK)
        return f"ResolvedConnection(name={self.name!r}, configs={self.configs!r}, secrets={masked})"


def parse_connection_file(text: str, source: str = "connection.yaml") -> dict[str, Any]:
    """A Prompt flow connection file (`$schema`, `name`, `type: custom`, `configs`, `secrets`)
    as the body of `PUT /connections/{name}` plus its `name`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"{source} must be a mapping with name, type, configs and secrets.")
    known = {"$schema", "name", "type", "configs", "secrets", "module", "description"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidRequest(
            f"{source}: unknown field(s) {', '.join(unknown)}; a connection file has "
            "name, type, configs and secrets.",
            param=unknown[0],
        )
    kind = str(data.get("type", ConnectionType.custom.value))
    if kind not in (ConnectionType.custom.value, ConnectionType.lmfoundry.value):
        raise InvalidRequest(
            f"{source}: type {kind!r} is not supported; use type: custom (configs + secrets) "
            "or type: lmfoundry (target_kind + target).",
            param="type",
        )
    body: dict[str, Any] = {"type": kind}
    for field in ("configs", "secrets"):
        value = data.get(field) or {}
        if not isinstance(value, dict):
            raise InvalidRequest(f"{source}: {field} must be a mapping of names to values.")
        for key, item in value.items():
            if item is None or isinstance(item, dict | list):
                raise InvalidRequest(
                    f"{source}: {field}.{key} must be a plain value (a string or a number).",
                    param=f"{field}.{key}",
                )
        body[field] = {str(k): v if isinstance(v, str) else str(v) for k, v in value.items()}
    if data.get("name") is not None:
        body["name"] = str(data["name"])
    return body
