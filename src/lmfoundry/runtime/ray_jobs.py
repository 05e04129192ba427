"""Fine-tuning jobs as Ray Jobs (`LMFOUNDRY_RAY_ADDRESS`): the job supervisor's `Launcher`
on a Ray cluster.

The entry point is the local one (`python -m lmfoundry.finetune.run --job ID`), submitted
through the Ray dashboard's Job API; the job records its steps, metrics and outcome in the
database exactly as a local job process does, and its output goes to `job.log` in the job's
folder (copied from Ray's job logs while it runs). The database URL reaches it through a
0600 file in the job's folder rather than the job's `runtime_env`, which Ray shows in its job
listings. The job's folder and the artifacts must be on storage the Ray workers share with
the server (one machine, or a shared volume on a cluster).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from lmfoundry.errors import Unavailable
from lmfoundry.finetune.supervisor import JOB_MODULE
from lmfoundry.runtime.ray_serve import RayCluster

log = logging.getLogger("lmfoundry.jobs")

LOG_SECONDS = 2.0  # how often a running job's log is copied back
SECRET_ENV = ("LMFOUNDRY_DATABASE_URL",)
METADATA_KEY = "lmfoundry_job"


class RayJob:
    """One submission of a job to Ray."""

    pid: int | None = None  # the process is the cluster's; Ray knows it by submission id

    def __init__(self, client: Any, submission_id: str, log_path: Path | None) -> None:
        self.client = client
        self.submission_id = submission_id
        self.log_path = log_path
        self._code: int | None = None
        self._logged = 0.0

    def poll(self) -> int | None:
        if self._code is not None:
            return self._code
        info = self.client.get_job_info(self.submission_id)
        status = str(getattr(info.status, "value", info.status))
        if status in ("PENDING", "RUNNING"):
            if time.monotonic() - self._logged > LOG_SECONDS:
                self._copy_log()
            return None
        self._copy_log()
        if status == "SUCCEEDED":
            self._code = 0
        elif status == "STOPPED":
            self._code = -signal.SIGTERM
        else:
            code = info.driver_exit_code
            self._code = code if code else 1
            if info.message and self.log_path is not None:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(f"\n[ray] {info.message}\n")
        return self._code

    def _copy_log(self) -> None:
        self._logged = time.monotonic()
        if self.log_path is None:
            return
        try:
            text = self.client.get_job_logs(self.submission_id)
        except Exception as exc:  # noqa: BLE001 - a log copy must never fail the job
            log.debug("could not read the logs of %s: %s", self.submission_id, exc)
            return
        tmp = self.log_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.log_path)

    async def terminate(self, grace: float) -> None:
        """Stop the Ray Job (Ray sends SIGTERM, then SIGKILL) and wait until it has ended."""
        await asyncio.to_thread(self.client.stop_job, self.submission_id)
        deadline = time.monotonic() + grace + 10.0
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self.poll) is not None:
                return
            await asyncio.sleep(0.25)
        log.warning("Ray job %s did not stop within %.0f s", self.submission_id, grace + 10.0)


class RayJobLauncher:
    def __init__(self, cluster: RayCluster, python: str = "python") -> None:
        self.cluster = cluster
        self.python = python  # the interpreter on the Ray workers that has lmfoundry
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self.cluster.ensure_dashboard()
            try:
                self._client = JobSubmissionClient(self.cluster.dashboard_url)
            except (ConnectionError, RuntimeError) as exc:
                raise Unavailable(
                    f"Could not reach Ray's job API at {self.cluster.dashboard_url}: {exc}"
                ) from exc
        return self._client

    def spawn(self, job_id: str, work: Path, env: dict[str, str]) -> RayJob:
        secrets = work / "job.env"
        fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(f"{k}={v}\n" for k, v in env.items() if k in SECRET_ENV)
        entrypoint = shlex.join(
            [self.python, "-m", JOB_MODULE, "--job", job_id, "--env-file", str(secrets)]
        )
        submission_id = f"{job_id}-{uuid.uuid4().hex[:8]}"
        self.client().submit_job(
            entrypoint=entrypoint,
            submission_id=submission_id,
            runtime_env={"env_vars": {k: v for k, v in env.items() if k not in SECRET_ENV}},
            metadata={METADATA_KEY: job_id},
        )
        log.info("job %s submitted to Ray as %s", job_id, submission_id)
        return RayJob(self.client(), submission_id, work / "job.log")

    async def stop_stray(self, job_id: str, pid: int | None) -> None:
        """Stop the submissions of `job_id` an earlier server left running on the cluster."""
        jobs = await asyncio.to_thread(self.client().list_jobs)
        for info in jobs:
            status = str(getattr(info.status, "value", info.status))
            if (info.metadata or {}).get(METADATA_KEY) == job_id and status in (
                "PENDING",
                "RUNNING",
            ):
                log.warning("stopping %s, left running by an earlier server", info.submission_id)
                await RayJob(self.client(), str(info.submission_id), None).terminate(5.0)
