"""`/api/v1/projects/{project}/serverless-deployments`."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.models import Keys
from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.deployments.models import ServerlessView

router = APIRouter(tags=["serverless deployments"])


class ServerlessCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Unique; part of the target URL /serverless/{name}/.")
    model: str = Field(description="A catalog model id, e.g. SmolLM2-135M-Instruct.")
    tokens_per_minute: int | None = Field(default=None, description="Default 200,000.")
    requests_per_minute: int | None = Field(default=None, description="Default 1,000.")
    price_input_per_1k: float | None = Field(default=None, description="Overrides the card.")
    price_output_per_1k: float | None = Field(default=None, description="Overrides the card.")


class ServerlessUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None
    price_input_per_1k: float | None = None
    price_output_per_1k: float | None = None


class Regenerate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_type: Literal["primary", "secondary"]


PREFIX = "/projects/{project}/serverless-deployments"


@router.post(PREFIX, status_code=201)
def create(body: ServerlessCreate, access: ProjectDep, plat: PlatformDep) -> ServerlessView:
    return plat.serverless.create(access, **body.model_dump())


@router.get(PREFIX)
def list_(access: ProjectDep, plat: PlatformDep) -> list[ServerlessView]:
    return plat.serverless.list(access)


@router.get(PREFIX + "/{name}")
def get(name: str, access: ProjectDep, plat: PlatformDep) -> ServerlessView:
    return plat.serverless.get(access, name)


@router.patch(PREFIX + "/{name}")
def update(
    name: str, body: ServerlessUpdate, access: ProjectDep, plat: PlatformDep
) -> ServerlessView:
    return plat.serverless.update(access, name, body.model_dump(exclude_unset=True))


@router.delete(PREFIX + "/{name}", status_code=204)
def delete(name: str, access: ProjectDep, plat: PlatformDep) -> None:
    plat.serverless.delete(access, name)


@router.get(PREFIX + "/{name}/keys")
def keys(name: str, access: ProjectDep, plat: PlatformDep) -> Keys:
    return plat.serverless.read_keys(access, name)


@router.post(PREFIX + "/{name}/keys/regenerate")
def regenerate(name: str, body: Regenerate, access: ProjectDep, plat: PlatformDep) -> Keys:
    return plat.serverless.regenerate_key(access, name, body.key_type)
