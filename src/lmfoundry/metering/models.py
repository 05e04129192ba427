"""What the usage report answers: one row per group, the same view in the API, the studio,
the CLI and the SDK; and the ledger's records one by one."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

# The groups a report can take and the columns that name each row. A *target* is what a
# request was sent to (a serverless deployment or an online endpoint, told apart by `kind`);
# a *deployment* is what answered it (for a serverless target the target itself, for an
# endpoint the endpoint's deployment the traffic split chose).
GROUPS: dict[str, list[str]] = {
    "target": ["kind", "target"],
    "deployment": ["kind", "target", "deployment"],
    "key": ["kind", "target", "key"],
    "day": ["day"],
    "model": ["model"],
}
NUMBERS = ["requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost"]


class UsageRow(BaseModel):
    """One group of a usage report; the grouping's columns are set, the others None."""

    kind: str | None = None
    target: str | None = None
    deployment: str | None = None
    key: str | None = None
    day: str | None = None
    model: str | None = None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float


class UsageRecordView(BaseModel):
    """One request the gateway answered, as the usage ledger holds it (`refused` ones are
    left out: they are on the monitoring page, not billed)."""

    request_id: str
    at: datetime
    target_kind: str
    target: str
    deployment: str
    key_slot: str = Field(description="primary or secondary: the key the caller sent.")
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    status_code: int
    streamed: bool
    mirrored: bool = Field(description="A mirrored copy (not billed, its answer dropped).")
    cost: float = Field(description="USD, at the prices the request was billed at.")
