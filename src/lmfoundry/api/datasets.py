"""`/api/v1/projects/{project}/datasets`: upload (multipart), list, show."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from pydantic import BaseModel, Field

from lmfoundry.api.deps import PlatformDep, ProjectDep

router = APIRouter(tags=["datasets"])

PREFIX = "/projects/{project}/datasets"


class DatasetView(BaseModel):
    id: str = Field(description="Stable id (ds-…); jobs accept it, NAME or NAME:VERSION.")
    name: str
    version: int = Field(description="1 for the first upload of a name, then 2, 3, …")
    project: str
    filename: str = Field(description="The uploaded file's name.")
    rows: int = Field(description="Conversations (non-blank lines).")
    size_bytes: int
    sha256: str
    stats: dict[str, Any] = Field(
        description="messages_per_row and chars_per_row (min, mean, max, total); "
        "tokens_per_row by model id, counted with that model's tokenizer and chat template "
        "(for the model given at upload and for each base model a job trained on it)."
    )
    created_by: str
    created_at: datetime


@router.post(PREFIX, response_model=DatasetView, status_code=201)
def upload(
    access: ProjectDep,
    plat: PlatformDep,
    file: Annotated[UploadFile, File(description='Chat JSONL: one {"messages": [...]} a line.')],
    name: Annotated[str, Form(description="Dataset name; uploading it again adds a version.")],
    model: Annotated[
        str | None,
        Form(description="Catalog model to count tokens with and check the context length of."),
    ] = None,
) -> dict[str, Any]:
    return plat.datasets.upload(access, name, file.filename or "data.jsonl", file.file, model)


@router.get(PREFIX, response_model=list[DatasetView])
def list_(
    access: ProjectDep,
    plat: PlatformDep,
    name: Annotated[str | None, Query(description="Only the versions of this name.")] = None,
) -> list[dict[str, Any]]:
    return plat.datasets.list(access, name)


@router.get(PREFIX + "/{ref}", response_model=DatasetView)
def get(ref: str, access: ProjectDep, plat: PlatformDep) -> dict[str, Any]:
    """`ref`: the id, NAME:VERSION, or NAME (its newest version)."""
    return plat.datasets.get(access, ref)
