"""The Responses API routes of the data plane: `{target}v1/responses` (and
`{target}responses`) to create, `v1/responses/{id}` to read and delete, on serverless
deployments and online endpoints. A key sees only its own target's responses."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lmfoundry.api.deps import PlatformDep
from lmfoundry.api.inference import presented_key, render
from lmfoundry.deployments.serverless import ServingTarget
from lmfoundry.platform import Platform
from lmfoundry.responses.service import ResponsesService
from lmfoundry.responses.store import Owner, ResponseStore
from lmfoundry.serving.gateway import ChatResult

router = APIRouter(tags=["inference"])

S = "/serverless/{name}"
E = "/endpoints/{name}"


def _service(plat: Platform) -> ResponsesService:
    return ResponsesService(ResponseStore(plat.db))


def _owner(target: ServingTarget) -> Owner:
    return Owner(target.project_id, target.kind, target.id, target.name)


def _serverless(plat: Platform, name: str, request: Request) -> tuple[ServingTarget, str]:
    target = plat.serverless.serving_target(name)
    return target, plat.gateway.check_key(target, presented_key(request))


@router.post(S + "/responses")
@router.post(S + "/v1/responses")
async def serverless_create(name: str, request: Request, plat: PlatformDep) -> Response:
    target = plat.serverless.serving_target(name)
    slot = await plat.gateway.authorize(target, presented_key(request), request.state.request_id)

    async def chat(body: bytes) -> ChatResult:
        return await plat.gateway.chat(target, slot, body, None, request.state.request_id)

    return render(await _service(plat).create(_owner(target), await request.body(), chat))


@router.get(S + "/v1/responses/{response_id}")
@router.get(S + "/responses/{response_id}")
async def serverless_get(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    target, _ = _serverless(plat, name, request)
    return JSONResponse(_service(plat).get(_owner(target), response_id))


@router.get(S + "/v1/responses/{response_id}/input_items")
async def serverless_input_items(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    target, _ = _serverless(plat, name, request)
    return JSONResponse(_service(plat).input_items(_owner(target), response_id))


@router.delete(S + "/v1/responses/{response_id}")
@router.delete(S + "/responses/{response_id}")
async def serverless_delete(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    target, _ = _serverless(plat, name, request)
    return JSONResponse(_service(plat).delete(_owner(target), response_id))


@router.post(E + "/responses")
@router.post(E + "/v1/responses")
async def endpoint_create(name: str, request: Request, plat: PlatformDep) -> Response:
    route, slot = await plat.router.admit_key(
        name, presented_key(request), request.state.request_id
    )
    header = request.headers.get("azureml-model-deployment")

    async def chat(body: bytes) -> ChatResult:
        return await plat.router.chat(route, slot, body, None, request.state.request_id, header)

    return render(await _service(plat).create(_owner(route.target), await request.body(), chat))


@router.get(E + "/v1/responses/{response_id}")
@router.get(E + "/responses/{response_id}")
async def endpoint_get(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    route, _ = plat.router.authorize(name, presented_key(request))
    return JSONResponse(_service(plat).get(_owner(route.target), response_id))


@router.get(E + "/v1/responses/{response_id}/input_items")
async def endpoint_input_items(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    route, _ = plat.router.authorize(name, presented_key(request))
    return JSONResponse(_service(plat).input_items(_owner(route.target), response_id))


@router.delete(E + "/v1/responses/{response_id}")
@router.delete(E + "/responses/{response_id}")
async def endpoint_delete(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    route, _ = plat.router.authorize(name, presented_key(request))
    return JSONResponse(_service(plat).delete(_owner(route.target), response_id))
