"""Per-project quotas: what one tenant may hold (instances, their CPU threads, concurrent
fine-tuning jobs, bytes stored) and how fast it may call (flow runs and flow calls per
minute), so that no project starves the others on a shared server.

A project's own limits live in `projects.quotas` (JSON); a name that is absent there takes
the server's default (`LMFOUNDRY_PROJECT_*`). Admins change them (`lmfoundry projects quota
--set NAME=VALUE`); members see them with their current use.

Counts are read from the database, the source of truth every server process shares: a
serverless deployment holds one instance (its instance starts on demand, and an instance
shared by several projects' deployments of one model counts for each project that created
one), an endpoint deployment holds `instance_count`. Flow calls (score, test) are counted in
the quota store (in-process, or Redis when configured) like deployments' requests; flow runs
by their rows' creation times. Storage is what the project's datasets, flows, flow runs,
registered models and fine-tuning job outputs take under the artifacts folder.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lmfoundry.access.audit import record
from lmfoundry.access.models import Principal, ProjectAccess, Role
from lmfoundry.config import Settings
from lmfoundry.errors import Conflict, Forbidden, InvalidRequest, NotFound, RateLimited
from lmfoundry.quotas.models import ProjectQuotasView, QuotaLine
from lmfoundry.quotas.service import QuotaStore
from lmfoundry.quotas.window import Limits
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import (
    Dataset,
    EndpointDeployment,
    FineTuningJob,
    Flow,
    FlowRun,
    OnlineEndpoint,
    Project,
    ServerlessDeployment,
    utcnow,
)

INSTANCES = "instances"
INSTANCE_THREADS = "instance_threads"
FINETUNE_JOBS = "finetune_jobs"
FLOW_RUNS_PER_MINUTE = "flow_runs_per_minute"
FLOW_CALLS_PER_MINUTE = "flow_calls_per_minute"
STORAGE_BYTES = "storage_bytes"

MAX_LIMIT = 2**62  # any larger number is a typo, not a quota
MINUTE = 60.0


@dataclass(frozen=True)
class QuotaName:
    name: str
    kind: Literal["count", "rate"]  # over a count: 409; over a rate: 429 with Retry-After
    unit: str
    description: str


QUOTAS: dict[str, QuotaName] = {
    q.name: q
    for q in (
        QuotaName(INSTANCES, "count", "instances", "Instances the project's deployments hold."),
        QuotaName(INSTANCE_THREADS, "count", "threads", "CPU threads of the project's instances."),
        QuotaName(FINETUNE_JOBS, "count", "jobs", "Fine-tuning jobs queued or running at once."),
        QuotaName(FLOW_RUNS_PER_MINUTE, "rate", "runs/min", "Flow batch runs started a minute."),
        QuotaName(
            FLOW_CALLS_PER_MINUTE, "rate", "calls/min", "Flow score and test calls a minute."
        ),
        QuotaName(
            STORAGE_BYTES,
            "count",
            "bytes",
            "Datasets, flows, runs, models and job outputs under the artifacts folder.",
        ),
    )
}


def defaults(settings: Settings) -> dict[str, int]:
    return {
        INSTANCES: settings.project_instances,
        INSTANCE_THREADS: settings.project_instance_threads,
        FINETUNE_JOBS: settings.project_finetune_jobs,
        FLOW_RUNS_PER_MINUTE: settings.project_flow_runs_per_minute,
        FLOW_CALLS_PER_MINUTE: settings.project_flow_calls_per_minute,
        STORAGE_BYTES: settings.project_storage_bytes,
    }


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (or of the file itself); links are not followed."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return info.st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed while we looked
                continue
    return total


def _raise_hint(project: str, name: str, wanted: int) -> str:
    return (
        f"an admin can raise it with `lmfoundry projects quota -p {project} --set {name}={wanted}`"
    )


class ProjectQuotas:
    """The quota service of projects: limits, current use, and the checks before a create."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        store: QuotaStore,
        threads_per_instance: int,
    ) -> None:
        self.db = db
        self.defaults = defaults(settings)
        self.enabled = settings.quotas_enabled
        self.store = store
        self.artifacts = settings.artifacts_dir
        self.jobs_dir = settings.jobs_dir
        self.threads_per_instance = max(1, threads_per_instance)

    # -- limits ------------------------------------------------------------------------------

    def limits(self, s: Session, project_id: int) -> dict[str, int]:
        row = s.get(Project, project_id)
        own = dict(row.quotas or {}) if row is not None else {}
        return {
            name: int(own[name]) if name in own else default
            for name, default in self.defaults.items()
        }

    def view(self, access: ProjectAccess) -> ProjectQuotasView:
        """Limits and current use, for any member of the project."""
        with self.db.session() as s:
            row = s.get(Project, access.project_id)
            own = dict(row.quotas or {}) if row is not None else {}
            limits = self.limits(s, access.project_id)
            instances = self._instances(s, access.project_id)
            used = {
                INSTANCES: instances,
                INSTANCE_THREADS: instances * self.threads_per_instance,
                FINETUNE_JOBS: self._active_jobs(s, access.project_id),
                FLOW_RUNS_PER_MINUTE: len(self._recent_runs(s, access.project_id)),
                STORAGE_BYTES: self._storage(s, access.project_id, access.project),
            }
        used[FLOW_CALLS_PER_MINUTE] = 0  # filled in by view_async, which may read the store
        return self._render(access.project, limits, used, own)

    async def view_async(self, access: ProjectAccess) -> ProjectQuotasView:
        view = await asyncio.to_thread(self.view, access)
        limit = next(q.limit for q in view.quotas if q.name == FLOW_CALLS_PER_MINUTE)
        _, remaining = await self.store.remaining(
            self._calls_key(access.project_id), Limits(1, max(1, limit))
        )
        for line in view.quotas:
            if line.name == FLOW_CALLS_PER_MINUTE:
                line.used = max(0, limit - remaining) if limit > 0 else 0
        return view

    def _render(
        self, project: str, limits: dict[str, int], used: dict[str, int], own: dict[str, Any]
    ) -> ProjectQuotasView:
        return ProjectQuotasView(
            project=project,
            quotas=[
                QuotaLine(
                    name=name,
                    limit=limits[name],
                    used=used[name],
                    default=self.defaults[name],
                    custom=name in own,
                    unit=q.unit,
                    description=q.description,
                )
                for name, q in QUOTAS.items()
            ],
        )

    def set(
        self, actor: Principal, project: str, changes: dict[str, int | None]
    ) -> ProjectQuotasView:
        """Set (a number) or reset to the server's default (None) a project's limits; admins
        only, audit-logged."""
        if not actor.is_admin:
            raise Forbidden(
                "Only admins change a project's quotas; ask an admin to run "
                f"`lmfoundry projects quota -p {project} --set NAME=VALUE`."
            )
        for name, value in changes.items():
            if name not in QUOTAS:
                raise InvalidRequest(
                    f"{name!r} is not a project quota; use {', '.join(QUOTAS)}.", param=name
                )
            if value is not None and not 0 <= value <= MAX_LIMIT:
                raise InvalidRequest(
                    f"{name} must be a whole number from 0 to {MAX_LIMIT} (got {value}).",
                    param=name,
                )
        with self.db.session() as s:
            row = s.scalar(select(Project).where(Project.name == project))
            if row is None:
                raise NotFound(f"Project {project!r} not found; `lmfoundry projects list`.")
            before = dict(row.quotas or {})
            after = dict(before)
            for name, value in changes.items():
                if value is None:
                    after.pop(name, None)
                else:
                    after[name] = int(value)
            row.quotas = after  # a new dict: SQLAlchemy sees the JSON change
            record(
                s,
                actor.name,
                row.id,
                "project.quota.set",
                project,
                {"before": before, "after": after},
            )
            project_id = row.id
        return self.view(ProjectAccess(project_id, project, actor, Role.owner))

    # -- use ---------------------------------------------------------------------------------

    @staticmethod
    def _instances(s: Session, project_id: int, except_deployment: int | None = None) -> int:
        serverless = s.scalar(
            select(func.count(ServerlessDeployment.id)).where(
                ServerlessDeployment.project_id == project_id
            )
        )
        query = (
            select(func.coalesce(func.sum(EndpointDeployment.instance_count), 0))
            .join(OnlineEndpoint, OnlineEndpoint.id == EndpointDeployment.endpoint_id)
            .where(OnlineEndpoint.project_id == project_id)
        )
        if except_deployment is not None:
            query = query.where(EndpointDeployment.id != except_deployment)
        return int(serverless or 0) + int(s.scalar(query) or 0)

    @staticmethod
    def _active_jobs(s: Session, project_id: int) -> int:
        return int(
            s.scalar(
                select(func.count(FineTuningJob.id)).where(
                    FineTuningJob.project_id == project_id,
                    FineTuningJob.status.in_(("queued", "running")),
                )
            )
            or 0
        )

    @staticmethod
    def _recent_runs(s: Session, project_id: int) -> list[Any]:
        since = utcnow() - timedelta(seconds=MINUTE)
        return list(
            s.scalars(
                select(FlowRun.created_at)
                .where(FlowRun.project_id == project_id, FlowRun.created_at > since)
                .order_by(FlowRun.created_at)
            )
        )

    def _storage(self, s: Session, project_id: int, project: str) -> int:
        datasets = s.scalar(
            select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(
                Dataset.project_id == project_id
            )
        )
        folders = [self.artifacts / "registry" / project]
        flows = s.scalars(select(Flow.name).where(Flow.project_id == project_id))
        folders += [self.artifacts / "flows" / name for name in flows]
        runs = s.scalars(select(FlowRun.id).where(FlowRun.project_id == project_id))
        folders += [self.artifacts / "runs" / run for run in runs]
        jobs = s.scalars(select(FineTuningJob.id).where(FineTuningJob.project_id == project_id))
        folders += [self.artifacts / "fine-tuning-jobs" / job for job in jobs]
        return int(datasets or 0) + sum(folder_bytes(f) for f in folders)

    def storage_used(self, project_id: int, project: str) -> int:
        with self.db.session() as s:
            return self._storage(s, project_id, project)

    # -- checks ------------------------------------------------------------------------------

    def check_instances(
        self,
        s: Session,
        access: ProjectAccess,
        adding: int,
        except_deployment: int | None = None,
    ) -> None:
        """409 when `adding` more instances would take the project over `instances` or
        `instance_threads`."""
        if not self.enabled or adding <= 0:
            return
        limits = self.limits(s, access.project_id)
        held = self._instances(s, access.project_id, except_deployment)
        if held + adding > limits[INSTANCES]:
            raise Conflict(
                f"Project {access.project!r} is over its quota: {INSTANCES} is "
                f"{limits[INSTANCES]} and its deployments hold {held}; this needs {adding} "
                "more. Delete a deployment or lower an instance_count, or "
                + _raise_hint(access.project, INSTANCES, held + adding)
                + ".",
                param=INSTANCES,
            )
        threads = (held + adding) * self.threads_per_instance
        if threads > limits[INSTANCE_THREADS]:
            raise Conflict(
                f"Project {access.project!r} is over its quota: {INSTANCE_THREADS} is "
                f"{limits[INSTANCE_THREADS]} and its {held} instances use "
                f"{held * self.threads_per_instance} ({self.threads_per_instance} each); "
                f"this needs {adding * self.threads_per_instance} more. Delete a deployment "
                "or lower an instance_count, or "
                + _raise_hint(access.project, INSTANCE_THREADS, threads)
                + ".",
                param=INSTANCE_THREADS,
            )

    def check_job(self, s: Session, access: ProjectAccess) -> None:
        """409 when the project already has `finetune_jobs` jobs queued or running, or holds
        its whole `storage_bytes` (a job writes its model there)."""
        if not self.enabled:
            return
        limits = self.limits(s, access.project_id)
        active = self._active_jobs(s, access.project_id)
        if active + 1 > limits[FINETUNE_JOBS]:
            raise Conflict(
                f"Project {access.project!r} is over its quota: {FINETUNE_JOBS} is "
                f"{limits[FINETUNE_JOBS]} and {active} of its jobs are queued or running. "
                "Wait for one to finish or cancel one, or "
                + _raise_hint(access.project, FINETUNE_JOBS, active + 1)
                + ".",
                param=FINETUNE_JOBS,
            )
        used = self._storage(s, access.project_id, access.project)
        if used >= limits[STORAGE_BYTES]:
            raise self._storage_error(access.project, limits[STORAGE_BYTES], used, 1)

    def check_run(self, s: Session, access: ProjectAccess, adding_bytes: int) -> None:
        """429 with Retry-After over `flow_runs_per_minute`; 409 when the run's copy of the
        flow and data would take the project over `storage_bytes`."""
        if not self.enabled:
            return
        limits = self.limits(s, access.project_id)
        recent = self._recent_runs(s, access.project_id)
        limit = limits[FLOW_RUNS_PER_MINUTE]
        if len(recent) + 1 > limit:
            if recent and limit > 0:
                oldest = recent[len(recent) - limit]  # leaves the window first
                wait = (oldest + timedelta(seconds=MINUTE) - utcnow()).total_seconds()
            else:
                wait = MINUTE
            seconds = max(1, math.ceil(wait))
            raise RateLimited(
                f"Project {access.project!r} is over its quota: {FLOW_RUNS_PER_MINUTE} is "
                f"{limit} and {len(recent)} runs started in the last minute; retry after "
                f"{seconds} s, or "
                + _raise_hint(access.project, FLOW_RUNS_PER_MINUTE, max(10, limit * 2))
                + ".",
                param=FLOW_RUNS_PER_MINUTE,
                headers={"Retry-After": str(seconds)},
            )
        self._check_storage(s, access, adding_bytes, limits)

    async def admit_flow_call(self, project_id: int, project: str) -> None:
        """Count one flow score or test call; 429 with Retry-After over
        `flow_calls_per_minute`."""
        if not self.enabled:
            return
        limit = await asyncio.to_thread(self._limit, project_id, FLOW_CALLS_PER_MINUTE)
        if limit <= 0:
            raise RateLimited(
                f"Project {project!r} has a {FLOW_CALLS_PER_MINUTE} quota of 0: no flow calls "
                "are allowed; " + _raise_hint(project, FLOW_CALLS_PER_MINUTE, 60) + ".",
                param=FLOW_CALLS_PER_MINUTE,
                headers={"Retry-After": str(int(MINUTE))},
            )
        decision = await self.store.reserve(
            self._calls_key(project_id), os.urandom(8).hex(), 0, Limits(1, limit)
        )
        if not decision.allowed:
            seconds = decision.retry_after_seconds
            raise RateLimited(
                f"Project {project!r} is over its quota: {FLOW_CALLS_PER_MINUTE} is {limit} "
                f"and {limit - decision.remaining_requests} calls came in the last minute; "
                f"retry after {seconds} s, or "
                + _raise_hint(project, FLOW_CALLS_PER_MINUTE, limit * 2)
                + ".",
                param=FLOW_CALLS_PER_MINUTE,
                headers={"Retry-After": str(seconds)},
            )

    def storage_room(self, access: ProjectAccess) -> int | None:
        """Bytes the project may still store (None: not enforced)."""
        if not self.enabled:
            return None
        with self.db.session() as s:
            limit = self.limits(s, access.project_id)[STORAGE_BYTES]
            return max(0, limit - self._storage(s, access.project_id, access.project))

    def check_storage(self, access: ProjectAccess, adding: int) -> None:
        """409 when storing `adding` more bytes would take the project over `storage_bytes`."""
        if not self.enabled:
            return
        with self.db.session() as s:
            self._check_storage(s, access, adding, self.limits(s, access.project_id))

    def storage_error(self, access: ProjectAccess, adding: int, so_far: bool = False) -> Conflict:
        """The 409 for an upload found too large (`so_far`: while it streamed in)."""
        with self.db.session() as s:
            limit = self.limits(s, access.project_id)[STORAGE_BYTES]
            used = self._storage(s, access.project_id, access.project)
        return self._storage_error(access.project, limit, used, adding, so_far)

    def _check_storage(
        self, s: Session, access: ProjectAccess, adding: int, limits: dict[str, int]
    ) -> None:
        used = self._storage(s, access.project_id, access.project)
        if used + adding > limits[STORAGE_BYTES]:
            raise self._storage_error(access.project, limits[STORAGE_BYTES], used, adding)

    @staticmethod
    def _storage_error(
        project: str, limit: int, used: int, adding: int, so_far: bool = False
    ) -> Conflict:
        more = f"{adding:,} or more" if so_far else f"{adding:,}"
        return Conflict(
            f"Project {project!r} is over its quota: {STORAGE_BYTES} is {limit:,} and it "
            f"stores {used:,} bytes; this needs {more} more. Nothing was stored. Delete "
            "datasets, flows, runs or models, or "
            + _raise_hint(project, STORAGE_BYTES, used + adding)
            + ".",
            param=STORAGE_BYTES,
        )

    def _limit(self, project_id: int, name: str) -> int:
        with self.db.session() as s:
            return self.limits(s, project_id)[name]

    @staticmethod
    def _calls_key(project_id: int) -> str:
        return f"project:{project_id}:{FLOW_CALLS_PER_MINUTE}"
