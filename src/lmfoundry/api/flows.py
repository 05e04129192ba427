"""`/api/v1/projects/{project}/flows` (upload, test, deploy, keys) and `.../runs`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.models import Keys
from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.errors import InvalidRequest, NotFound
from lmfoundry.flows.call import FlowCall
from lmfoundry.flows.views import DeployedFlowView, FlowResult, FlowView, RunDetail, RunView

router = APIRouter(tags=["flows"])


CONNECTIONS_HELP = (
    "Connections to bind to node inputs, {node.input: connection name} (Prompt flow's "
    "--connections); inputs left open take the project's only fitting connection."
)


INIT_HELP = (
    "A flex flow's init arguments ({name: value}, `--init`): a class entry's __init__ "
    "parameters (a connection's name for a connection; an object for a model configuration)."
)


class FlowTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, Any] = Field(default_factory=dict, description="The flow's inputs.")
    connections: dict[str, str] = Field(default_factory=dict, description=CONNECTIONS_HELP)
    init: dict[str, Any] | None = Field(default=None, description=INIT_HELP)


class Bindings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connections: dict[str, str] = Field(default_factory=dict, description=CONNECTIONS_HELP)


class Deploy(Bindings):
    init: dict[str, Any] | None = Field(default=None, description=INIT_HELP)


class Regenerate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_type: Literal["primary", "secondary"]


PREFIX = "/projects/{project}/flows"
STREAM = "text/event-stream"


def _sse(call: FlowCall) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        async for event in call.events():
            yield f"data: {json.dumps(event, default=str)}\n\n".encode()

    return StreamingResponse(events(), media_type=STREAM, headers={"cache-control": "no-cache"})


async def _answer(call: FlowCall, request: Request) -> FlowResult | StreamingResponse:
    if STREAM in request.headers.get("accept", ""):
        return _sse(call)
    return await call.result()


@router.post(
    PREFIX,
    status_code=201,
    responses={200: {"model": FlowView, "description": "A new version of an existing flow."}},
)
def upload(
    name: Annotated[str, Form(description="The flow's name (unique; part of its score URL).")],
    file: Annotated[UploadFile, File(description="The flow folder as tar.gz or zip.")],
    access: ProjectDep,
    plat: PlatformDep,
    response: Response,
) -> FlowView:
    """Upload a flow folder; each upload of the same name is a new version."""
    # The spooled upload (on disk past 1 MB), read as a stream by the unpacker.
    view, created = plat.flows.upload(access, name, file.file)
    response.status_code = 201 if created else 200
    return view


@router.get(PREFIX)
def list_(access: ProjectDep, plat: PlatformDep) -> list[FlowView]:
    return plat.flows.list(access)


@router.post(
    PREFIX + "/test",
    response_model=FlowResult,
    responses={200: {"content": {STREAM: {}}}},
)
async def test_folder(
    file: Annotated[UploadFile, File(description="The flow folder as tar.gz or zip.")],
    access: ProjectDep,
    plat: PlatformDep,
    request: Request,
    inputs: Annotated[str, Form(description="The inputs as a JSON object.")] = "{}",
    connections: Annotated[str, Form(description=CONNECTIONS_HELP + " A JSON object.")] = "{}",
    init: Annotated[str, Form(description=INIT_HELP + " A JSON object.")] = "null",
) -> FlowResult | StreamingResponse:
    """Run one line of a flow that is not uploaded; `Accept: text/event-stream` streams it."""
    values = _json_object(
        inputs, "inputs", "inputs must be a JSON object of input names to values."
    )
    bound = _json_object(
        connections,
        "connections",
        'connections must be a JSON object such as {"node.connection": "my_connection"}.',
    )
    given = None if init == "null" else _json_object(init, "init", "init must be a JSON object.")
    call = await plat.flows.test(access, values, archive=file.file, connections=bound, init=given)
    return await _answer(call, request)


def _json_object(text: str, param: str, message: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(message, param=param)
    return value


@router.get(PREFIX + "/{name}")
def get(name: str, access: ProjectDep, plat: PlatformDep) -> FlowView:
    return plat.flows.get(access, name)


@router.delete(PREFIX + "/{name}", status_code=204)
def delete(name: str, access: ProjectDep, plat: PlatformDep) -> None:
    plat.flows.delete(access, name)


@router.post(
    PREFIX + "/{name}/test",
    response_model=FlowResult,
    responses={200: {"content": {STREAM: {}}}},
)
async def test(
    name: str, body: FlowTest, access: ProjectDep, plat: PlatformDep, request: Request
) -> FlowResult | StreamingResponse:
    """Run one line of the flow's latest version; `Accept: text/event-stream` streams it."""
    call = await plat.flows.test(
        access, body.inputs, name=name, connections=body.connections, init=body.init
    )
    return await _answer(call, request)


