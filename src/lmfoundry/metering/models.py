"""What the usage report answers: one row per group, the same view in the API, the studio,
the CLI and the SDK."""

from __future__ import annotations

from pydantic import BaseModel

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
