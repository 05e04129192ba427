"""`GET /metrics` (Prometheus text; an admin or metrics-only token) and `GET /readyz`."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.types import ASGIApp, Receive, Scope, Send

from lmfoundry.access.models import TokenScope
from lmfoundry.api.deps import PlatformDep, bearer
from lmfoundry.errors import Forbidden, NotFound
from lmfoundry.observability.metrics import CONTENT_TYPE, read_work
from lmfoundry.platform import Platform

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(
    plat: PlatformDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Response:
    """Every project's request, token, quota, instance and ledger metrics, for Prometheus:
    an admin's token or a metrics-only one (`lmfoundry tokens create NAME --metrics`)."""
    token = credentials.credentials if credentials else None
    actor = await asyncio.to_thread(plat.access.authenticate, token, TokenScope.metrics)
    if not actor.is_admin and actor.scope != TokenScope.metrics:
        raise Forbidden(
            "GET /metrics covers every project: use an admin's token or a metrics token "
            "(an admin runs `lmfoundry tokens create NAME --metrics`)."
        )
    return await render_metrics(plat)


@router.get("/readyz")
async def readyz(plat: PlatformDep) -> JSONResponse:
    """200 when the database, the quota store and the supervisor answer; 503 naming what
    is down otherwise (for load balancers and Kubernetes readiness probes)."""
    readiness = await plat.health.readiness()
    body = {"status": "ready" if readiness.ready else "unavailable", "checks": readiness.checks}
    return JSONResponse(body, status_code=200 if readiness.ready else 503)


async def render_metrics(plat: Platform) -> Response:
    backlog = await asyncio.to_thread(plat.metering.backlog)
    work = await asyncio.to_thread(read_work, plat.db)
    engine = await plat.backend.engine_metrics()
    plat.metrics.refresh(plat.backend.describe(), engine, backlog, work)
    return Response(plat.metrics.text(), media_type=CONTENT_TYPE)


class MetricsPort:
    """LMFOUNDRY_METRICS_PORT: the same server also listens on 127.0.0.1 at that port, and
    there answers GET /metrics without a token (a scraper on this host) and nothing else."""

    def __init__(self, app: ASGIApp, port: int, platform: Platform) -> None:
        self.app = app
        self.port = port
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] != "http" or not server or server[1] != self.port:
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            response = await render_metrics(self.platform)
        else:
            missing = NotFound(
                f"Port {self.port} (LMFOUNDRY_METRICS_PORT) serves GET /metrics only; the "
                "API, the studio and inference are on the main port."
            )
            response = JSONResponse(missing.to_body(), status_code=missing.status_code)
        await response(scope, receive, send)
