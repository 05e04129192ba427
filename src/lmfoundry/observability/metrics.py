"""Prometheus metrics: one registry per app, written once per request, read at scrape time.

Request outcomes come from the same `Usage` value the usage ledger stores (`settled`), so
`lmfoundry_tokens_total` and the usage report agree exactly; a request refused before it
reached an instance (a 429 over quota, a 400) is counted where it is refused (`refused`),
once. Mirrored copies are left out, as the usage report leaves them out. Instances and the
ledger's backlog are read when /metrics is asked for (`refresh`), never on the request path.

Labels name a project, a target and a deployment, never a key, token or other secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select

from lmfoundry.metering.service import Backlog, Usage
from lmfoundry.runtime.backend import InstanceInfo
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import FineTuningJob, FlowRun, Project

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TARGET = ("project", "target_kind", "target")
REQUEST = (*TARGET, "deployment", "adapter")
# seconds; a CPU instance answers a short chat in about 0.1-5 s, a long one in minutes
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class JobProgress:
    """A running fine-tuning job as the scrape reports it."""

    project: str
    job: str
    model: str
    step: int
    total_steps: int | None
    train_loss: float | None
    validation_loss: float | None


@dataclass(frozen=True)
class RunProgress:
    """An unfinished flow run as the scrape reports it."""

    project: str
    flow: str
    run: str
    total: int
    completed: int
    failed: int


@dataclass(frozen=True)
class Work:
    jobs: list[JobProgress]
    runs: list[RunProgress]


def read_work(db: Database) -> Work:
    """Running fine-tuning jobs and unfinished flow runs (two small queries; a thread)."""
    with db.session() as s:
        jobs = s.execute(
            select(FineTuningJob, Project.name)
            .join(Project, Project.id == FineTuningJob.project_id)
            .where(FineTuningJob.status == "running")
        ).all()
        runs = s.execute(
            select(FlowRun, Project.name)
            .join(Project, Project.id == FlowRun.project_id)
            .where(FlowRun.status.in_(("queued", "running")))
        ).all()
        return Work(
            jobs=[
                JobProgress(
                    project,
                    job.id,
                    job.model,
                    job.step,
                    job.total_steps,
                    _number((job.metrics or {}).get("train_loss")),
                    _number((job.metrics or {}).get("validation_loss")),
                )
                for job, project in jobs
            ],
            runs=[
                RunProgress(
                    project,
                    run.flow,
                    run.id,
                    run.total_lines,
                    run.completed_lines,
                    run.failed_lines,
                )
                for run, project in runs
            ],
        )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class Scope:
    """Where a request went: the target's labels (the project by id until named)."""

    project_id: int
    target_kind: str
    target: str
    deployment: str
    adapter: str = ""  # the adapter's model name when one was served on a base model


