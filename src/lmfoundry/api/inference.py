"""The data plane's routes: `/serverless/{name}/...` and `/endpoints/{name}/...` with a key,
and `/flows/{name}/score`. Each route builds a `Call` and hands it to `DataPlane` (see
serving/plane.py), which reads top to bottom from there."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmfoundry.api.deps import PlatformDep
from lmfoundry.api.errors import error_response
from lmfoundry.errors import LmfError
from lmfoundry.platform import Platform
from lmfoundry.serving.checks import Reply
from lmfoundry.serving.plane import Api, Call, TargetKind
from lmfoundry.serving.wire import ModelInfoResponse

router = APIRouter(tags=["inference"])
S = "/serverless/{name}"
E = "/endpoints/{name}"


def presented_key(request: Request) -> str | None:
    """`Authorization: Bearer <key>` or `api-key: <key>` (the Azure SDKs send either). An
    empty Bearer does not hide the `api-key` header: azure-ai-inference's Azure OpenAI-style
    samples pass `AzureKeyCredential("")` with `headers={"api-key": key}`, which sends both."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return request.headers.get("api-key", "").strip() or None


async def call(request: Request, kind: TargetKind, name: str, api: Api) -> Call:
    """The request as the data plane takes it. The `azureml-model-deployment` header picks
    an endpoint's deployment; a serverless deployment has one."""
    return Call(
        kind=kind,
        name=name,
        api=api,
        body=await request.body(),
        key=presented_key(request),
        request_id=request.state.request_id,
        extra_parameters=request.headers.get("extra-parameters"),
        deployment=request.headers.get("azureml-model-deployment") if kind == "endpoint" else None,
        events="text/event-stream" in request.headers.get("accept", ""),
    )


def render(reply: Reply) -> Response:
    if reply.stream is not None:
        return StreamingResponse(
            reply.stream,
            media_type="text/event-stream",
            headers={**reply.headers, "cache-control": "no-cache"},
        )
    return JSONResponse(reply.body, headers=reply.headers)


async def answer(plat: Platform, call: Call) -> Response:
    """The data plane's reply, or its error with the headers decided before it failed (a
    refused request's rate limits)."""
    try:
        return render(await plat.data_plane.serve(call))
    except LmfError as exc:
        return error_response(exc, call.headers)


async def serve(
    request: Request, plat: PlatformDep, kind: TargetKind, name: str, api: Api
) -> Response:
    return await answer(plat, await call(request, kind, name, api))


# -- serverless deployments ------------------------------------------------------------------


@router.post(S + "/chat/completions")
@router.post(S + "/v1/chat/completions")
async def serverless_chat(name: str, request: Request, plat: PlatformDep) -> Response:
    return await serve(request, plat, "serverless", name, "chat")


@router.post(S + "/completions")
@router.post(S + "/v1/completions")
async def serverless_completions(name: str, request: Request, plat: PlatformDep) -> Response:
    """The legacy completions API: a prompt, no chat template."""
    return await serve(request, plat, "serverless", name, "completions")


@router.post(S + "/embeddings")
@router.post(S + "/v1/embeddings")
async def serverless_embeddings(name: str, request: Request, plat: PlatformDep) -> Response:
    return await serve(request, plat, "serverless", name, "embeddings")


@router.post(S + "/responses")
@router.post(S + "/v1/responses")
async def serverless_responses(name: str, request: Request, plat: PlatformDep) -> Response:
    """OpenAI's Responses API, stored per target with `previous_response_id`."""
    return await serve(request, plat, "serverless", name, "responses")


@router.get(S + "/info", response_model=ModelInfoResponse)
async def serverless_info(name: str, request: Request, plat: PlatformDep) -> Response:
    return render(await plat.data_plane.info(await call(request, "serverless", name, "chat")))


@router.get(S + "/v1/models")
async def serverless_models(name: str, request: Request, plat: PlatformDep) -> Response:
    return render(await plat.data_plane.models(await call(request, "serverless", name, "chat")))


# -- online endpoints ------------------------------------------------------------------------


