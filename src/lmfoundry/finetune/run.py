"""A job process: runs one fine-tuning job and records what happens in the database.

    python -m lmfoundry.finetune.run --job ftjob-… --parent PID
    python -m lmfoundry.finetune.run --job ftjob-… --env-file PATH    (as a Ray Job)

Started by the server's job supervisor (`finetune/supervisor.py`), with LMFOUNDRY_DATABASE_URL in
its environment. It reads its `FineTuneConfig` from the job row, trains, and marks the job
completed (with the MLflow model's path) or failed (with the reason). It dies with the
server; the supervisor then resumes it from its last checkpoint. A SIGTERM (cancel) ends it
at once: the supervisor, not this process, records the cancel.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any

from sqlalchemy import update

from lmfoundry.config import get_settings
from lmfoundry.finetune.config import FineTuneConfig
from lmfoundry.finetune.events import METRICS, VALIDATION, JobEvents
from lmfoundry.runtime.lifeline import die_with_parent
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import FineTuningJob, utcnow


class DatabaseReport:
    """The trainer's `Reporter`: events for the API, progress fields on the job row."""

    def __init__(self, db: Database, job_id: str) -> None:
        self.db = db
        self.job_id = job_id
        self.events = JobEvents(db, job_id)
        self.latest: dict[str, Any] = {}

    def _update(self, **values: Any) -> None:
        with self.db.session() as s:
            s.execute(
                update(FineTuningJob)
                .where(FineTuningJob.id == self.job_id, FineTuningJob.status == "running")
                .values(**values)
            )

    def log(self, message: str, level: str = "info") -> None:
        self.events.log(message, level)

    def started(self, total_steps: int, resumed_from: int) -> None:
        if resumed_from:
            dropped = self.events.forget_after(resumed_from)
            if dropped:
                self.log(f"Steps after {resumed_from} are redone; their {dropped} rows replaced.")
        self._update(total_steps=total_steps, step=resumed_from)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.events.step(METRICS, step, values)
        self.latest.update(
            {
                k: values[k]
                for k in ("train_loss", "learning_rate", "tokens_per_second", "trained_tokens")
            }
        )
        self._update(step=step, metrics=dict(self.latest))

    def validation(self, step: int, loss: float) -> None:
        self.events.step(VALIDATION, step, {"validation_loss": loss})
        self.latest["validation_loss"] = loss
        self._update(metrics=dict(self.latest))


def _load_env_file(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.rstrip("\n").partition("=")
            if sep and key:
                os.environ[key] = value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmfoundry-job")
    parser.add_argument("--job", required=True)
    parser.add_argument("--parent", type=int, default=os.getppid())
    parser.add_argument(
        "--env-file",
        help="KEY=VALUE lines to add to the environment (a Ray Job gets its database URL "
        "this way: a runtime_env's variables show in Ray's job listings)",
    )
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    if args.env_file:
        _load_env_file(args.env_file)

    db = Database(get_settings().resolved_database_url)
    with db.session() as s:
        row = s.get(FineTuningJob, args.job)
        if row is None or row.status != "running":
            print(f"job {args.job} is not running; nothing to do", file=sys.stderr)
            return
        config = FineTuneConfig.from_dict(row.spec)
    report = DatabaseReport(db, args.job)
    report.log(f"Job process started (pid {os.getpid()}).")
    print(f"job {args.job} started (pid {os.getpid()})", flush=True)
    try:
        from lmfoundry.finetune.trainer import train

        result = train(config, report)
    except ImportError as exc:
        _fail(
            db,
            report,
            f"The training stack is not installed ({exc}): pip install "
            "'lmfoundry[train]' on the server.",
        )
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - any failure is the job's, with its reason
        traceback.print_exc()
        _fail(db, report, f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    report.log(f"Completed after {result.steps} steps; model saved to {result.output_dir}.")
    print(f"job {args.job} completed after {result.steps} steps", flush=True)
    with db.session() as s:
        s.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == args.job, FineTuningJob.status == "running")
            .values(
                status="completed",
                output_path=str(result.output_dir),
                step=result.steps,
                metrics={**report.latest, **result.metrics},
                finished_at=utcnow(),
                pid=None,
            )
        )


def _fail(db: Database, report: DatabaseReport, reason: str) -> None:
    report.log(f"Failed: {reason}", "error")
    with db.session() as s:
        s.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == report.job_id, FineTuningJob.status == "running")
            .values(status="failed", error=reason, finished_at=utcnow(), pid=None)
        )


if __name__ == "__main__":
    main()
