"""`/api/v1/projects/{project}/models`: the model registry."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.errors import InvalidRequest
from lmfoundry.registry.models import ModelVersionView

router = APIRouter(tags=["model registry"])


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    from_job: str | None = Field(default=None, description="A completed fine-tuning job id.")
    path: str | None = Field(
        default=None,
        description="An MLflow/HF/PEFT folder or .gguf file on the server's disk, below one "
        "of the operator's import roots (LMFOUNDRY_IMPORT_ROOTS).",
    )
    base_model: str | None = Field(default=None, description="For adapters: the catalog base.")
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


PREFIX = "/projects/{project}/models"


@router.post(PREFIX, status_code=201)
def register(body: RegisterRequest, access: ProjectDep, plat: PlatformDep) -> ModelVersionView:
    if (body.from_job is None) == (body.path is None):
        raise InvalidRequest(
            "Give exactly one of from_job (a fine-tuning job id) or path (a model folder).",
            param="from_job",
        )
    if body.from_job is not None:
        return plat.registry.register_job(
            access, body.name, body.from_job, description=body.description, tags=body.tags
        )
    return plat.registry.register_path(
        access,
        body.name,
        body.path or "",
        base_model=body.base_model,
        description=body.description,
        tags=body.tags,
    )


@router.get(PREFIX)
def list_(access: ProjectDep, plat: PlatformDep, name: str | None = None) -> list[ModelVersionView]:
    return plat.registry.versions(access, name)


@router.get(PREFIX + "/{ref}")
def get(ref: str, access: ProjectDep, plat: PlatformDep) -> ModelVersionView:
    """`ref` is `name:version`, or `name` for the latest version."""
    return plat.registry.get(access, ref)


@router.delete(PREFIX + "/{ref}", status_code=204)
def delete(ref: str, access: ProjectDep, plat: PlatformDep) -> None:
    plat.registry.delete(access, ref)