class Metrics:
    """The families of one app; `text()` renders them for GET /metrics."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.registry = CollectorRegistry(auto_describe=False)
        self._projects: dict[int, str] = {}
        r = self.registry
        self.requests = Counter(
            "lmfoundry_requests",
            "Inference requests by the HTTP status the caller got.",
            [*REQUEST, "status"],
            registry=r,
        )
        self.duration = Histogram(
            "lmfoundry_request_duration_seconds",
            "Time from admission to the last byte (refused requests: to the refusal).",
            REQUEST,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "lmfoundry_time_to_first_token_seconds",
            "Time from admission to the first generated token.",
            REQUEST,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "lmfoundry_tokens",
            "Tokens metered (as in the usage report), by kind: prompt or completion.",
            [*REQUEST, "kind"],
            registry=r,
        )
        self.rejections = Counter(
            "lmfoundry_quota_rejections",
            "Requests refused with 429 by the target's quota, by limit: tokens or requests.",
            [*TARGET, "limit"],
            registry=r,
        )
        self.remaining = Gauge(
            "lmfoundry_quota_remaining",
            "What the target's quota had left at its last admitted request, by limit.",
            [*TARGET, "limit"],
            registry=r,
        )
        self.state = _StateCollector()
        r.register(self.state)

    # -- the request path (once per request) -------------------------------------------------

    async def settled(self, usage: Usage, adapter: str = "") -> None:
        """A request that reached an instance, from the usage record written for it."""
        if usage.mirrored:
            return
        labels = (
            await self._project(usage.project_id),
            usage.target_kind,
            usage.target,
            usage.deployment,
            adapter,
        )
        self.requests.labels(*labels, str(usage.status_code)).inc()
        self.duration.labels(*labels).observe(usage.latency_ms / 1000)
        if usage.ttft_ms is not None:
            self.ttft.labels(*labels).observe(usage.ttft_ms / 1000)
        if usage.prompt_tokens:
            self.tokens.labels(*labels, "prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            self.tokens.labels(*labels, "completion").inc(usage.completion_tokens)

    async def refused(self, scope: Scope, status: int, started: float) -> None:
        """A request refused at admission (`started`: its `time.perf_counter()`)."""
        labels = (
            await self._project(scope.project_id),
            scope.target_kind,
            scope.target,
            scope.deployment,
            scope.adapter,
        )
        self.requests.labels(*labels, str(status)).inc()
        self.duration.labels(*labels).observe(time.perf_counter() - started)

    async def over_quota(self, scope: Scope, limit: str) -> None:
        """A 429 from the target's quota; `limit` is `tokens` or `requests`."""
        project = await self._project(scope.project_id)
        self.rejections.labels(project, scope.target_kind, scope.target, limit).inc()

    async def quota_left(self, scope: Scope, tokens: int, requests: int) -> None:
        project = await self._project(scope.project_id)
        self.remaining.labels(project, scope.target_kind, scope.target, "tokens").set(tokens)
        self.remaining.labels(project, scope.target_kind, scope.target, "requests").set(requests)

    async def project_name(self, project_id: int) -> str:
        """The project's name, as the labels have it (request log lines use it too)."""
        return await self._project(project_id)

    async def _project(self, project_id: int) -> str:
        """The project's name, read once per project per process (off the event loop)."""
        name = self._projects.get(project_id)
        if name is None:
            name = self._projects[project_id] = await asyncio.to_thread(
                self._project_name, project_id
            )
        return name

    def _project_name(self, project_id: int) -> str:
        with self.db.session() as s:
            name = s.scalar(select(Project.name).where(Project.id == project_id))
        return name or str(project_id)

    # -- scrape time -------------------------------------------------------------------------

    def refresh(
        self,
        instances: Sequence[InstanceInfo],
        engine: dict[str, dict[str, float]],
        backlog: Backlog,
        work: Work,
    ) -> None:
        """What the scrape reports of instances (with their engine's own gauges), the usage
        ledger, jobs and flow runs."""
        self.state.instances = list(instances)
        self.state.engine = engine
        self.state.backlog = backlog
        self.state.work = work

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges read from a snapshot taken when /metrics is asked for. Instances are shared by
    every deployment of the same weights, so they are labelled by their group (the model
    they serve), not by a deployment."""

    def __init__(self) -> None:
        self.instances: list[InstanceInfo] = []
        self.engine: dict[str, dict[str, float]] = {}
        self.backlog = Backlog(0, None)
        self.work = Work([], [])

    def collect(self) -> Iterable[GaugeMetricFamily]:
        by_state = GaugeMetricFamily(
            "lmfoundry_instances",
            "Instances by group (the model they serve) and state.",
            labels=["group", "state"],
        )
        counts: dict[tuple[str, str], int] = {}
        for info in self.instances:
            counts[info.group, info.state] = counts.get((info.group, info.state), 0) + 1
        for (group, state), n in sorted(counts.items()):
            by_state.add_metric([group, state], n)
        yield by_state
        busy = GaugeMetricFamily(
            "lmfoundry_instance_busy_requests",
            "Requests this process has in flight on each instance.",
            labels=["instance", "group"],
        )
        for info in self.instances:
            busy.add_metric([info.id, info.group], info.active)
        yield busy
        for name, what in (
            ("requests_processing", "llama-server's busy slots (llamacpp:requests_processing)."),
            ("requests_deferred", "Requests queued for a slot (llamacpp:requests_deferred)."),
        ):
            family = GaugeMetricFamily(
                f"lmfoundry_instance_{name}", what, labels=["instance", "group"]
            )
            for info in self.instances:
                value = self.engine.get(info.id, {}).get(name)
                if value is not None:
                    family.add_metric([info.id, info.group], value)
            yield family
        yield GaugeMetricFamily(
            "lmfoundry_usage_records_pending",
            "Usage records waiting to be written to the database.",
            value=self.backlog.pending,
        )
        yield GaugeMetricFamily(
            "lmfoundry_usage_write_lag_seconds",
            "Age of the oldest usage record not yet written (0: none waiting).",
            value=self.backlog.lag_seconds(),
        )
        yield from self._jobs()
        yield from self._runs()

    def _jobs(self) -> Iterator[GaugeMetricFamily]:
        labels = ["project", "job", "model"]
        step = GaugeMetricFamily(
            "lmfoundry_finetune_job_step", "A running fine-tuning job's step.", labels=labels
        )
        steps = GaugeMetricFamily(
            "lmfoundry_finetune_job_total_steps",
            "A running fine-tuning job's planned steps.",
            labels=labels,
        )
        train = GaugeMetricFamily(
            "lmfoundry_finetune_train_loss", "A running job's last training loss.", labels=labels
        )
        validation = GaugeMetricFamily(
            "lmfoundry_finetune_validation_loss",
            "A running job's last validation loss.",
            labels=labels,
        )
        for job in self.work.jobs:
            values = [job.project, job.job, job.model]
            step.add_metric(values, job.step)
            if job.total_steps is not None:
                steps.add_metric(values, job.total_steps)
            if job.train_loss is not None:
                train.add_metric(values, job.train_loss)
            if job.validation_loss is not None:
                validation.add_metric(values, job.validation_loss)
        yield from (step, steps, train, validation)

    def _runs(self) -> Iterator[GaugeMetricFamily]:
        lines = GaugeMetricFamily(
            "lmfoundry_flow_run_lines",
            "An unfinished flow run's lines: total, completed and failed.",
            labels=["project", "flow", "run", "state"],
        )
        for run in self.work.runs:
            counts = (("total", run.total), ("completed", run.completed), ("failed", run.failed))
            for state, n in counts:
                lines.add_metric([run.project, run.flow, run.run, state], n)
        yield lines

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
