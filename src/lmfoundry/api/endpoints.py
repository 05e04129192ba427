"""Online endpoints: management under /api/v1, and the data plane at /endpoints/{name}/."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.models import Keys
from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.api.inference import presented_key, render
from lmfoundry.deployments.models import DeploymentView, EndpointView
from lmfoundry.engines.capabilities import capabilities
from lmfoundry.serving.wire import ModelInfoResponse

router = APIRouter(tags=["online endpoints"])
data_plane = APIRouter(tags=["inference"])


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Unique; part of the URL /endpoints/{name}/.")
    auth_mode: Literal["key"] = "key"
    description: str = ""
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = None
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None


class RequestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_timeout_ms: int | None = None
    max_concurrent_requests_per_instance: int | None = None


class DeploymentPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="A registered `name:version` or a catalog model id.")
    instance_count: int = 1
    request_settings: RequestSettings | None = None


class Regenerate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_type: Literal["primary", "secondary"]


P = "/projects/{project}/online-endpoints"


@router.post(P, status_code=201)
def create(body: EndpointCreate, access: ProjectDep, plat: PlatformDep) -> EndpointView:
    return plat.endpoints.create(access, **body.model_dump())


@router.get(P)
def list_(access: ProjectDep, plat: PlatformDep) -> list[EndpointView]:
    return plat.endpoints.list_endpoints(access)


@router.get(P + "/{name}")
def get(name: str, access: ProjectDep, plat: PlatformDep) -> EndpointView:
    return plat.endpoints.get(access, name)


@router.patch(P + "/{name}")
def update(name: str, body: EndpointUpdate, access: ProjectDep, plat: PlatformDep) -> EndpointView:
    return plat.endpoints.update(access, name, body.model_dump(exclude_unset=True))


@router.delete(P + "/{name}", status_code=204)
def delete(name: str, access: ProjectDep, plat: PlatformDep) -> None:
    plat.endpoints.delete(access, name)


@router.put(P + "/{name}/traffic")
def traffic(name: str, body: dict[str, int], access: ProjectDep, plat: PlatformDep) -> EndpointView:
    return plat.endpoints.set_split(access, name, "traffic", body)


@router.put(P + "/{name}/mirror-traffic")
def mirror_traffic(
    name: str, body: dict[str, int], access: ProjectDep, plat: PlatformDep
) -> EndpointView:
    return plat.endpoints.set_split(access, name, "mirror_traffic", body)


@router.get(P + "/{name}/keys")
def keys(name: str, access: ProjectDep, plat: PlatformDep) -> Keys:
    return plat.endpoints.read_keys(access, name)


@router.post(P + "/{name}/keys/regenerate")
def regenerate(name: str, body: Regenerate, access: ProjectDep, plat: PlatformDep) -> Keys:
    return plat.endpoints.regenerate_key(access, name, body.key_type)


@router.put(P + "/{name}/deployments/{deployment}")
def put_deployment(
    name: str, deployment: str, body: DeploymentPut, access: ProjectDep, plat: PlatformDep
) -> DeploymentView:
    settings = (
        body.request_settings.model_dump(exclude_none=True) if body.request_settings else None
    )
    return plat.endpoints.put_deployment(
        access, name, deployment, body.model, body.instance_count, settings
    )


@router.get(P + "/{name}/deployments")
def list_deployments(name: str, access: ProjectDep, plat: PlatformDep) -> list[DeploymentView]:
    return plat.endpoints.list_deployments(access, name)


@router.get(P + "/{name}/deployments/{deployment}")
def get_deployment(
    name: str, deployment: str, access: ProjectDep, plat: PlatformDep
) -> DeploymentView:
    return plat.endpoints.get_deployment(access, name, deployment)


@router.delete(P + "/{name}/deployments/{deployment}", status_code=204)
def delete_deployment(name: str, deployment: str, access: ProjectDep, plat: PlatformDep) -> None:
    plat.endpoints.delete_deployment(access, name, deployment)


# -- data plane ----------------------------------------------------------------------------


@data_plane.post("/endpoints/{name}/score")
async def score(name: str, request: Request, plat: PlatformDep) -> JSONResponse:
    """Azure ML's `/score` for chat models: `{"input_data": {"input_string": [...],
    "parameters": {...}}}` -> `{"output": "..."}`."""
    route, slot = await plat.router.admit_key(
        name, presented_key(request), request.state.request_id
    )
    body, headers = await plat.router.score(
        route,
        slot,
        await request.body(),
        request.state.request_id,
        request.headers.get("azureml-model-deployment"),
    )
    return JSONResponse(body, headers=headers)


@data_plane.post("/endpoints/{name}/chat/completions")
@data_plane.post("/endpoints/{name}/v1/chat/completions")
async def chat_completions(name: str, request: Request, plat: PlatformDep) -> Response:
    return await _generate(name, request, plat, "chat")


@data_plane.post("/endpoints/{name}/completions")
@data_plane.post("/endpoints/{name}/v1/completions")
async def completions(name: str, request: Request, plat: PlatformDep) -> Response:
    """The legacy completions API: a prompt, no chat template."""
    return await _generate(name, request, plat, "completions")


async def _generate(name: str, request: Request, plat: PlatformDep, api: str) -> Response:
    route, slot = await plat.router.admit_key(
        name, presented_key(request), request.state.request_id
    )
    result = await plat.router.chat(
        route,
        slot,
        await request.body(),
        request.headers.get("extra-parameters"),
        request.state.request_id,
        request.headers.get("azureml-model-deployment"),
        api=api,
    )
    return render(result)


@data_plane.get("/endpoints/{name}/info", response_model=ModelInfoResponse)
async def info(name: str, request: Request, plat: PlatformDep) -> JSONResponse:
    route, _ = plat.router.authorize(name, presented_key(request))
    state, _ = plat.router.pick(route, request.headers.get("azureml-model-deployment"))
    card = plat.resolver.card(state.project_id, state.model)
    body = ModelInfoResponse(
        model_name=card.id,
        model_type=card.model_type,
        model_provider_name=card.publisher,
        capabilities=capabilities(card.engine, card.model_type),
    )
    return JSONResponse(body.model_dump(), headers={"azureml-model-deployment": state.name})


@data_plane.get("/endpoints/{name}/v1/models")
async def models(name: str, request: Request, plat: PlatformDep) -> JSONResponse:
    route, _ = plat.router.authorize(name, presented_key(request))
    data = [
        {
            "id": plat.resolver.card(d.project_id, d.model).id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": d.name,
        }
        for d in route.deployments.values()
    ]
    return JSONResponse({"object": "list", "data": data})
