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
        return Readiness({"database": database, "quota_store": quotas, **self._supervisor()})

    async def _database(self) -> str:
        def select_one() -> None:
            with self.db.session() as s:
                s.execute(text("SELECT 1"))

        return await _within(asyncio.to_thread(select_one), "the database")

    async def _quotas(self) -> str:
        return await _within(self.quotas.ping(), "the quota store")

    def _supervisor(self) -> dict[str, str]:
        if not self.supervisor:
            # A gateway meets its supervisor only through the database (checked above).
            return {"supervisor": "ok: another process (lmfoundry up --no-supervisor)"}
        if self.backend.supervising():
            return {"supervisor": "ok"}
        return {"supervisor": "down: the instance supervisor is not running in this process"}


async def _within(check: Awaitable[object], what: str) -> str:
    try:
        await asyncio.wait_for(check, CHECK_SECONDS)
    except TimeoutError:
        return f"down: {what} did not answer within {CHECK_SECONDS:g} s"
    except (LmfError, SQLAlchemyError, OSError) as exc:  # named, never the URL
        return f"down: cannot reach {what} ({type(exc).__name__})"
    return "ok"
