"""The data plane for deployed flows: `POST /flows/{name}/score` with a key.

Prompt flow's contract: the body is the flow's inputs as JSON (for a chat flow, the chat input
and `chat_history`), the answer its outputs as JSON. With `Accept: text/event-stream` and an
output that streams, the answer is server-sent events: first the other outputs, then one
`{"OUTPUT": "chunk"}` event per chunk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmfoundry.api.deps import PlatformDep
from lmfoundry.api.inference import presented_key
from lmfoundry.flows.service import FlowCall, raise_if_failed

router = APIRouter(tags=["flows (data plane)"])


def _data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _prompt_flow_events(call: FlowCall) -> AsyncIterator[bytes]:
    streamed: str | None = None
    async for event in call.events():
        if event["event"] == "outputs":
            streamed = event["stream"]
            if event["outputs"]:
                yield _data(event["outputs"])
        elif event["event"] == "chunk" and streamed is not None:
            yield _data({streamed: event["text"]})
        elif event["event"] == "result":
            if event["status"] != "completed":
                error = event.get("error") or {}
                yield _data({"error": {"code": "flow_failed", "message": error.get("message")}})
            elif streamed is None:  # nothing streamed: the outputs in one event
                yield _data(event["outputs"])


@router.post("/flows/{name}/score")
async def score(name: str, request: Request, plat: PlatformDep) -> Response:
    """Run a deployed flow once on the body's inputs."""
    call = await plat.flows.score(name, presented_key(request), await request.body())
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(
            _prompt_flow_events(call),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    return JSONResponse(raise_if_failed(await call.result()))
