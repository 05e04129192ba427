"""The playground's chat route: the studio calls a deployment for a signed-in developer.

The browser never holds a key: this route reads the deployment's primary key with the
caller's own project access (so exactly the API's rule applies: developers and owners may,
readers get 403, non-members 404) and hands the request to the data plane like any caller's,
with its quota, metering and streaming. Usage is recorded against the primary key.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.models import Role
from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.api.inference import answer
from lmfoundry.serving.plane import Call

router = APIRouter(include_in_schema=False)


class PlaygroundChat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["serverless", "endpoint"]
    name: str
    deployment: str | None = Field(
        default=None, description="For endpoints: one deployment (bypasses the traffic split)."
    )
    request: dict[str, Any] = Field(description="A chat/completions body.")


@router.post("/projects/{project}/playground/chat")
async def chat(
    body: PlaygroundChat, request: Request, access: ProjectDep, plat: PlatformDep
) -> Response:
    access.require(Role.developer, "chat in the playground (it calls with the deployment's key)")
    if body.kind == "serverless":
        key = plat.serverless.read_keys(access, body.name).primary_key
    else:
        key = plat.endpoints.read_keys(access, body.name).primary_key
    call = Call(
        kind=body.kind,
        name=body.name,
        api="chat",
        body=json.dumps(body.request).encode(),
        key=key,
        request_id=request.state.request_id,
        deployment=(body.deployment or None) if body.kind == "endpoint" else None,
    )
    return await answer(plat, call)
