"""The studio's monitoring: a deployment's traffic over the last hour or day, from the usage
ledger, and its instances over time, from samples this process takes.

Counts come from the ledger's rows, one per request the gateway answered or refused at
admission (a 400, a 429: `refused`), so the page shows what the callers saw and agrees with
`/metrics` and the usage report. Latency and TTFT percentiles are over the requests that
reached an instance (a refusal is answered in microseconds and would only hide them).
Instances are sampled every `SAMPLE_SECONDS` by the process that supervises them; a
gateway started with --no-supervisor sees the published instances but not their slots.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from lmfoundry.errors import InvalidRequest
from lmfoundry.metering.service import MeteringService
from lmfoundry.observability.models import (
    BackendInstance,
    Bucket,
    InstanceSample,
    InstanceView,
    Series,
    TargetSummary,
    Totals,
)
from lmfoundry.runtime.backend import Backend, InstanceInfo
from lmfoundry.runtime.periodic import Periodic
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import UsageRecord

log = logging.getLogger("lmfoundry.monitoring")

# window -> (seconds it covers, seconds per bucket): 60 one-minute points, 96 quarter hours
WINDOWS: dict[str, tuple[int, int]] = {"hour": (3600, 60), "day": (86400, 900)}
SAMPLE_SECONDS = 15.0
SAMPLES_KEPT = int(86400 / SAMPLE_SECONDS)  # a day of samples per group


@dataclass(frozen=True)
class _Row:
    at: datetime
    deployment: str
    status: int
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    refused: bool


def window_of(name: str) -> tuple[int, int]:
    try:
        return WINDOWS[name]
    except KeyError:
        raise InvalidRequest(
            f"window must be one of {', '.join(WINDOWS)}, not {name!r}.", param="window"
        ) from None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0..100) of `values`, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least the first
    return round(float(ordered[int(rank) - 1]), 3)


def totals(rows: Iterable[_Row]) -> Totals:
    rows = list(rows)
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
    answered = [r for r in rows if not r.refused]
    latency = [r.latency_ms for r in answered]
    ttft = [r.ttft_ms for r in answered if r.ttft_ms is not None]
    return Totals(
        requests=len(rows),
        ok=sum(1 for r in rows if r.status < 400),
        errors=sum(1 for r in rows if r.status >= 400 and r.status != 429),
        rate_limited=by_status.get("429", 0),
        by_status=dict(sorted(by_status.items())),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        latency_p50_ms=percentile(latency, 50),
        latency_p99_ms=percentile(latency, 99),
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p99_ms=percentile(ttft, 99),
    )


def _bucket(at: datetime, rows: list[_Row], seconds: int) -> Bucket:
    t = totals(rows)
    return Bucket(
        at=at,
        requests=t.requests,
        ok=t.ok,
        errors=t.errors,
        rate_limited=t.rate_limited,
        requests_per_second=round(t.requests / seconds, 6),
        tokens_per_second=round(t.completion_tokens / seconds, 6),
        latency_p50_ms=t.latency_p50_ms,
        latency_p99_ms=t.latency_p99_ms,
        ttft_p50_ms=t.ttft_p50_ms,
        ttft_p99_ms=t.ttft_p99_ms,
    )


def rss_bytes(pid: int | None) -> int | None:
    """A process's resident memory (Linux /proc), or None when it cannot be read here."""
    if pid is None:
        return None
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")


@dataclass
class _Samples:
    points: deque[InstanceSample] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))


