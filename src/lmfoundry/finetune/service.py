"""Fine-tuning jobs: create (validated against the base model), read, follow, cancel.

The service only writes rows; the job supervisor (`finetune/supervisor.py`) starts, watches and
stops the processes. A job's `spec` is its resolved `FineTuneConfig`, fixed at creation.
"""

from __future__ import annotations

import importlib.util
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from lmfoundry.access.audit import record
from lmfoundry.access.models import ProjectAccess, Role
from lmfoundry.catalog.service import CatalogService, ResolvedModel
from lmfoundry.datasets.service import DatasetService
from lmfoundry.errors import Conflict, InvalidRequest, NotFound, Unavailable
from lmfoundry.finetune.config import Base, FineTuneConfig, Hyperparameters
from lmfoundry.finetune.events import JobEvents, read_events
from lmfoundry.finetune.models import EventList, JobOutput, JobView, LogEvent
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Dataset, FineTuningJob, utcnow

if TYPE_CHECKING:
    from lmfoundry.quotas.projects import ProjectQuotas

STATUSES = ("queued", "running", "completed", "failed", "canceled")
TERMINAL = ("completed", "failed", "canceled")
SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
TRAINING_STACK = ("torch", "transformers", "peft", "trl", "datasets", "mlflow")


def missing_training_stack() -> list[str]:
    """Packages of the `train` extra that are not installed (checked without importing)."""
    return [name for name in TRAINING_STACK if importlib.util.find_spec(name) is None]


