"""The embeddings routes of the data plane: `{target}embeddings` (Azure AI model inference)
and `{target}v1/embeddings` (OpenAI), on serverless deployments and online endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lmfoundry.api.deps import PlatformDep
from lmfoundry.api.inference import presented_key
from lmfoundry.serving.embeddings import EmbeddingsService, embed_on_endpoint

router = APIRouter(tags=["inference"])


@router.post("/serverless/{name}/embeddings")
@router.post("/serverless/{name}/v1/embeddings")
async def serverless_embeddings(name: str, request: Request, plat: PlatformDep) -> JSONResponse:
    target = plat.serverless.serving_target(name)
    slot = await plat.gateway.authorize(target, presented_key(request), request.state.request_id)
    result = await EmbeddingsService(plat.gateway).embed(
        target,
        slot,
        await request.body(),
        request.headers.get("extra-parameters"),
        request.state.request_id,
    )
    return JSONResponse(result.body, headers=result.headers)


@router.post("/endpoints/{name}/embeddings")
@router.post("/endpoints/{name}/v1/embeddings")
async def endpoint_embeddings(name: str, request: Request, plat: PlatformDep) -> JSONResponse:
    route, slot = await plat.router.admit_key(
        name, presented_key(request), request.state.request_id
    )
    result = await embed_on_endpoint(
        EmbeddingsService(plat.gateway),
        plat.router,
        route,
        slot,
        await request.body(),
        request.state.request_id,
        request.headers.get("azureml-model-deployment"),
        request.headers.get("extra-parameters"),
    )
    return JSONResponse(result.body, headers=result.headers)
