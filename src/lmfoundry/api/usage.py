"""`/api/v1/projects/{project}/usage`: tokens, requests and cost."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.errors import InvalidRequest

router = APIRouter(tags=["usage"])


class UsageRow(BaseModel):
    kind: str | None = None
    deployment: str | None = None
    key: str | None = None
    day: str | None = None
    model: str | None = None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float


@router.get(
    "/projects/{project}/usage", response_model=list[UsageRow], response_model_exclude_none=True
)
def usage(
    access: ProjectDep,
    plat: PlatformDep,
    group_by: Literal["deployment", "day", "key", "model"] = "deployment",
    start: datetime | None = Query(default=None, description="Inclusive, ISO 8601."),
    end: datetime | None = Query(default=None, description="Exclusive, ISO 8601."),
    deployment: str | None = Query(default=None, description="Only this deployment."),
) -> list[dict[str, Any]]:
    if start and end and end <= start:
        raise InvalidRequest("end must be after start.", param="end")
    plat.metering.flush()  # include requests answered in the last moments
    return plat.metering.report(access.project_id, group_by, start, end, deployment)
