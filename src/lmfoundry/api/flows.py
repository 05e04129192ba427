"""`/api/v1/projects/{project}/flows` (upload, test, deploy, keys) and `.../runs`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.models import Keys
from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.errors import InvalidRequest, NotFound
from lmfoundry.flows.service import FlowCall

router = APIRouter(tags=["flows"])


class FlowView(BaseModel):
    name: str
    project: str
    version: int
    kind: str = Field(description="'chat' (has an is_chat_input) or 'standard'.")
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    nodes: list[dict[str, Any]]
    connections: list[str] = Field(description="Connections the flow's nodes name.")
    connection_bindings: dict[str, str] = Field(
        default_factory=dict,
        description="Connections bound to node inputs at run time (node.input -> name), "
        "saved by the studio's picker or a deploy.",
    )
    connection_inputs: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Each node input that takes a connection: key (node.input), takes (the "
        "connection class), types (connection types that fit), declared (named in "
        "flow.dag.yaml) and bound (saved binding).",
    )
    deployed_version: int | None
    scoring_uri: str | None = Field(description="POST flow inputs here with a key.")
    created_by: str
    created_at: datetime
    updated_at: datetime


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


class DeployedFlow(FlowView):
    defaulted_connections: dict[str, str] = Field(
        default_factory=dict, description="Bindings chosen as the only fitting connection."
    )


class FlowResult(BaseModel):
    status: Literal["completed", "failed"]
    outputs: dict[str, Any]
    error: dict[str, Any] | None = Field(description="type, message, node and traceback.")
    metrics: dict[str, Any] = Field(description="log_metric values of aggregation nodes.")
    duration_s: float
    connection_bindings: dict[str, str] = Field(
        default_factory=dict, description="The connections bound at run time (node.input -> name)."
    )
    defaulted_connections: dict[str, str] = Field(
        default_factory=dict,
        description="The bindings chosen as the project's only fitting connection.",
    )


class Regenerate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_type: Literal["primary", "secondary"]


class RunView(BaseModel):
    id: str
    project: str
    flow: str
    flow_version: int
    status: str = Field(description="queued, running, completed, failed or canceled.")
    data: str
    column_mapping: dict[str, Any]
    run: str | None = Field(description="The earlier run an evaluation reads.")
    total_lines: int
    completed_lines: int
    failed_lines: int
    metrics: dict[str, Any]
    connection_bindings: dict[str, str] = Field(
        default_factory=dict, description="The connections bound at run time (node.input -> name)."
    )
    defaulted_connections: dict[str, str] | None = Field(
        default=None, description="On creation: bindings chosen as the only fitting connection."
    )
    error: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunLine(BaseModel):
    line_number: int
    status: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: dict[str, Any] | None
    duration_s: float


class RunDetail(RunView):
    lines: list[RunLine]


PREFIX = "/projects/{project}/flows"
STREAM = "text/event-stream"


def _sse(call: FlowCall) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        async for event in call.events():
            yield f"data: {json.dumps(event, default=str)}\n\n".encode()

    return StreamingResponse(events(), media_type=STREAM, headers={"cache-control": "no-cache"})


async def _answer(call: FlowCall, request: Request) -> Any:
    if STREAM in request.headers.get("accept", ""):
        return _sse(call)
    return await call.result()


@router.post(
    PREFIX,
    response_model=FlowView,
    status_code=201,
    responses={200: {"model": FlowView, "description": "A new version of an existing flow."}},
)
def upload(
    name: Annotated[str, Form(description="The flow's name (unique; part of its score URL).")],
    file: Annotated[UploadFile, File(description="The flow folder as tar.gz or zip.")],
    access: ProjectDep,
    plat: PlatformDep,
    response: Response,
) -> dict[str, Any]:
    """Upload a flow folder; each upload of the same name is a new version."""
    # The spooled upload (on disk past 1 MB), read as a stream by the unpacker.
    view, created = plat.flows.upload(access, name, file.file)
    response.status_code = 201 if created else 200
    return view


@router.get(PREFIX, response_model=list[FlowView])
def list_(access: ProjectDep, plat: PlatformDep) -> list[dict[str, Any]]:
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
) -> Any:
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


@router.get(PREFIX + "/{name}", response_model=FlowView)
def get(name: str, access: ProjectDep, plat: PlatformDep) -> dict[str, Any]:
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
) -> Any:
    """Run one line of the flow's latest version; `Accept: text/event-stream` streams it."""
    call = await plat.flows.test(
        access, body.inputs, name=name, connections=body.connections, init=body.init
    )
    return await _answer(call, request)


