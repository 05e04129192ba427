"""Pages rendered on the server from the services: catalog, deployments, endpoints, models.

Each handler reads through the same services (and so the same role checks) as the JSON
API; changes are made by the page's script calling the JSON API with the session cookie.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from lmfoundry.access.models import ProjectAccess
from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.api.usage import usage as usage_report
from lmfoundry.errors import LmfError, NotFound
from lmfoundry.platform import Platform
from lmfoundry.web.render import StudioRoute, render

router = APIRouter(route_class=StudioRoute, include_in_schema=False)
P = "/projects/{project}"


@router.get(P)
def project_home(access: ProjectDep) -> Response:
    return RedirectResponse(f"/projects/{access.project}/catalog", status_code=303)


@router.get(P + "/catalog")
def catalog(request: Request, access: ProjectDep, plat: PlatformDep) -> Response:
    deployed = {d.model: d.name for d in plat.serverless.list(access)}
    return render(
        request,
        "catalog.html",
        access=access,
        section="catalog",
        cards=plat.catalog.list_cards(),
        deployed=deployed,
    )


@router.get(P + "/deployments")
def deployments(request: Request, access: ProjectDep, plat: PlatformDep) -> Response:
    return render(
        request,
        "deployments.html",
        access=access,
        section="deployments",
        deployments=plat.serverless.list(access),
    )


@router.get(P + "/deployments/{name}")
async def deployment(
    name: str, request: Request, access: ProjectDep, plat: PlatformDep
) -> Response:
    view = plat.serverless.get(access, name)
    target = plat.serverless.serving_target(name)
    remaining = await plat.quotas.headers(target.quota)
    daily = [row.model_dump() for row in usage_report(access, plat, "day", None, None, name, None)]
    return render(
        request,
        "deployment.html",
        access=access,
        section="deployments",
        d=view,
        remaining=remaining,
        daily=daily,
        card=plat.resolver.card(access.project_id, view.model),
    )


@router.get(P + "/playground")
def playground(
    request: Request,
    access: ProjectDep,
    plat: PlatformDep,
    target: str | None = None,
) -> Response:
    targets: list[dict[str, Any]] = [
        {
            "value": f"serverless/{d.name}",
            "label": f"{d.name} (serverless, {d.model})",
            "url": d.target_url,
            "model": d.model,
            "deployments": [],
        }
        for d in plat.serverless.list(access)
    ] + [
        {
            "value": f"endpoint/{e.name}",
            "label": f"{e.name} (endpoint)",
            "url": e.target_url,
            "model": e.name,
            "deployments": e.deployments,
        }
        for e in plat.endpoints.list(access)
    ]
    return render(
        request,
        "playground.html",
        access=access,
        section="playground",
        targets=targets,
        selected=target or (targets[0]["value"] if targets else ""),
    )


@router.get(P + "/endpoints")
def endpoints(request: Request, access: ProjectDep, plat: PlatformDep) -> Response:
    return render(
        request,
        "endpoints.html",
        access=access,
        section="endpoints",
        endpoints=plat.endpoints.list(access),
    )


@router.get(P + "/endpoints/{name}")
def endpoint(name: str, request: Request, access: ProjectDep, plat: PlatformDep) -> Response:
    view = plat.endpoints.get(access, name)
    deployments = plat.endpoints.list_deployments(access, name)
    instances = None  # None: not the caller's to see (instances serve every project)
    if access.principal.is_admin:
        groups = set()
        for d in deployments:
            try:
                card = plat.resolver.card(access.project_id, d.model)
                groups.add(card.base_model or card.id)
            except LmfError:
                continue
        instances = [i for i in plat.backend.describe() if i.group in groups]
    return render(
        request,
        "endpoint.html",
        access=access,
        section="endpoints",
        e=view,
        deployments=deployments,
        instances=instances,
        models=_deployable(access, plat),
    )


def _deployable(access: ProjectAccess, plat: Platform) -> list[str]:
    """Model references a deployment can name: registered versions, then catalog ids."""
    registered = [f"{m.name}:{m.version}" for m in plat.registry.versions(access)]
    return registered + [c.id for c in plat.catalog.list_cards() if c.weights_present]


@router.get(P + "/models")
def models(request: Request, access: ProjectDep, plat: PlatformDep) -> Response:
    return render(
        request,
        "models.html",
        access=access,
        section="models",
        models=plat.registry.versions(access),
    )


fallback = APIRouter(route_class=StudioRoute, include_in_schema=False)


@fallback.get(P + "/{rest:path}")
def unknown(rest: str, access: ProjectDep) -> Response:
    """Any other page of a project: a 404 page, not the API's JSON."""
    raise NotFound(f"The studio has no page {rest!r}; the sections are in the menu.")
