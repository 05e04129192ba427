"""`/api/v1/projects/{project}/serverless-deployments`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.api.deps import PlatformDep, ProjectDep

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


class ServerlessView(BaseModel):
    name: str
    project: str
    model: str
    target_url: str
    provisioning_state: str
    tokens_per_minute: int
    requests_per_minute: int
    price_input_per_1k: float
    price_output_per_1k: float
    created_by: str
    created_at: datetime


class Keys(BaseModel):
    primary_key: str
    secondary_key: str


class Regenerate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_type: Literal["primary", "secondary"]


PREFIX = "/projects/{project}/serverless-deployments"


@router.post(PREFIX, response_model=ServerlessView, status_code=201)
def create(body: ServerlessCreate, access: ProjectDep, plat: PlatformDep) -> dict[str, Any]:
    return plat.serverless.create(access, **body.model_dump())


@router.get(PREFIX, response_model=list[ServerlessView])
def list_(access: ProjectDep, plat: PlatformDep) -> list[dict[str, Any]]:
    return plat.serverless.list_deployments(access)


@router.get(PREFIX + "/{name}", response_model=ServerlessView)
def get(name: str, access: ProjectDep, plat: PlatformDep) -> dict[str, Any]:
    return plat.serverless.get(access, name)


@router.patch(PREFIX + "/{name}", response_model=ServerlessView)
def update(
    name: str, body: ServerlessUpdate, access: ProjectDep, plat: PlatformDep
) -> dict[str, Any]:
    return plat.serverless.update(access, name, body.model_dump(exclude_unset=True))


@router.delete(PREFIX + "/{name}", status_code=204)
def delete(name: str, access: ProjectDep, plat: PlatformDep) -> None:
    plat.serverless.delete(access, name)


@router.get(PREFIX + "/{name}/keys", response_model=Keys)
def keys(name: str, access: ProjectDep, plat: PlatformDep) -> dict[str, str]:
    return plat.serverless.read_keys(access, name)


@router.post(PREFIX + "/{name}/keys/regenerate", response_model=Keys)
def regenerate(
    name: str, body: Regenerate, access: ProjectDep, plat: PlatformDep
) -> dict[str, str]:
    return plat.serverless.regenerate_key(access, name, body.key_type)
