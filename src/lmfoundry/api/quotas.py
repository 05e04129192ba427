"""`/api/v1/projects/{project}/quotas`: a project's limits and current use (members) and
changes to them (admins)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.quotas.models import ProjectQuotasView

router = APIRouter(tags=["access"])


class QuotaChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quotas: dict[str, int | None] = Field(
        description="Quota name -> the project's new limit, or null for the server's default: "
        "instances, instance_threads, finetune_jobs, flow_runs_per_minute, "
        "flow_calls_per_minute, storage_bytes."
    )


@router.get("/projects/{project}/quotas")
async def get_quotas(access: ProjectDep, plat: PlatformDep) -> ProjectQuotasView:
    return await plat.project_quotas.view_async(access)


@router.put("/projects/{project}/quotas")
async def set_quotas(body: QuotaChange, access: ProjectDep, plat: PlatformDep) -> ProjectQuotasView:
    """Admins only (403 otherwise); every change goes to the audit log."""
    await asyncio.to_thread(plat.project_quotas.set, access.principal, access.project, body.quotas)
    return await plat.project_quotas.view_async(access)
