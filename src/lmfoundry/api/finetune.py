"""`/api/v1/projects/{project}/fine-tuning-jobs`: create, list, show, events (JSON or SSE),
cancel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.models import ProjectAccess
from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.finetune.config import HELP
from lmfoundry.finetune.models import EventList, JobEnd, JobView
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


@router.post(PREFIX, status_code=201)
def create(body: JobCreate, access: ProjectDep, plat: PlatformDep) -> JobView:
    job = plat.finetune.create_job(access, **body.model_dump())
    plat.jobs.queued()
    return job


@router.get(PREFIX)
def list_(
    access: ProjectDep,
    plat: PlatformDep,
    status: Annotated[str | None, Query(description="Only jobs in this status.")] = None,
) -> list[JobView]:
    return plat.finetune.list_jobs(access, status)


@router.get(PREFIX + "/{job_id}")
def get(job_id: str, access: ProjectDep, plat: PlatformDep) -> JobView:
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
) -> EventList | StreamingResponse:
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
    return plat.finetune.events(access, job_id, start, limit)


async def _follow(
    plat: Platform, access: ProjectAccess, job_id: str, after: int | None
) -> AsyncIterator[str]:
    cursor = after
    ended = False
    while True:
        page = await asyncio.to_thread(plat.finetune.events, access, job_id, cursor)
        for event in page.data:
            cursor = event.id
            # jsonable_encoder on the dump: times as isoformat (+00:00), as this stream has
            # always sent them (the JSON answers, from pydantic, end in Z)
            data = json.dumps(jsonable_encoder(event.model_dump()))
            yield f"id: {event.id}\ndata: {data}\n\n"
        if ended:  # one more read after the end, for events written as the status changed
            yield f"data: {json.dumps(JobEnd(status=page.status).model_dump())}\n\n"
            return
        ended = page.status in TERMINAL
        await asyncio.sleep(FOLLOW_POLL_SECONDS)


@router.post(PREFIX + "/{job_id}/cancel")
async def cancel(job_id: str, access: ProjectDep, plat: PlatformDep) -> JobView:
    """Stops the job's process (SIGTERM, then SIGKILL after 5 s) and answers when it is gone."""
    await asyncio.to_thread(plat.finetune.cancel_job, access, job_id)
    await plat.jobs.cancel(job_id)
    return await asyncio.to_thread(plat.finetune.get_job, access, job_id)
