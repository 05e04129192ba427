"""`/api/v1/projects/{project}/monitoring/...` (a target's traffic from the usage ledger, for
the studio's live charts) and `/api/v1/cluster` (every instance, admins only)."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Query

from lmfoundry.access.models import ProjectAccess
from lmfoundry.api.deps import PlatformDep, PrincipalDep, ProjectDep
from lmfoundry.errors import Forbidden, LmfError
from lmfoundry.observability.models import InstanceView, Series, TargetSummary
from lmfoundry.platform import Platform

router = APIRouter(tags=["monitoring"])

Window = Literal["hour", "day"]
WindowQuery = Query("hour", description="hour (one-minute buckets) or day (15-minute buckets).")
P = "/projects/{project}/monitoring"


@router.get(P)
async def summary(
    access: ProjectDep, plat: PlatformDep, window: Window = WindowQuery
) -> list[TargetSummary]:
    """Requests, errors, 429s, tokens and latency of every target with traffic."""
    return await asyncio.to_thread(plat.monitoring.summary, access.project_id, window)


@router.get(P + "/serverless/{name}")
async def serverless(
    name: str, access: ProjectDep, plat: PlatformDep, window: Window = WindowQuery
) -> Series:
    return await series(access, plat, "serverless", name, window)


@router.get(P + "/endpoints/{name}")
async def endpoint(
    name: str, access: ProjectDep, plat: PlatformDep, window: Window = WindowQuery
) -> Series:
    return await series(access, plat, "endpoint", name, window)


@router.get("/cluster")
async def cluster(plat: PlatformDep, actor: PrincipalDep) -> list[InstanceView]:
    """Every instance: its model, state, memory, busy and total slots, uptime."""
    if not actor.is_admin:
        raise Forbidden("Only an admin can see the cluster (its instances serve every project).")
    return await plat.monitoring.cluster()


async def series(
    access: ProjectAccess, plat: Platform, kind: str, name: str, window: str
) -> Series:
    """One target's charts; instances only for admins (they serve every project)."""
    groups = await asyncio.to_thread(_groups, access, plat, kind, name)  # 404 if unknown
    if groups is not None:
        await plat.monitoring.cluster()  # fresh slot gauges for the instance table
    return await asyncio.to_thread(
        plat.monitoring.series, access.project_id, kind, name, window, groups
    )


def _groups(access: ProjectAccess, plat: Platform, kind: str, name: str) -> set[str] | None:
    """The instance groups (models) the target runs on, for an admin; None otherwise."""
    if kind == "serverless":
        models = [plat.serverless.get(access, name).model]
    else:
        plat.endpoints.get(access, name)
        models = [d.model for d in plat.endpoints.list_deployments(access, name)]
    if not access.principal.is_admin:
        return None
    groups: set[str] = set()
    for model in models:
        try:
            card = plat.resolver.card(access.project_id, model)
        except LmfError:  # a deployment whose model went away: nothing runs it
            continue
        groups.add(card.base_model or card.id)
        groups.add(card.id)
    return groups
