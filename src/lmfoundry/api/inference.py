"""The data plane for serverless deployments: `/serverless/{name}/...` with a key."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmfoundry.api.deps import PlatformDep
from lmfoundry.engines.capabilities import capabilities
from lmfoundry.serving.gateway import ChatResult
from lmfoundry.serving.wire import ModelInfoResponse

router = APIRouter(tags=["inference"])


def presented_key(request: Request) -> str | None:
    """`Authorization: Bearer <key>` or `api-key: <key>` (the Azure SDKs send either). An
    empty Bearer does not hide the `api-key` header: azure-ai-inference's Azure OpenAI-style
    samples pass `AzureKeyCredential("")` with `headers={"api-key": key}`, which sends both."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return request.headers.get("api-key", "").strip() or None


def render(result: ChatResult) -> Response:
    if result.stream is not None:
        return StreamingResponse(
            result.stream,
            media_type="text/event-stream",
            headers={**result.headers, "cache-control": "no-cache"},
        )
    return JSONResponse(result.body, headers=result.headers)


@router.post("/serverless/{name}/chat/completions", include_in_schema=True)
@router.post("/serverless/{name}/v1/chat/completions", include_in_schema=True)
async def chat_completions(name: str, request: Request, plat: PlatformDep) -> Response:
    return await _generate(name, request, plat, "chat")


@router.post("/serverless/{name}/completions", include_in_schema=True)
@router.post("/serverless/{name}/v1/completions", include_in_schema=True)
async def completions(name: str, request: Request, plat: PlatformDep) -> Response:
    """The legacy completions API: a prompt, no chat template."""
    return await _generate(name, request, plat, "completions")


async def _generate(name: str, request: Request, plat: PlatformDep, api: str) -> Response:
    target = plat.serverless.serving_target(name)
    slot = await plat.gateway.authorize(target, presented_key(request), request.state.request_id)
    result = await plat.gateway.chat(
        target,
        slot,
        await request.body(),
        request.headers.get("extra-parameters"),
        request.state.request_id,
        api=api,
    )
    return render(result)


@router.get("/serverless/{name}/info", response_model=ModelInfoResponse)
async def info(name: str, request: Request, plat: PlatformDep) -> JSONResponse:
    target = plat.serverless.serving_target(name)
    plat.gateway.check_key(target, presented_key(request))
    card = plat.catalog.get_card(target.model)
    body = ModelInfoResponse(
        model_name=card.id,
        model_type=card.model_type,
        model_provider_name=card.publisher,
        capabilities=capabilities(card.engine, card.model_type),
    )
    return JSONResponse(body.model_dump(), headers=await plat.gateway.remaining_headers(target))


@router.get("/serverless/{name}/v1/models")
async def models(name: str, request: Request, plat: PlatformDep) -> JSONResponse:
    target = plat.serverless.serving_target(name)
    plat.gateway.check_key(target, presented_key(request))
    card = plat.catalog.get_card(target.model)
    body: dict[str, Any] = {
        "object": "list",
        "data": [
            {
                "id": card.id,
                "object": "model",
                "created": int(time.time()),
                "owned_by": card.publisher,
            }
        ],
    }
    return JSONResponse(body, headers=await plat.gateway.remaining_headers(target))