class FineTuneService:
    project_quotas: ProjectQuotas | None = None  # bounds jobs queued or running at once

    def __init__(
        self,
        db: Database,
        catalog: CatalogService,
        datasets: DatasetService,
        artifacts_dir: Path,
        jobs_dir: Path,
        models_dir: Path,
        default_checkpoint_steps: int,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.datasets = datasets
        self.artifacts_dir = artifacts_dir
        self.jobs_dir = jobs_dir
        self.models_dir = models_dir
        self.default_checkpoint_steps = default_checkpoint_steps

    # -- creating ----------------------------------------------------------------------------

    def create_job(
        self,
        access: ProjectAccess,
        model: str,
        training_data: str,
        validation_data: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        suffix: str | None = None,
    ) -> JobView:
        access.require(Role.developer, "create fine-tuning jobs")
        missing = missing_training_stack()
        if missing:
            raise Unavailable(
                f"This server cannot run fine-tuning jobs: {', '.join(missing)} not installed. "
                "Install the training stack on the server: pip install 'lmfoundry[train]'."
            )
        if suffix is not None and not SUFFIX.match(suffix):
            raise InvalidRequest(
                f"Invalid suffix {suffix!r}: use up to 40 lowercase letters, digits and hyphens.",
                param="suffix",
            )
        hp = Hyperparameters.from_request(hyperparameters, self.default_checkpoint_steps)
        base = self._base(model)
        if hp.max_seq_length > base.card.context_length:
            raise InvalidRequest(
                f"max_seq_length {hp.max_seq_length} is longer than the "
                f"{base.card.context_length}-token context of {base.card.id}.",
                param="hyperparameters.max_seq_length",
            )
        job_id = "ftjob-" + secrets.token_hex(8)
        with self.db.session() as s:
            if self.project_quotas is not None:
                self.project_quotas.check_job(s, access)
            train = self._dataset(s, access, training_data, "training_data")
            valid = (
                self._dataset(s, access, validation_data, "validation_data")
                if validation_data
                else None
            )
            lineage: dict[str, Any] = {
                "training_data": _ref(train),
                "validation_data": _ref(valid) if valid else None,
                "token_stats": {
                    "training_data": self.datasets.check_for_model(
                        s, train, base, "training_data"
                    ).model_dump()
                },
            }
            if valid is not None:
                lineage["token_stats"]["validation_data"] = self.datasets.check_for_model(
                    s, valid, base, "validation_data"
                ).model_dump()
            config = FineTuneConfig(
                job_id=job_id,
                base=Base(
                    id=base.card.id,
                    path=str(base.path),
                    format=base.card.format,
                    architecture=base.card.architecture,
                    context_length=base.card.context_length,
                    chat_template=base.card.chat_template,
                ),
                training_file=train.path,
                validation_file=valid.path if valid else None,
                hyperparameters=hp,
                work_dir=str(self.jobs_dir / job_id),
                output_dir=str(self.artifacts_dir / "fine-tuning-jobs" / job_id / "model"),
                models_dir=str(self.models_dir),
                lineage=lineage,
            )
            row = FineTuningJob(
                id=job_id,
                project_id=access.project_id,
                model=base.card.id,
                training_dataset_id=train.id,
                validation_dataset_id=valid.id if valid else None,
                hyperparameters=hp.to_dict(),
                suffix=suffix,
                spec=config.to_dict(),
                status="queued",
                metrics={},
                created_by=access.principal.name,
            )
            s.add(row)
            record(
                s,
                access.principal.name,
                access.project_id,
                "job.create",
                job_id,
                {"model": base.card.id, "training_data": _ref(train)},
            )
            s.flush()
            view = self._view(s, row, access.project)
        JobEvents(self.db, job_id).log(
            f"Created by {access.principal.name}: LoRA fine-tuning of {base.card.id} on "
            f"{_ref(train)}; queued."
        )
        return view

    def _base(self, model: str) -> ResolvedModel:
        try:
            resolved = self.catalog.resolve(model)
        except Unavailable as exc:
            raise InvalidRequest(exc.message, param="model") from exc
        except NotFound as exc:
            raise NotFound(exc.message, param="model") from exc
        if resolved.card.model_type != "chat-completions":
            raise InvalidRequest(
                f"{resolved.card.id} is an embeddings model; fine-tuning jobs train chat "
                "models (LoRA on chat data). Pick a chat model such as SmolLM2-135M-Instruct.",
                param="model",
            )
        path = resolved.path
        if not (path.is_dir() or path.suffix == ".gguf"):
            raise InvalidRequest(
                f"{resolved.card.id} has no weights to fine-tune (it is not a GGUF file or a "
                "Hugging Face folder); pick a catalog model whose weights are present.",
                param="model",
            )
        return resolved

    def _dataset(self, s: Any, access: ProjectAccess, ref: str, param: str) -> Dataset:
        try:
            return self.datasets.find(s, access, ref)
        except (NotFound, InvalidRequest) as exc:
            exc.param = param
            raise

    # -- reading -----------------------------------------------------------------------------

    def list_jobs(self, access: ProjectAccess, status: str | None = None) -> list[JobView]:
        if status is not None and status not in STATUSES:
            raise InvalidRequest(
                f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.", param="status"
            )
        with self.db.session() as s:
            query = select(FineTuningJob).where(FineTuningJob.project_id == access.project_id)
            if status is not None:
                query = query.where(FineTuningJob.status == status)
            rows = s.scalars(query.order_by(FineTuningJob.created_at.desc(), FineTuningJob.id))
            return [self._view(s, row, access.project) for row in rows]

    def get_job(self, access: ProjectAccess, job_id: str) -> JobView:
        with self.db.session() as s:
            return self._view(s, self._row(s, access, job_id), access.project)

    def events(
        self, access: ProjectAccess, job_id: str, after: int | None = None, limit: int = 1000
    ) -> EventList:
        """Up to `limit` events after the id `after`, and the job's status when they were
        read."""
        with self.db.session() as s:
            row = self._row(s, access, job_id)
            status = row.status
            events = read_events(s, job_id, after, limit)
        for event in events:
            if isinstance(event, LogEvent):
                event.message = self._unpath(event.message)
        return EventList(data=events, status=status, has_more=len(events) == limit)

    def _row(self, s: Any, access: ProjectAccess, job_id: str) -> FineTuningJob:
        row = s.get(FineTuningJob, job_id)
        if row is None or row.project_id != access.project_id:
            raise NotFound(
                f"No fine-tuning job {job_id!r} in project {access.project!r}; "
                "`lmfoundry jobs list` shows them."
            )
        return row  # type: ignore[no-any-return]

    def _unpath(self, text: str) -> str:
        """A job's own words (its error, its log lines) without the server's folders: a
        trainer's traceback names the files it read."""
        home = str(self.artifacts_dir.parent)
        return text.replace(str(self.artifacts_dir), "<artifacts>").replace(home, "<home>")

    def _view(self, s: Any, row: FineTuningJob, project: str) -> JobView:
        train = s.get(Dataset, row.training_dataset_id)
        valid = s.get(Dataset, row.validation_dataset_id) if row.validation_dataset_id else None
        return JobView(
            id=row.id,
            project=project,
            model=row.model,
            status=row.status,
            error=self._unpath(row.error) if row.error else row.error,
            training_data=f"{train.name}:{train.version}",
            training_data_id=row.training_dataset_id,
            validation_data=_ref(valid),
            validation_data_id=row.validation_dataset_id,
            hyperparameters=Hyperparameters(**row.hyperparameters),
            suffix=row.suffix,
            step=row.step,
            total_steps=row.total_steps,
            metrics=row.metrics,
            restarts=row.restarts,
            pid=row.pid,
            cancel_requested=row.cancel_requested,
            created_by=row.created_by,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )

    def job_output(self, project_id: int, job_id: str) -> JobOutput:
        """The MLflow folder, base catalog model and lineage of a succeeded job: what the
        model registry registers with `--from-job`."""
        with self.db.session() as s:
            row = s.get(FineTuningJob, job_id)
            if row is None or row.project_id != project_id:
                raise NotFound(
                    f"No fine-tuning job {job_id!r} in this project; `lmfoundry jobs list` "
                    "shows them.",
                    param="job",
                )
            if row.status != "completed" or not row.output_path:
                raise Conflict(
                    f"Job {job_id} is {row.status}; only a succeeded job has a model to "
                    "register (`lmfoundry jobs logs JOB` says how it is doing).",
                    param="job",
                )
            train = s.get(Dataset, row.training_dataset_id)
            valid = s.get(Dataset, row.validation_dataset_id) if row.validation_dataset_id else None
            lineage = {
                "job_id": row.id,
                "base_model": row.model,
                "training_data": _ref(train),
                "validation_data": _ref(valid) if valid else None,
                "hyperparameters": row.hyperparameters,
                "metrics": row.metrics,
            }
            return JobOutput(path=Path(row.output_path), base_model=row.model, lineage=lineage)

    # -- canceling ---------------------------------------------------------------------------

    def cancel_job(self, access: ProjectAccess, job_id: str) -> JobView:
        """Cancel a queued job at once; ask the supervisor to stop a running one."""
        access.require(Role.developer, "cancel fine-tuning jobs")
        with self.db.session() as s:
            row = self._row(s, access, job_id)
            if row.status in TERMINAL:
                raise Conflict(f"Job {job_id} is already {row.status}; there is nothing to cancel.")
            row.cancel_requested = True
            if row.status == "queued":
                row.status, row.finished_at = "canceled", utcnow()
            record(s, access.principal.name, access.project_id, "job.cancel", job_id, {})
            queued = row.status == "canceled"
        JobEvents(self.db, job_id).log(
            f"Canceled by {access.principal.name} before it started."
            if queued
            else f"Cancel requested by {access.principal.name}; stopping the job process."
        )
        return self.get_job(access, job_id)


def _ref(row: Dataset | None) -> str | None:
    return f"{row.name}:{row.version}" if row is not None else None