class Monitoring:
    def __init__(self, db: Database, metering: MeteringService, backend: Backend) -> None:
        self.db = db
        self.metering = metering
        self.backend = backend
        self._samples: dict[str, _Samples] = {}
        self._engine: dict[str, dict[str, float]] = {}  # llama-server's gauges, last asked
        self._loop = Periodic("sampling instances", SAMPLE_SECONDS, self.sample, log)

    # -- the ledger ---------------------------------------------------------------------------

    def series(
        self,
        project_id: int,
        target_kind: str,
        target: str,
        window: str,
        groups: set[str] | None,
        now: datetime | None = None,
    ) -> Series:
        """A target's buckets over `window` (blocking: run it in a thread). `groups`: the
        instance groups (models) it runs on, for a caller allowed to see instances."""
        span, step = window_of(window)
        end = now or datetime.now(UTC)
        # buckets aligned to the step, the last one holding `end`
        last = datetime.fromtimestamp(end.timestamp() // step * step, UTC)
        count = span // step
        start = last - timedelta(seconds=step * (count - 1))
        rows = self._rows(project_id, target_kind, target, start)
        slots: list[list[_Row]] = [[] for _ in range(count)]
        for r in rows:
            index = int((r.at - start).total_seconds() // step)
            if 0 <= index < count:
                slots[index].append(r)
        by_deployment: dict[str, list[_Row]] = {}
        for r in rows:
            by_deployment.setdefault(r.deployment, []).append(r)
        views = None
        samples = None
        if groups is not None:
            views = [v for v in self.cluster_now() if v.model in groups]
            samples = self._group_samples(groups, start)
        return Series(
            target_kind=target_kind,
            target=target,
            window=window,
            bucket_seconds=step,
            start=start,
            end=end,
            deployments={d: totals(rs) for d, rs in sorted(by_deployment.items())},
            totals=totals(rows),
            buckets=[
                _bucket(start + timedelta(seconds=step * i), slot, step)
                for i, slot in enumerate(slots)
            ],
            instances=views,
            instance_samples=samples,
        )

    def summary(self, project_id: int, window: str) -> list[TargetSummary]:
        """Every target of a project over `window` that had requests (blocking)."""
        span, _ = window_of(window)
        start = datetime.now(UTC) - timedelta(seconds=span)
        found: dict[tuple[str, str], list[_Row]] = {}
        for kind, target, row in self._project_rows(project_id, start):
            found.setdefault((kind, target), []).append(row)
        return [
            TargetSummary(target_kind=kind, target=target, totals=totals(rows))
            for (kind, target), rows in sorted(found.items())
        ]

    def _rows(self, project_id: int, kind: str, target: str, start: datetime) -> list[_Row]:
        self.metering.flush()  # the last moments' records, so the page is up to date
        query = (
            select(*_COLUMNS)
            .where(
                UsageRecord.project_id == project_id,
                UsageRecord.target_kind == kind,
                UsageRecord.target == target,
                UsageRecord.mirrored.is_(False),
                UsageRecord.at >= start,
            )
            .order_by(UsageRecord.at)
        )
        with self.db.session() as s:
            return [_Row(*r) for r in s.execute(query).all()]

    def _project_rows(self, project_id: int, start: datetime) -> list[tuple[str, str, _Row]]:
        self.metering.flush()
        query = select(UsageRecord.target_kind, UsageRecord.target, *_COLUMNS).where(
            UsageRecord.project_id == project_id,
            UsageRecord.mirrored.is_(False),
            UsageRecord.at >= start,
        )
        with self.db.session() as s:
            return [(r[0], r[1], _Row(*tuple(r)[2:])) for r in s.execute(query).all()]

    # -- instances ----------------------------------------------------------------------------

    def cluster_now(self, engine: dict[str, dict[str, float]] | None = None) -> list[InstanceView]:
        """Every instance this process can see, with its memory, slots and uptime."""
        engine = engine if engine is not None else self._engine
        now = time.time()
        return [_view(info, engine.get(info.id, {}), now) for info in self.backend.describe()]

    def instances(self) -> list[BackendInstance]:
        """Every instance as its backend describes it (`GET /api/v1/instances`)."""
        return [
            BackendInstance.model_validate(info, from_attributes=True)
            for info in self.backend.describe()
        ]

    async def cluster(self) -> list[InstanceView]:
        """`cluster_now` with llama-server's slot gauges asked for first (1 s at most)."""
        self._engine = await self.backend.engine_metrics()
        return await asyncio.to_thread(self.cluster_now, self._engine)

    async def sample(self) -> None:
        """Record every group's ready instances and busy slots now."""
        views = await self.cluster()
        at = datetime.now(UTC)
        by_group: dict[str, list[InstanceView]] = {}
        for v in views:
            by_group.setdefault(v.model, []).append(v)
        for group in set(by_group) | set(self._samples):
            ready = [v for v in by_group.get(group, []) if v.state == "ready"]
            slots = [v.slots for v in ready if v.slots is not None]
            self._samples.setdefault(group, _Samples()).points.append(
                InstanceSample(
                    at=at,
                    instances=len(ready),
                    busy=sum(v.busy for v in ready),
                    slots=sum(slots) if slots else None,
                )
            )

    def _group_samples(self, groups: set[str], start: datetime) -> list[InstanceSample]:
        """The groups' samples since `start`, summed where several groups sampled at once."""
        merged: dict[datetime, InstanceSample] = {}
        for group in groups:
            for p in list(self._samples.get(group, _Samples()).points):
                if p.at < start:
                    continue
                seen = merged.get(p.at)
                if seen is None:
                    merged[p.at] = p.model_copy()
                else:
                    seen.instances += p.instances
                    seen.busy += p.busy
                    if p.slots is not None:
                        seen.slots = (seen.slots or 0) + p.slots
        return [merged[at] for at in sorted(merged)]

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()


_COLUMNS = (
    UsageRecord.at,
    UsageRecord.deployment,
    UsageRecord.status_code,
    UsageRecord.latency_ms,
    UsageRecord.ttft_ms,
    UsageRecord.prompt_tokens,
    UsageRecord.completion_tokens,
    UsageRecord.refused,
)


def _view(info: InstanceInfo, engine: dict[str, float], now: float) -> InstanceView:
    processing = engine.get("requests_processing")
    deferred = engine.get("requests_deferred")
    return InstanceView(
        id=info.id,
        model=info.group,
        state=info.state,
        pid=info.pid,
        rss_bytes=rss_bytes(info.pid),
        busy=int(processing) if processing is not None else info.active,
        slots=info.slots,
        queued=int(deferred) if deferred is not None else None,
        uptime_seconds=round(now - info.started_at, 1) if info.started_at else None,
        restarts=info.restarts,
    )


# How the studio's cluster page and `lmfoundry status` print an instance's memory and uptime.


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
