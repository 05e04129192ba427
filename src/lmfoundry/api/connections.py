"""`/api/v1/projects/{project}/connections`: configs + write-only secrets for flows."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.connections.models import ConnectionView

router = APIRouter(tags=["connections"])


class ConnectionPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(
        default="custom",
        description="'custom' (configs + secrets) or 'lmfoundry' (configs target_kind and "
        "target name a deployment of this server; its URL and key are looked up when a flow "
        "runs).",
    )
    configs: dict[str, str] = Field(default_factory=dict, description="Plain values.")
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description='Encrypted at rest, shown as "***"; send "***" to keep a stored value.',
    )


PREFIX = "/projects/{project}/connections"


@router.put(
    PREFIX + "/{name}", responses={201: {"model": ConnectionView, "description": "Created."}}
)
def put(
    name: str, body: ConnectionPut, access: ProjectDep, plat: PlatformDep, response: Response
) -> ConnectionView:
    """Create the connection, or replace its configs and secrets."""
    view, created = plat.connections.put(access, name, body.type, body.configs, body.secrets)
    response.status_code = 201 if created else 200
    return view


@router.get(PREFIX)
def list_(access: ProjectDep, plat: PlatformDep) -> list[ConnectionView]:
    return plat.connections.list(access)


@router.get(PREFIX + "/{name}")
def get(name: str, access: ProjectDep, plat: PlatformDep) -> ConnectionView:
    return plat.connections.get(access, name)


@router.delete(PREFIX + "/{name}", status_code=204)
def delete(name: str, access: ProjectDep, plat: PlatformDep) -> None:
    plat.connections.delete(access, name)
