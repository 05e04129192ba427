"""Readiness: can this process serve? The database, the quota store and the supervisor.

`GET /healthz` says only that the process answers; `GET /readyz` runs these checks, each
within `CHECK_SECONDS`, so a load balancer or a Kubernetes probe stops sending traffic to a
process whose database or Redis is gone, and names what is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from lmfoundry.errors import LmfError
from lmfoundry.quotas.service import QuotaStore
from lmfoundry.runtime.backend import Backend
from lmfoundry.runtime.directory import STALE_SECONDS, last_heartbeat
from lmfoundry.storage.db import Database

CHECK_SECONDS = 2.0


@dataclass(frozen=True)
class Readiness:
    """Each check's answer: `ok`, or what is wrong."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(answer == "ok" or answer.startswith("ok:") for answer in self.checks.values())


class Health:
    def __init__(
        self, db: Database, quotas: QuotaStore, backend: Backend, supervisor: bool
    ) -> None:
        self.db = db
        self.quotas = quotas
        self.backend = backend
        self.supervisor = supervisor

    async def readiness(self) -> Readiness:
        database, quotas = await asyncio.gather(self._database(), self._quotas())
        supervisor = await self._supervisor()
        return Readiness({"database": database, "quota_store": quotas, "supervisor": supervisor})

    async def _database(self) -> str:
        def select_one() -> None:
            with self.db.session() as s:
                s.execute(text("SELECT 1"))

        return await _within(asyncio.to_thread(select_one), "the database")

    async def _quotas(self) -> str:
        return await _within(self.quotas.ping(), "the quota store")

    async def _supervisor(self) -> str:
        if self.supervisor:
            if self.backend.supervising():
                return "ok"
            return "down: the instance supervisor is not running in this process"
        # A gateway (lmfoundry up --no-supervisor) meets its supervisor only through the
        # database, where the supervisor beats every few seconds.
        heard: list[str] = []

        async def ask() -> None:
            beat = await asyncio.to_thread(last_heartbeat, self.db)
            if beat is None:
                heard.append("down: no supervisor is running on this database")
            elif not beat.alive:
                heard.append(
                    f"down: the supervisor (pid {beat.pid}) was last heard "
                    f"{beat.age_seconds:.0f} s ago (more than {STALE_SECONDS:g} s)"
                )
            else:
                heard.append(f"ok: supervisor pid {beat.pid}, heard {beat.age_seconds:.1f} s ago")

        answer = await _within(ask(), "the database")
        if answer != "ok":
            return answer
        text = heard[0]
        if text.startswith("down"):
            text += "; start `lmfoundry up` (without --no-supervisor) on the same database"
        return text


async def _within(check: Awaitable[object], what: str) -> str:
    try:
        await asyncio.wait_for(check, CHECK_SECONDS)
    except TimeoutError:
        return f"down: {what} did not answer within {CHECK_SECONDS:g} s"
    except (LmfError, SQLAlchemyError, OSError) as exc:  # named, never the URL
        return f"down: cannot reach {what} ({type(exc).__name__})"
    return "ok"
