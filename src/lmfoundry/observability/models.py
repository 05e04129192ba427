"""What monitoring answers: a target's traffic over a window (totals and buckets), a
project's targets at a glance, and the instances, as the studio's monitoring and cluster
pages, `lmfoundry status`, the API and the SDK show them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class Bucket(BaseModel):
    """One point of the charts: what happened from `at` for `bucket_seconds`."""

    at: datetime
    requests: int
    ok: int
    errors: int  # 4xx and 5xx other than 429
    rate_limited: int  # 429
    requests_per_second: float
    tokens_per_second: float  # completion tokens generated
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None


class Totals(BaseModel):
    """The whole window, exactly: `by_status` counts each HTTP status the callers got."""

    requests: int
    ok: int
    errors: int
    rate_limited: int
    by_status: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None


class InstanceSample(BaseModel):
    at: datetime
    instances: int  # ready
    busy: int  # slots decoding (llama-server) or requests in flight
    slots: int | None


class InstanceView(BaseModel):
    """One instance for the cluster page and `lmfoundry status` (admins only)."""

    id: str
    model: str
    state: str
    pid: int | None
    rss_bytes: int | None
    busy: int
    slots: int | None
    queued: int | None  # requests waiting for a slot (llama-server)
    uptime_seconds: float | None
    restarts: int


class Series(BaseModel):
    """A target's monitoring page: totals, buckets, and (admins) its instances."""

    target_kind: str
    target: str
    window: str
    bucket_seconds: int
    start: datetime
    end: datetime
    deployments: dict[str, Totals]  # per deployment of an endpoint (one for serverless)
    totals: Totals
    buckets: list[Bucket]
    instances: list[InstanceView] | None  # None: not the caller's to see
    instance_samples: list[InstanceSample] | None


class TargetSummary(BaseModel):
    """One line of `lmfoundry status`: a target over the window."""

    target_kind: str
    target: str
    totals: Totals


class BackendInstance(BaseModel):
    """An instance as the backend that runs it (local processes or Ray) describes it
    (`GET /api/v1/instances`, admins only)."""

    id: str
    group: str
    state: str
    pid: int | None
    active: int  # requests in flight
    restarts: int
    started_at: float | None  # unix seconds
    last_error: str | None
