"""Fine-tuning jobs as local processes, supervised by the server.

The database is the source of truth; the supervisor reconciles to it twice a second:
- queued jobs start, oldest first, while fewer than `max_concurrent` run;
- a job whose process exits is left alone if the process recorded an outcome (completed,
  failed); marked canceled if a cancel was asked; otherwise resumed from its last checkpoint,
  at most `max_restarts` times, then failed with the reason and the end of its log;
- a job asked to cancel has its process group sent SIGTERM, then SIGKILL after a grace period.

Job processes run in their own session (a Ctrl-C in the server's terminal does not reach them)
and die with the server (`lifeline.die_with_parent`). Stopping the server stops them and
leaves them `running` in the database: the next start resumes them from their checkpoints.

Where a job process runs is the launcher's business: a child process here (`LocalLauncher`),
or a Ray Job on a cluster (`runtime.ray_jobs.RayJobLauncher`, with LMFOUNDRY_RAY_ADDRESS);
the supervision above is the same for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from sqlalchemy import select, update

from lmfoundry.errors import LmfError
from lmfoundry.finetune.events import JobEvents
from lmfoundry.runtime.environment import child_environment
from lmfoundry.runtime.periodic import Periodic
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import FineTuningJob, utcnow

log = logging.getLogger("lmfoundry.jobs")

POLL_SECONDS = 0.5  # how soon a job process's exit or a cancel is acted on
# How soon a queued job starts: the queue is read from the database (any server may queue a
# job), a query a pass that would otherwise cost the serving path CPU twice a second.
QUEUE_POLL_SECONDS = 2.0
STOP_GRACE_SECONDS = 5.0
JOB_MODULE = "lmfoundry.finetune.run"
# What a job needs but its environment must not show (/proc/PID/environ, Ray's listings):
# these reach it through a 0600 file in its folder (`--env-file`).
SECRET_ENV = ("LMFOUNDRY_DATABASE_URL",)


def write_env_file(work: Path, env: dict[str, str]) -> Path:
    """The SECRET_ENV variables of `env` as KEY=VALUE lines in `work/job.env` (mode 0600)."""
    path = work / "job.env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(f"{k}={v}\n" for k, v in env.items() if k in SECRET_ENV)
    return path


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class JobProcess(Protocol):
    """One run of a job process, wherever it runs."""

    pid: int | None

    def poll(self) -> int | None:
        """None while it runs; then its exit code (negative: killed by that signal)."""
        ...

    async def terminate(self, grace: float) -> None: ...


class Launcher(Protocol):
    def spawn(self, job_id: str, work: Path, env: dict[str, str]) -> JobProcess:
        """Start `python -m lmfoundry.finetune.run --job ID` with `env` added to the
        environment, its output going to `work/job.log`. OSError or LmfError if it cannot."""
        ...

    async def stop_stray(self, job_id: str, pid: int | None) -> None:
        """Stop a process of `job_id` left by an earlier server, before the job resumes."""
        ...


class LocalProcess:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.pid: int | None = process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    async def terminate(self, grace: float) -> None:
        process = self.process
        if process.poll() is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)


class LocalLauncher:
    """Job processes as children of the server, in their own session, dying with it."""

    def spawn(self, job_id: str, work: Path, env: dict[str, str]) -> LocalProcess:
        secrets = write_env_file(work, env)
        plain = {k: v for k, v in env.items() if k not in SECRET_ENV}
        argv = [sys.executable, "-m", JOB_MODULE, "--job", job_id, "--parent", str(os.getpid())]
        with open(work / "job.log", "ab") as out:
            process = subprocess.Popen(
                [*argv, "--env-file", str(secrets)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # built from scratch: the server's secrets stay with the server
                env=child_environment(work / "home", plain),
                start_new_session=True,  # terminal signals go to the server, not to jobs
            )
        return LocalProcess(process)

    async def stop_stray(self, job_id: str, pid: int | None) -> None:
        if pid:
            await _kill_stray(pid, job_id)


class JobSupervisor:
    def __init__(
        self,
        db: Database,
        jobs_dir: Path,
        database_url: str,
        max_concurrent: int,
        max_restarts: int,
        threads: int | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        self.launcher: Launcher = launcher or LocalLauncher()
        self.db = db
        self.jobs_dir = jobs_dir
        self.database_url = database_url
        self.max_concurrent = max_concurrent
        self.max_restarts = max_restarts
        # Concurrent jobs share the cores: oversubscribed OpenMP threads spin and stall.
        self.threads = threads or max(1, (os.cpu_count() or 1) // max_concurrent)
        self.processes: dict[str, JobProcess] = {}
        self._lock = asyncio.Lock()
        self._loop = Periodic("supervising fine-tuning jobs", POLL_SECONDS, self._pass, log)
        self._recovered = False  # jobs a stopped server left running: resumed on the first pass
        self._queue_read = 0.0
        self._queued = False  # a job was queued through this server: read the queue next pass

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    def queued(self) -> None:
        """A job was just queued here (from any thread): start it on the next pass rather
        than at the next read of the queue."""
        self._queued = True

    async def _pass(self) -> None:
        if not self._recovered:
            async with self._lock:
                await self._recover()
            self._recovered = True
        due = self._queued or time.monotonic() - self._queue_read >= QUEUE_POLL_SECONDS
        self._queued = False
        if due:
            self._queue_read = time.monotonic()
        await self.reconcile(queue=due)

    async def stop(self) -> None:
        """Stop supervising and stop the job processes; their jobs stay `running` so the next
        start resumes them."""
        await self._loop.stop()
        with self.db.session() as s:
            interrupted = s.scalars(
                select(FineTuningJob.id).where(
                    FineTuningJob.id.in_(list(self.processes)), FineTuningJob.status == "running"
                )
            ).all()
        for job_id in interrupted:
            JobEvents(self.db, job_id).log(
                "The server is stopping; the job resumes from its last checkpoint when it "
                "starts again.",
                "warning",
            )
        await asyncio.gather(*(self._terminate(job_id) for job_id in list(self.processes)))

    async def _recover(self) -> None:
        """On start: resume the jobs that were running when the server last stopped."""
        with self.db.session() as s:
            rows = s.execute(
                select(FineTuningJob.id, FineTuningJob.pid, FineTuningJob.cancel_requested).where(
                    FineTuningJob.status == "running"
                )
            ).all()
        for job_id, pid, cancel_requested in rows:
            if job_id in self.processes:
                continue
            try:
                await self.launcher.stop_stray(job_id, pid)
            except LmfError as exc:
                log.warning("could not check for an earlier run of %s: %s", job_id, exc.message)
            if cancel_requested:
                self._finish(job_id, "canceled", "Canceled.")
                continue
            JobEvents(self.db, job_id).log(
                "The server restarted; resuming from the last checkpoint.", "warning"
            )
            self._spawn(job_id)

    # -- reconciling -------------------------------------------------------------------------

    async def reconcile(self, queue: bool = True) -> None:
        """Reap ended job processes, stop canceled ones and start queued jobs: with `queue`,
        or when a job just freed its place."""
        async with self._lock:
            running = len(self.processes)
            if running:  # no trip to a thread when there is nothing to poll
                self._reap(await asyncio.to_thread(self._poll_all))
            await self._stop_canceled()
            if queue or len(self.processes) < running:
                self._start_queued()

    async def cancel(self, job_id: str) -> None:
        """Stop a job whose cancel was just recorded, now rather than at the next pass."""
        async with self._lock:
            await self._stop_canceled()

    def _poll_all(self) -> dict[str, int | None]:
        """Exit codes (None: running); in a thread, as a Ray launcher asks the cluster."""
        codes: dict[str, int | None] = {}
        for job_id, process in list(self.processes.items()):
            try:
                codes[job_id] = process.poll()
            except Exception as exc:  # noqa: BLE001 - a cluster briefly unreachable: next pass
                log.warning("could not read the state of job %s: %s", job_id, exc)
                codes[job_id] = None
        return codes

    def _reap(self, codes: dict[str, int | None]) -> None:
        for job_id, code in codes.items():
            if code is None or job_id not in self.processes:
                continue
            del self.processes[job_id]
            restart = False
            with self.db.session() as s:
                row = s.get(FineTuningJob, job_id)
                if row is None or row.status != "running":
                    continue  # the job process recorded how it ended
                events = JobEvents(self.db, job_id)
                if row.cancel_requested:
                    row.status, row.finished_at, row.pid = "canceled", utcnow(), None
                    events.log("Canceled.")
                elif row.restarts < self.max_restarts:
                    row.restarts += 1
                    events.log(
                        f"The job process {describe_exit(code)}; resuming from the last "
                        f"checkpoint (restart {row.restarts} of {self.max_restarts}).",
                        "warning",
                    )
                    restart = True
                else:
                    row.status, row.finished_at, row.pid = "failed", utcnow(), None
                    row.error = (
                        f"The job process {describe_exit(code)}, after {row.restarts} "
                        f"restart(s) (LMFOUNDRY_JOB_MAX_RESTARTS={self.max_restarts}). "
                        f"End of its log: {self._log_tail(job_id)}"
                    )
                    events.log(f"Failed: {row.error}", "error")
            if restart:
                self._spawn(job_id)

    async def _stop_canceled(self) -> None:
        if not self.processes:
            return
        with self.db.session() as s:
            asked = s.scalars(
                select(FineTuningJob.id).where(
                    FineTuningJob.id.in_(list(self.processes)),
                    FineTuningJob.cancel_requested.is_(True),
                )
            ).all()
        for job_id in asked:
            await self._terminate(job_id)
            self._finish(job_id, "canceled", "Canceled; the job process was stopped.")

    def _start_queued(self) -> None:
        free = self.max_concurrent - len(self.processes)
        if free <= 0:
            return
        with self.db.session() as s:
            queued = s.scalars(
                select(FineTuningJob.id)
                .where(FineTuningJob.status == "queued")
                .order_by(FineTuningJob.created_at, FineTuningJob.id)
                .limit(free)
            ).all()
        for job_id in queued:
            with self.db.session() as s:
                claimed = s.execute(
                    update(FineTuningJob)
                    .where(FineTuningJob.id == job_id, FineTuningJob.status == "queued")
                    .values(status="running", started_at=utcnow())
                )
            if getattr(claimed, "rowcount", 0) == 1:  # another server may have taken it
                self._spawn(job_id)

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self, job_id: str) -> None:
        work = self.jobs_dir / job_id
        work.mkdir(parents=True, exist_ok=True)
        env = {
            "LMFOUNDRY_DATABASE_URL": self.database_url,
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": str(self.threads),  # torch's intra-op threads
            "PYTHONUNBUFFERED": "1",
            # everything a job reads is on this machine
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        }
        try:
            process = self.launcher.spawn(job_id, work, env)
        except OSError as exc:
            self._finish(job_id, "failed", f"Could not start the job process: {exc}", error=True)
            return
        except LmfError as exc:
            self._finish(job_id, "failed", f"Could not start the job: {exc.message}", error=True)
            return
        self.processes[job_id] = process
        with self.db.session() as s:
            s.execute(
                update(FineTuningJob).where(FineTuningJob.id == job_id).values(pid=process.pid)
            )
        log.info("job %s started (pid %s)", job_id, process.pid)

    async def _terminate(self, job_id: str) -> None:
        process = self.processes.pop(job_id, None)
        if process is not None:
            await process.terminate(STOP_GRACE_SECONDS)

    def _finish(self, job_id: str, status: str, message: str, error: bool = False) -> None:
        JobEvents(self.db, job_id).log(message, "error" if error else "info")
        with self.db.session() as s:
            s.execute(
                update(FineTuningJob)
                .where(FineTuningJob.id == job_id, FineTuningJob.status.in_(("queued", "running")))
                .values(
                    status=status,
                    finished_at=utcnow(),
                    pid=None,
                    **({"error": message} if error else {}),
                )
            )

    def _log_tail(self, job_id: str, lines: int = 5) -> str:
        try:
            text = (self.jobs_dir / job_id / "job.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"

    def describe(self) -> dict[str, int | None]:
        return {job_id: process.pid for job_id, process in self.processes.items()}


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _kill_stray(pid: int, job_id: str) -> None:
    """A job process left by an earlier server (it should have died with it): stop it before
    resuming, so two processes never train into the same checkpoints."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return
    if JOB_MODULE not in cmdline or job_id not in cmdline:
        return  # the pid was reused by an unrelated process
    _signal_group(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
