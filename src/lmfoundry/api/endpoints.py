"""`/api/v1/projects/{project}/online-endpoints`: endpoints, their deployments, traffic and
keys (the data plane at /endpoints/{name}/ is api/inference.py)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.models import Keys
from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.deployments.models import DeploymentView, EndpointView

router = APIRouter(tags=["online endpoints"])


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Unique; part of the URL /endpoints/{name}/.")
    auth_mode: Literal["key"] = "key"
    description: str = ""
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = None
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None


class RequestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_timeout_ms: int | None = None
    max_concurrent_requests_per_instance: int | None = None


class DeploymentPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="A registered `name:version` or a catalog model id.")
    instance_count: int = 1
    request_settings: RequestSettings | None = None


class Regenerate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_type: Literal["primary", "secondary"]


P = "/projects/{project}/online-endpoints"


@router.post(P, status_code=201)
def create(body: EndpointCreate, access: ProjectDep, plat: PlatformDep) -> EndpointView:
    return plat.endpoints.create(access, **body.model_dump())


@router.get(P)
def list_(access: ProjectDep, plat: PlatformDep) -> list[EndpointView]:
    return plat.endpoints.list(access)


@router.get(P + "/{name}")
def get(name: str, access: ProjectDep, plat: PlatformDep) -> EndpointView:
    return plat.endpoints.get(access, name)


@router.patch(P + "/{name}")
def update(name: str, body: EndpointUpdate, access: ProjectDep, plat: PlatformDep) -> EndpointView:
    return plat.endpoints.update(access, name, body.model_dump(exclude_unset=True))


@router.delete(P + "/{name}", status_code=204)
def delete(name: str, access: ProjectDep, plat: PlatformDep) -> None:
    plat.endpoints.delete(access, name)


@router.put(P + "/{name}/traffic")
def traffic(name: str, body: dict[str, int], access: ProjectDep, plat: PlatformDep) -> EndpointView:
    return plat.endpoints.set_split(access, name, "traffic", body)


@router.put(P + "/{name}/mirror-traffic")
def mirror_traffic(
    name: str, body: dict[str, int], access: ProjectDep, plat: PlatformDep
) -> EndpointView:
    return plat.endpoints.set_split(access, name, "mirror_traffic", body)


@router.get(P + "/{name}/keys")
def keys(name: str, access: ProjectDep, plat: PlatformDep) -> Keys:
    return plat.endpoints.read_keys(access, name)


@router.post(P + "/{name}/keys/regenerate")
def regenerate(name: str, body: Regenerate, access: ProjectDep, plat: PlatformDep) -> Keys:
    return plat.endpoints.regenerate_key(access, name, body.key_type)


@router.put(P + "/{name}/deployments/{deployment}")
def put_deployment(
    name: str, deployment: str, body: DeploymentPut, access: ProjectDep, plat: PlatformDep
) -> DeploymentView:
    settings = (
        body.request_settings.model_dump(exclude_none=True) if body.request_settings else None
    )
    return plat.endpoints.put_deployment(
        access, name, deployment, body.model, body.instance_count, settings
    )


@router.get(P + "/{name}/deployments")
def list_deployments(name: str, access: ProjectDep, plat: PlatformDep) -> list[DeploymentView]:
    return plat.endpoints.list_deployments(access, name)


@router.get(P + "/{name}/deployments/{deployment}")
def get_deployment(
    name: str, deployment: str, access: ProjectDep, plat: PlatformDep
) -> DeploymentView:
    return plat.endpoints.get_deployment(access, name, deployment)


@router.delete(P + "/{name}/deployments/{deployment}", status_code=204)
def delete_deployment(name: str, deployment: str, access: ProjectDep, plat: PlatformDep) -> None:
    plat.endpoints.delete_deployment(access, name, deployment)
