"""`/api/v1/projects/{project}/usage`: tokens, requests and cost."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query

from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.errors import InvalidRequest
from lmfoundry.metering.models import UsageRow

router = APIRouter(tags=["usage"])


@router.get(
    "/projects/{project}/usage", response_model=list[UsageRow], response_model_exclude_none=True
)
def usage(
    access: ProjectDep,
    plat: PlatformDep,
    group_by: Literal["target", "deployment", "key", "day", "model"] = "target",
    start: datetime | None = Query(default=None, description="Inclusive, ISO 8601."),
    end: datetime | None = Query(default=None, description="Exclusive, ISO 8601."),
    target: str | None = Query(
        default=None, description="Only this target (serverless deployment or endpoint)."
    ),
    deployment: str | None = Query(
        default=None, description="Only this deployment (an endpoint's, or a serverless one)."
    ),
) -> list[UsageRow]:
    """Billed usage grouped by target (what requests were sent to), deployment (what
    answered them), key, day or model."""
    if start and end and end <= start:
        raise InvalidRequest("end must be after start.", param="end")
    plat.metering.flush()  # include requests answered in the last moments
    return plat.metering.report(access.project_id, group_by, start, end, target, deployment)
