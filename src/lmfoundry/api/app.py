"""The FastAPI app: control plane under /api/v1, data plane at /serverless/..., studio at /."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from lmfoundry import __version__, web
from lmfoundry.api import (
    catalog,
    connections,
    datasets,
    endpoints,
    errors,
    finetune,
    flows,
    health,
    inference,
    instances,
    monitoring,
    projects,
    quotas,
    registry,
    serverless,
    usage,
)
from lmfoundry.api.forwarded import ForwardedClient
from lmfoundry.api.middleware import AuthThrottle, RequestContext
from lmfoundry.config import Settings, get_settings
from lmfoundry.observability import tracing
from lmfoundry.platform import Platform


def create_app(settings: Settings | None = None, platform: Platform | None = None) -> FastAPI:
    settings = settings or get_settings()
    plat = platform or Platform.create(settings)
    tracing.setup(settings)  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await plat.start()
        try:
            yield
        finally:
            await plat.stop()
            tracing.flush()  # the spans still batched

    app = FastAPI(
        title="lmfoundry",
        version=__version__,
        description="Self-hosted platform for small language models. Management API under "
        "/api/v1 (personal access token); inference at /serverless/{name}/ "
        "(deployment key).",
        lifespan=lifespan,
        responses=errors.ERROR_RESPONSES,
    )
    app.state.platform = plat
    errors.install(app)
    # The data plane first: every request is matched against the routes in order, and
    # inference requests are the many (about 70 management routes otherwise come before).
    app.include_router(inference.router)
    app.include_router(health.router)
    for module in (
        catalog,
        projects,
        quotas,
        serverless,
        usage,
        instances,
        monitoring,
        registry,
        endpoints,
        connections,
        flows,
        datasets,
        finetune,
    ):
        app.include_router(module.router, prefix="/api/v1")
    web.install(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "pid": os.getpid(),
                "supervisor": settings.supervisor,
            }
        )

    app.add_middleware(AuthThrottle, limit=settings.auth_failures_per_minute)
    # outside the throttle: it counts failures by the address this sets
    app.add_middleware(ForwardedClient, trusted=settings.trusted_proxies)
    app.add_middleware(
        RequestContext,
        max_body=settings.max_body_bytes,
        max_upload=settings.max_upload_bytes,
        max_api_body=settings.max_api_body_bytes,
        max_flow=settings.flow_max_bytes,
        log_requests=settings.log_format == "json",
        project_names=plat.metrics.project_name,
    )
    if settings.metrics_port:
        app.add_middleware(health.MetricsPort, port=settings.metrics_port, platform=plat)
    return app
