"""`/api/v1/projects/{project}/fine-tuning-jobs`: create, list, show, events (JSON or SSE),
cancel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.models import ProjectAccess
from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.finetune.config import HELP
from lmfoundry.finetune.service import TERMINAL
from lmfoundry.platform import Platform

router = APIRouter(tags=["fine-tuning jobs"])

PREFIX = "/projects/{project}/fine-tuning-jobs"
FOLLOW_POLL_SECONDS = 0.5


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="Catalog model to adapt, e.g. SmolLM2-135M-Instruct.")
    training_data: str = Field(description="Dataset NAME, NAME:VERSION or id.")
    validation_data: str | None = Field(
        default=None, description="Dataset NAME, NAME:VERSION or id; gives validation_loss."
    )
    hyperparameters: dict[str, Any] | None = Field(
        default=None,
        description="Any of: " + " ".join(f"`{name}`: {text}" for name, text in HELP.items()),
    )
    suffix: str | None = Field(default=None, description="A label for the fine-tuned model.")


class JobView(BaseModel):
    id: str
    object: str
    project: str
    model: str
    status: str = Field(description="queued -> running -> completed | failed | canceled")
    error: str | None = Field(description="Why the job failed.")
    training_data: str
    training_data_id: str
    validation_data: str | None
    validation_data_id: str | None
    hyperparameters: dict[str, Any] = Field(description="All of them, defaults filled in.")
    suffix: str | None
    step: int
    total_steps: int | None
    metrics: dict[str, Any] = Field(
        description="Latest train_loss, validation_loss, learning_rate, tokens_per_second."
    )
    restarts: int = Field(description="Times the job was resumed after its process died.")
    pid: int | None = Field(description="The job process, while it runs.")
    cancel_requested: bool
    # No output folder here: answers never name the server's folders. A completed job's
    # model is registered by the job's id (`models register NAME --from-job ID`).
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventList(BaseModel):
    data: list[dict[str, Any]] = Field(
        description="Events in order: kind metrics (step, train_loss, learning_rate, "
        "tokens_per_second, epoch, total_steps), validation (step, validation_loss) or log "
        "(level, message)."
    )
    status: str = Field(description="The job's status when the events were read.")
    has_more: bool = Field(description="True when `limit` cut the list; ask again with after.")


@router.post(PREFIX, response_model=JobView, status_code=201)
def create(body: JobCreate, access: ProjectDep, plat: PlatformDep) -> dict[str, Any]:
    job = plat.finetune.create_job(access, **body.model_dump())
    plat.jobs.queued()
    return job


@router.get(PREFIX, response_model=list[JobView])
def list_(
    access: ProjectDep,
    plat: PlatformDep,
    status: Annotated[str | None, Query(description="Only jobs in this status.")] = None,
) -> list[dict[str, Any]]:
    return plat.finetune.list_jobs(access, status)


@router.get(PREFIX + "/{job_id}", response_model=JobView)
def get(job_id: str, access: ProjectDep, plat: PlatformDep) -> dict[str, Any]:
    return plat.finetune.get_job(access, job_id)


@router.get(
    PREFIX + "/{job_id}/events",
    response_model=EventList,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def events(
    job_id: str,
    request: Request,
    access: ProjectDep,
    plat: PlatformDep,
    after: Annotated[int | None, Query(description="Only events after this event id.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    last_event_id: Annotated[int | None, Header()] = None,
) -> Any:
    """With `Accept: text/event-stream`, follows the job live (`data: {event}` lines) until it
    ends, then sends `data: {"kind": "end", "status": …}`."""
    start = after if after is not None else last_event_id
    if "text/event-stream" in request.headers.get("accept", ""):
        plat.finetune.get_job(access, job_id)  # 404 before the stream starts
        return StreamingResponse(
            _follow(plat, access, job_id, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    data, status = plat.finetune.events(access, job_id, start, limit)
    return {"data": data, "status": status, "has_more": len(data) == limit}


async def _follow(
    plat: Platform, access: ProjectAccess, job_id: str, after: int | None
) -> AsyncIterator[str]:
    cursor = after
    ended = False
    while True:
        data, status = await asyncio.to_thread(plat.finetune.events, access, job_id, cursor)
        for event in data:
            cursor = event["id"]
            yield f"id: {event['id']}\ndata: {json.dumps(jsonable_encoder(event))}\n\n"
        if ended:  # one more read after the end, for events written as the status changed
            yield f"data: {json.dumps({'kind': 'end', 'status': status})}\n\n"
            return
        ended = status in TERMINAL
        await asyncio.sleep(FOLLOW_POLL_SECONDS)


@router.post(PREFIX + "/{job_id}/cancel", response_model=JobView)
async def cancel(job_id: str, access: ProjectDep, plat: PlatformDep) -> dict[str, Any]:
    """Stops the job's process (SIGTERM, then SIGKILL after 5 s) and answers when it is gone."""
    await asyncio.to_thread(plat.finetune.cancel_job, access, job_id)
    await plat.jobs.cancel(job_id)
    return await asyncio.to_thread(plat.finetune.get_job, access, job_id)
