"""What the fine-tuning service answers: jobs and their events, as the API, the SDK, the CLI
and the studio show them, and a completed job's output for the model registry."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.finetune.config import Hyperparameters


class JobView(BaseModel):
    """A fine-tuning job: LoRA on a catalog model, from a training dataset."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    project: str
    model: str = Field(description="The catalog model the job adapts.")
    status: str = Field(description="queued -> running -> completed | failed | canceled")
    error: str | None = Field(description="Why the job failed.")
    training_data: str = Field(description="The dataset as NAME:VERSION.")
    training_data_id: str
    validation_data: str | None
    validation_data_id: str | None
    hyperparameters: Hyperparameters = Field(description="All of them, defaults filled in.")
    suffix: str | None
    step: int
    total_steps: int | None
    metrics: dict[str, int | float] = Field(
        description="Latest train_loss, validation_loss, learning_rate, tokens_per_second, "
        "trained_tokens."
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


class _Event(BaseModel):
    # Fields the job process reports beyond the declared ones (such as `grad_norm`, when the
    # trainer logs it) are kept as they are.
    model_config = ConfigDict(extra="allow")

    id: int = Field(description="Increasing; ask for the events after one with `after`.")
    at: datetime


class LogEvent(_Event):
    """A line of the job's log: created, started, resumed, completed, failed, …"""

    kind: Literal["log"]
    level: str = Field(description="info, warning or error.")
    message: str


class MetricsEvent(_Event):
    """The training metrics of one optimizer step (every `logging_steps` steps)."""

    kind: Literal["metrics"]
    step: int
    train_loss: float
    learning_rate: float
    tokens_per_second: float
    trained_tokens: int = Field(description="Tokens trained on so far.")
    epoch: float
    total_steps: int


class ValidationEvent(_Event):
    """The loss on the validation dataset at a step (every `eval_steps` steps, and at 0)."""

    kind: Literal["validation"]
    step: int
    validation_loss: float


JobEvent = Annotated[LogEvent | MetricsEvent | ValidationEvent, Field(discriminator="kind")]


class JobEnd(BaseModel):
    """The last event of a followed job (`Accept: text/event-stream`): it has finished."""

    kind: Literal["end"] = "end"
    status: str = Field(description="completed, failed or canceled.")


# What following a job yields: its events, then the end.
FollowedEvent = Annotated[
    LogEvent | MetricsEvent | ValidationEvent | JobEnd, Field(discriminator="kind")
]


class EventList(BaseModel):
    """A page of a job's events, oldest first."""

    data: list[JobEvent]
    status: str = Field(description="The job's status when the events were read.")
    has_more: bool = Field(description="True when `limit` cut the list; ask again with after.")


class JobOutput(BaseModel):
    """What a completed job leaves for the model registry (`models register --from-job`).
    Server-side only: `path` is one of the server's folders."""

    path: Path = Field(description="The MLflow model folder.")
    base_model: str = Field(description="The catalog model the adapter was trained on.")
    lineage: dict[str, Any] = Field(
        description="job_id, base_model, training_data, validation_data, hyperparameters and "
        "metrics, as the registered version records them."
    )
