"""`/api/v1/projects/{project}/datasets`: upload (multipart), list, show."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile

from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.datasets.models import DatasetView

router = APIRouter(tags=["datasets"])

PREFIX = "/projects/{project}/datasets"


@router.post(PREFIX, status_code=201)
def upload(
    access: ProjectDep,
    plat: PlatformDep,
    file: Annotated[UploadFile, File(description='Chat JSONL: one {"messages": [...]} a line.')],
    name: Annotated[str, Form(description="Dataset name; uploading it again adds a version.")],
    model: Annotated[
        str | None,
        Form(description="Catalog model to count tokens with and check the context length of."),
    ] = None,
) -> DatasetView:
    return plat.datasets.upload(access, name, file.filename or "data.jsonl", file.file, model)


@router.get(PREFIX)
def list_(
    access: ProjectDep,
    plat: PlatformDep,
    name: Annotated[str | None, Query(description="Only the versions of this name.")] = None,
) -> list[DatasetView]:
    return plat.datasets.list(access, name)


@router.get(PREFIX + "/{ref}")
def get(ref: str, access: ProjectDep, plat: PlatformDep) -> DatasetView:
    """`ref`: the id, NAME:VERSION, or NAME (its newest version)."""
    return plat.datasets.get(access, ref)
