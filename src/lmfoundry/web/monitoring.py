"""The studio's monitoring pages: one per serverless deployment and per online endpoint
(live charts drawn by static/monitoring.js from the monitoring API), and the cluster page
for admins (every instance's model, state, memory, slots and uptime)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lmfoundry.api.deps import PlatformDep, PrincipalDep, ProjectDep
from lmfoundry.errors import Forbidden
from lmfoundry.observability.monitoring import duration, mib
from lmfoundry.web.render import StudioRoute, render, templates

router = APIRouter(route_class=StudioRoute, include_in_schema=False)
POLL_SECONDS = 5  # how often an open page asks for new numbers


templates.env.filters["mib"] = mib
templates.env.filters["duration"] = duration


@router.get("/projects/{project}/deployments/{name}/monitoring")
def deployment(name: str, request: Request, access: ProjectDep, plat: PlatformDep) -> Response:
    plat.serverless.get(access, name)  # 404 page for an unknown deployment
    return _page(request, access, "serverless", name, "deployments")


@router.get("/projects/{project}/endpoints/{name}/monitoring")
def endpoint(name: str, request: Request, access: ProjectDep, plat: PlatformDep) -> Response:
    plat.endpoints.get(access, name)
    return _page(request, access, "endpoint", name, "endpoints")


def _page(request: Request, access: ProjectDep, kind: str, name: str, section: str) -> Response:
    api = "serverless" if kind == "serverless" else "endpoints"
    return render(
        request,
        "monitoring.html",
        access=access,
        section=section,
        kind=kind,
        name=name,
        back=f"/projects/{access.project}/{section}/{name}",
        api=f"/api/v1/projects/{access.project}/monitoring/{api}/{name}",
        poll_seconds=POLL_SECONDS,
        is_admin=access.principal.is_admin,
    )


@router.get("/cluster")
async def cluster(request: Request, actor: PrincipalDep, plat: PlatformDep) -> Response:
    if not actor.is_admin:
        raise Forbidden("Only an admin can see the cluster (its instances serve every project).")
    return render(
        request,
        "monitoring_cluster.html",
        principal=actor,
        instances=await plat.monitoring.cluster(),
        supervisor=plat.settings.supervisor,
        poll_seconds=POLL_SECONDS,
    )