@router.post(E + "/chat/completions")
@router.post(E + "/v1/chat/completions")
async def endpoint_chat(name: str, request: Request, plat: PlatformDep) -> Response:
    return await serve(request, plat, "endpoint", name, "chat")


@router.post(E + "/completions")
@router.post(E + "/v1/completions")
async def endpoint_completions(name: str, request: Request, plat: PlatformDep) -> Response:
    """The legacy completions API: a prompt, no chat template."""
    return await serve(request, plat, "endpoint", name, "completions")


@router.post(E + "/embeddings")
@router.post(E + "/v1/embeddings")
async def endpoint_embeddings(name: str, request: Request, plat: PlatformDep) -> Response:
    return await serve(request, plat, "endpoint", name, "embeddings")


@router.post(E + "/responses")
@router.post(E + "/v1/responses")
async def endpoint_responses(name: str, request: Request, plat: PlatformDep) -> Response:
    """OpenAI's Responses API, stored per target with `previous_response_id`."""
    return await serve(request, plat, "endpoint", name, "responses")


@router.post(E + "/score")
async def endpoint_score(name: str, request: Request, plat: PlatformDep) -> Response:
    """Azure ML's `/score` for chat models: `{"input_data": {"input_string": [...],
    "parameters": {...}}}` -> `{"output": "..."}`."""
    return await serve(request, plat, "endpoint", name, "score")


@router.get(E + "/info", response_model=ModelInfoResponse)
async def endpoint_info(name: str, request: Request, plat: PlatformDep) -> Response:
    return render(await plat.data_plane.info(await call(request, "endpoint", name, "chat")))


@router.get(E + "/v1/models")
async def endpoint_models(name: str, request: Request, plat: PlatformDep) -> Response:
    return render(await plat.data_plane.models(await call(request, "endpoint", name, "chat")))


# -- stored responses (read and delete with the key of their own target) ---------------------


@router.get(S + "/v1/responses/{response_id}")
@router.get(S + "/responses/{response_id}")
async def serverless_response(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    owner = plat.data_plane.stored(await call(request, "serverless", name, "responses"))
    return JSONResponse(plat.responses.get(owner, response_id).model_dump())


@router.get(S + "/v1/responses/{response_id}/input_items")
async def serverless_response_input_items(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    owner = plat.data_plane.stored(await call(request, "serverless", name, "responses"))
    return JSONResponse(plat.responses.input_items(owner, response_id).model_dump())


@router.delete(S + "/v1/responses/{response_id}")
@router.delete(S + "/responses/{response_id}")
async def serverless_response_delete(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    owner = plat.data_plane.stored(await call(request, "serverless", name, "responses"))
    return JSONResponse(plat.responses.delete(owner, response_id).model_dump())


@router.get(E + "/v1/responses/{response_id}")
@router.get(E + "/responses/{response_id}")
async def endpoint_response(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    owner = plat.data_plane.stored(await call(request, "endpoint", name, "responses"))
    return JSONResponse(plat.responses.get(owner, response_id).model_dump())


@router.get(E + "/v1/responses/{response_id}/input_items")
async def endpoint_response_input_items(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    owner = plat.data_plane.stored(await call(request, "endpoint", name, "responses"))
    return JSONResponse(plat.responses.input_items(owner, response_id).model_dump())


@router.delete(E + "/v1/responses/{response_id}")
@router.delete(E + "/responses/{response_id}")
async def endpoint_response_delete(
    name: str, response_id: str, request: Request, plat: PlatformDep
) -> JSONResponse:
    owner = plat.data_plane.stored(await call(request, "endpoint", name, "responses"))
    return JSONResponse(plat.responses.delete(owner, response_id).model_dump())


# -- deployed flows --------------------------------------------------------------------------


@router.post("/flows/{name}/score", tags=["flows (data plane)"])
async def flow_score(name: str, request: Request, plat: PlatformDep) -> Response:
    """Run a deployed flow once on the body's inputs (Prompt flow's contract: the body is the
    flow's inputs as JSON, the answer its outputs). With `Accept: text/event-stream` and an
    output that streams: server-sent events, the other outputs first, then one
    `{"OUTPUT": "chunk"}` event per chunk."""
    return await serve(request, plat, "flow", name, "score")
