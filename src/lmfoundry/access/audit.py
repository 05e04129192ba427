"""The audit log: who changed keys, members, deployments, quotas and traffic, and when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmfoundry.access.models import AuditEventView
from lmfoundry.observability.logs import current_request_id
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import AuditEvent

MAX_EVENTS = 5000  # one listing's most


def record(
    s: Session, actor: str, project_id: int | None, action: str, target: str, detail: dict[str, Any]
) -> None:
    """Add an audit event to the caller's unit of work (so it commits with the change), with
    the id of the request that made it (as its response's x-request-id header shows it)."""
    s.add(
        AuditEvent(
            actor=actor,
            project_id=project_id,
            action=action,
            target=target,
            detail=detail,
            request_id=current_request_id(),
        )
    )


def list_events(
    db: Database, project_id: int, since: datetime | None = None, limit: int = 200
) -> list[AuditEventView]:
    """A project's events, newest first: `limit` of them (1 to MAX_EVENTS), since `since`."""
    query = select(AuditEvent).where(AuditEvent.project_id == project_id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    query = query.order_by(AuditEvent.id.desc()).limit(max(1, min(limit, MAX_EVENTS)))
    with db.session() as s:
        return [
            AuditEventView(
                at=e.at,
                actor=e.actor,
                action=e.action,
                target=e.target,
                detail=e.detail,
                request_id=e.request_id,
            )
            for e in s.scalars(query)
        ]
