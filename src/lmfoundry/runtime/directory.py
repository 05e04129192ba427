"""The instance directory: instances in the database, published by the supervisor, read
by gateway processes.

This is how several `lmfoundry up --no-supervisor` gateways share the instances one
supervisor owns: the supervisor upserts a row per instance (address, state) every tick;
a gateway that needs a group nobody runs (a serverless deployment scaled to zero) records a
demand, which the supervisor answers by starting the group; gateways touch the demand while
they use a group, so it is not stopped as idle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from lmfoundry.storage.db import Database
from lmfoundry.storage.models import InstanceDemand, InstanceRecord, Supervisor

STALE_SECONDS = 10.0  # a row not refreshed for this long belongs to a dead supervisor


@dataclass(frozen=True)
class Published:
    id: str
    group_key: str
    address: str
    state: str
    pid: int | None


class InstanceDirectory:
    def __init__(self, db: Database, supervisor: str) -> None:
        self.db = db
        self.supervisor = supervisor

    # -- supervisor side ---------------------------------------------------------------------

    def publish(self, instances: list[Published]) -> None:
        """Replace this supervisor's rows with `instances` (one small transaction), and
        say this supervisor is alive (even with no instance to publish)."""
        now = datetime.now(UTC)
        with self.db.session() as s:
            self._beat(s, now)
            s.execute(delete(InstanceRecord).where(InstanceRecord.supervisor == self.supervisor))
            s.add_all(
                [
                    InstanceRecord(
                        id=f"{self.supervisor}:{i.id}",
                        group_key=i.group_key,
                        address=i.address,
                        state=i.state,
                        pid=i.pid,
                        supervisor=self.supervisor,
                        updated_at=now,
                    )
                    for i in instances
                ]
            )

    def beat(self) -> None:
        """Say this supervisor is alive (`publish` does it too)."""
        with self.db.session() as s:
            self._beat(s, datetime.now(UTC))

    def _beat(self, s: Any, now: datetime) -> None:
        row = s.get(Supervisor, self.supervisor)
        if row is None:
            s.add(Supervisor(id=self.supervisor, pid=os.getpid(), started_at=now, seen_at=now))
        else:
            row.seen_at = now

    def withdraw(self) -> None:
        with self.db.session() as s:
            s.execute(delete(Supervisor).where(Supervisor.id == self.supervisor))
            s.execute(delete(InstanceRecord).where(InstanceRecord.supervisor == self.supervisor))

    def demands(self, within: float) -> list[tuple[str, dict[str, Any], str, datetime]]:
        """(group key, spec, name, last used) of groups gateways used within `within` s."""
        since = datetime.now(UTC) - timedelta(seconds=within)
        with self.db.session() as s:
            rows = s.scalars(select(InstanceDemand).where(InstanceDemand.last_used_at >= since))
            return [(r.group_key, dict(r.spec), r.name, r.last_used_at) for r in rows]

    # -- gateway side ------------------------------------------------------------------------

    def ready(self, group_key: str) -> list[Published]:
        fresh = datetime.now(UTC) - timedelta(seconds=STALE_SECONDS)
        with self.db.session() as s:
            rows = s.scalars(
                select(InstanceRecord).where(
                    InstanceRecord.group_key == group_key,
                    InstanceRecord.state == "ready",
                    InstanceRecord.updated_at >= fresh,
                )
            )
            return [Published(r.id, r.group_key, r.address, r.state, r.pid) for r in rows]

    def all(self) -> list[Published]:
        fresh = datetime.now(UTC) - timedelta(seconds=STALE_SECONDS)
        with self.db.session() as s:
            rows = s.scalars(select(InstanceRecord).where(InstanceRecord.updated_at >= fresh))
            return [Published(r.id, r.group_key, r.address, r.state, r.pid) for r in rows]

    def demand(self, group_key: str, spec: dict[str, Any], name: str) -> None:
        """Ask for `group_key` (or say it is still in use)."""
        try:
            with self.db.session() as s:
                row = s.get(InstanceDemand, group_key)
                if row is None:
                    s.add(InstanceDemand(group_key=group_key, spec=spec, name=name))
                else:
                    row.last_used_at = datetime.now(UTC)
        except IntegrityError:
            pass  # another gateway asked at the same moment: the demand is recorded


@dataclass(frozen=True)
class Heartbeat:
    """The freshest supervisor's last word: its pid and how long ago it spoke."""

    pid: int
    age_seconds: float

    @property
    def alive(self) -> bool:
        return self.age_seconds <= STALE_SECONDS


def last_heartbeat(db: Database) -> Heartbeat | None:
    """The most recent supervisor heartbeat in the database, or None when none ever beat."""
    with db.session() as s:
        row = s.scalars(select(Supervisor).order_by(Supervisor.seen_at.desc()).limit(1)).first()
        if row is None:
            return None
        age = (datetime.now(UTC) - row.seen_at).total_seconds()
        return Heartbeat(row.pid, max(0.0, age))
