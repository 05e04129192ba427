"""A job's events in the database: step metrics, validation losses and log lines.

The job process writes them as it trains (SQLite in WAL mode takes a small write in ~0.1 ms);
the API reads them, live. There is one metrics row and one validation row per step at most:
(job, kind, step) is unique, a replayed step replaces its row, and when a job resumes from a
checkpoint the rows of the steps after it are dropped, to be written again as they are redone.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lmfoundry.finetune.models import JobEvent
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import FineTuningEvent, utcnow

METRICS = "metrics"
VALIDATION = "validation"
LOG = "log"
STEP_KINDS = (METRICS, VALIDATION)


class JobEvents:
    """Writes the events of one job."""

    def __init__(self, db: Database, job_id: str) -> None:
        self.db = db
        self.job_id = job_id

    def log(self, message: str, level: str = "info", **data: Any) -> None:
        with self.db.session() as s:
            s.add(
                FineTuningEvent(
                    job_id=self.job_id, kind=LOG, level=level, message=message, data=data
                )
            )

    def step(self, kind: str, step: int, data: dict[str, Any]) -> None:
        """Record the metrics of one step, replacing what an earlier attempt wrote for it."""
        now = utcnow()
        values = {
            "job_id": self.job_id,
            "kind": kind,
            "step": step,
            "at": now,
            "level": "info",
            "message": "",
            "data": data,
        }
        with self.db.session() as s:
            dialect = s.get_bind().dialect.name
            if dialect in ("sqlite", "postgresql"):
                insert = (sqlite if dialect == "sqlite" else postgresql).insert(FineTuningEvent)
                s.execute(
                    insert.values(**values).on_conflict_do_update(
                        index_elements=["job_id", "kind", "step"],
                        set_={"at": now, "data": data},
                    )
                )
                return
        try:
            with self.db.session() as s:
                s.add(FineTuningEvent(**values))
        except IntegrityError:
            with self.db.session() as s:
                row = s.scalar(
                    select(FineTuningEvent).where(
                        FineTuningEvent.job_id == self.job_id,
                        FineTuningEvent.kind == kind,
                        FineTuningEvent.step == step,
                    )
                )
                if row is not None:
                    row.data, row.at = data, now

    def forget_after(self, step: int) -> int:
        """Drop the step rows after `step` (a resume redoes those steps); returns how many."""
        with self.db.session() as s:
            result = s.execute(
                delete(FineTuningEvent).where(
                    FineTuningEvent.job_id == self.job_id,
                    FineTuningEvent.kind.in_(STEP_KINDS),
                    FineTuningEvent.step > step,
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)


_EVENT: TypeAdapter[JobEvent] = TypeAdapter(JobEvent)


def event_view(row: FineTuningEvent) -> JobEvent:
    """The wire shape: metrics are top-level fields (`train_loss`, `validation_loss`, …)."""
    fields: dict[str, Any] = {"id": row.id, "at": row.at, "kind": row.kind}
    if row.kind == LOG:
        fields.update(level=row.level, message=row.message)
    else:
        fields["step"] = row.step
    fields.update(row.data or {})
    return _EVENT.validate_python(fields)


def read_events(
    s: Session, job_id: str, after: int | None = None, limit: int = 1000
) -> list[JobEvent]:
    query = select(FineTuningEvent).where(FineTuningEvent.job_id == job_id)
    if after is not None:
        query = query.where(FineTuningEvent.id > after)
    rows = s.scalars(query.order_by(FineTuningEvent.id).limit(limit))
    return [event_view(row) for row in rows]
