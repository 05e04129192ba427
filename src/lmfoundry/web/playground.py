"""The playground's chat route: the studio calls a deployment for a signed-in developer.

The browser never holds a key: this route reads the deployment's primary key with the
caller's own project access (so exactly the API's rule applies: developers and owners may,
readers get 403, non-members 404) and hands the request to the same gateway as the data
plane, with its quota, metering and streaming. Usage is recorded against the primary key.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.models import Role
from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.api.inference import render

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
    payload = json.dumps(body.request).encode()
    request_id = request.state.request_id
    if body.kind == "serverless":
        key = plat.serverless.read_keys(access, body.name).primary_key
        target = plat.serverless.serving_target(body.name)
        slot = plat.gateway.check_key(target, key)
        result = await plat.gateway.chat(target, slot, payload, None, request_id)
    else:
        key = plat.endpoints.read_keys(access, body.name).primary_key
        route, slot = plat.router.authorize(body.name, key)
        result = await plat.router.chat(
            route, slot, payload, None, request_id, body.deployment or None
        )
    return render(result)