@router.put(PREFIX + "/{name}/connections")
def bind_connections(name: str, body: Bindings, access: ProjectDep, plat: PlatformDep) -> FlowView:
    """Save the connections bound to the flow's node inputs (replacing the saved ones); tests,
    runs and deploys of the flow use them."""
    return plat.flows.save_bindings(access, name, body.connections)


@router.post(PREFIX + "/{name}/deploy")
def deploy(
    name: str, access: ProjectDep, plat: PlatformDep, body: Deploy | None = None
) -> DeployedFlowView:
    """Serve the latest version at /flows/{name}/score behind a key; `connections` are saved
    with the flow, and inputs still open are bound to the project's only fitting connection;
    `init` (a flex flow's) is kept with the deployment."""
    if body is None:
        return plat.flows.deploy(access, name)
    return plat.flows.deploy(access, name, body.connections, init=body.init)


@router.delete(PREFIX + "/{name}/deploy")
def undeploy(name: str, access: ProjectDep, plat: PlatformDep) -> FlowView:
    """Stop serving the flow; its keys are deleted."""
    return plat.flows.undeploy(access, name)


@router.get(PREFIX + "/{name}/keys")
def keys(name: str, access: ProjectDep, plat: PlatformDep) -> Keys:
    return plat.flows.read_keys(access, name)


@router.post(PREFIX + "/{name}/keys/regenerate")
def regenerate(name: str, body: Regenerate, access: ProjectDep, plat: PlatformDep) -> Keys:
    return plat.flows.regenerate_key(access, name, body.key_type)


# -- runs ------------------------------------------------------------------------------------


@router.post(PREFIX + "/{name}/runs", status_code=202)
def create_run(
    name: str,
    access: ProjectDep,
    plat: PlatformDep,
    data: Annotated[UploadFile | None, File(description="JSONL, one line per run line.")] = None,
    column_mapping: Annotated[
        str, Form(description='JSON object: input -> "${data.col}" or "${run.outputs.x}".')
    ] = "{}",
    run: Annotated[str | None, Form(description="An earlier run to evaluate.")] = None,
    connections: Annotated[str, Form(description=CONNECTIONS_HELP + " A JSON object.")] = "{}",
    run_name: Annotated[
        str | None, Form(alias="name", description="The run's name (default: generated).")
    ] = None,
    init: Annotated[str, Form(description=INIT_HELP + " A JSON object.")] = "null",
) -> RunView:
    """Start a batch run of the flow's latest version; it runs in the background."""
    try:
        mapping = json.loads(column_mapping)
    except ValueError:
        mapping = None
    if not isinstance(mapping, dict):
        raise InvalidRequest(
            'column_mapping must be a JSON object such as {"question": "${data.question}"}.',
            param="column_mapping",
        )
    return plat.runs.create(
        access,
        name,
        mapping,
        data=data.file.read() if data is not None else None,
        data_name=(data.filename or "data.jsonl") if data is not None else "data.jsonl",
        run=run or None,
        connections=_json_object(
            connections,
            "connections",
            'connections must be a JSON object such as {"node.connection": "my_connection"}.',
        ),
        name=run_name or None,
        init=None if init == "null" else _json_object(init, "init", "init must be a JSON object."),
    )


@router.get(PREFIX + "/{name}/runs")
def flow_runs(name: str, access: ProjectDep, plat: PlatformDep) -> list[RunView]:
    return plat.runs.list(access, flow=name)


@router.get(PREFIX + "/{name}/runs/{run_id}")
def flow_run(
    name: str,
    run_id: str,
    access: ProjectDep,
    plat: PlatformDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=0, le=10000)] = 1000,
) -> RunDetail:
    detail = plat.runs.get(access, run_id, offset, limit)
    if detail.flow != name:
        raise NotFound(f"Run {run_id} is a run of flow {detail.flow!r}, not of {name!r}.")
    return detail


@router.get("/projects/{project}/runs")
def runs(access: ProjectDep, plat: PlatformDep) -> list[RunView]:
    return plat.runs.list(access)


@router.get("/projects/{project}/runs/{run_id}")
def get_run(
    run_id: str,
    access: ProjectDep,
    plat: PlatformDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=0, le=10000)] = 1000,
) -> RunDetail:
    """A run with its finished lines (page with offset and limit)."""
    return plat.runs.get(access, run_id, offset, limit)


@router.post("/projects/{project}/runs/{run_id}/cancel")
def cancel_run(run_id: str, access: ProjectDep, plat: PlatformDep) -> RunView:
    return plat.runs.cancel(access, run_id)