@router.put(PREFIX + "/{name}/connections", response_model=FlowView)
def bind_connections(
    name: str, body: Bindings, access: ProjectDep, plat: PlatformDep
) -> dict[str, Any]:
    """Save the connections bound to the flow's node inputs (replacing the saved ones); tests,
    runs and deploys of the flow use them."""
    return plat.flows.save_bindings(access, name, body.connections)


@router.post(PREFIX + "/{name}/deploy", response_model=DeployedFlow)
def deploy(
    name: str, access: ProjectDep, plat: PlatformDep, body: Deploy | None = None
) -> dict[str, Any]:
    """Serve the latest version at /flows/{name}/score behind a key; `connections` are saved
    with the flow, and inputs still open are bound to the project's only fitting connection;
    `init` (a flex flow's) is kept with the deployment."""
    if body is None:
        return plat.flows.deploy(access, name)
    return plat.flows.deploy(access, name, body.connections, init=body.init)


@router.delete(PREFIX + "/{name}/deploy", response_model=FlowView)
def undeploy(name: str, access: ProjectDep, plat: PlatformDep) -> dict[str, Any]:
    """Stop serving the flow; its keys are deleted."""
    return plat.flows.undeploy(access, name)


@router.get(PREFIX + "/{name}/keys")
def keys(name: str, access: ProjectDep, plat: PlatformDep) -> Keys:
    return plat.flows.read_keys(access, name)


@router.post(PREFIX + "/{name}/keys/regenerate")
def regenerate(name: str, body: Regenerate, access: ProjectDep, plat: PlatformDep) -> Keys:
    return plat.flows.regenerate_key(access, name, body.key_type)


# -- runs ------------------------------------------------------------------------------------


@router.post(PREFIX + "/{name}/runs", response_model=RunView, status_code=202)
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
) -> dict[str, Any]:
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


@router.get(PREFIX + "/{name}/runs", response_model=list[RunView])
def flow_runs(name: str, access: ProjectDep, plat: PlatformDep) -> list[dict[str, Any]]:
    return plat.runs.list(access, flow=name)


@router.get(PREFIX + "/{name}/runs/{run_id}", response_model=RunDetail)
def flow_run(
    name: str,
    run_id: str,
    access: ProjectDep,
    plat: PlatformDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=0, le=10000)] = 1000,
) -> dict[str, Any]:
    detail = plat.runs.get(access, run_id, offset, limit)
    if detail["flow"] != name:
        raise NotFound(f"Run {run_id} is a run of flow {detail['flow']!r}, not of {name!r}.")
    return detail


@router.get("/projects/{project}/runs", response_model=list[RunView])
def runs(access: ProjectDep, plat: PlatformDep) -> list[dict[str, Any]]:
    return plat.runs.list(access)


@router.get("/projects/{project}/runs/{run_id}", response_model=RunDetail)
def get_run(
    run_id: str,
    access: ProjectDep,
    plat: PlatformDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=0, le=10000)] = 1000,
) -> dict[str, Any]:
    """A run with its finished lines (page with offset and limit)."""
    return plat.runs.get(access, run_id, offset, limit)


@router.post("/projects/{project}/runs/{run_id}/cancel", response_model=RunView)
def cancel_run(run_id: str, access: ProjectDep, plat: PlatformDep) -> dict[str, Any]:
    return plat.runs.cancel(access, run_id)
