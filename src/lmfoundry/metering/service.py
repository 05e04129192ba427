"""Usage records (one per request), written in batches, and cost reports.

Records are queued in memory and written every `FLUSH_SECONDS` in one transaction; stopping
the server (SIGTERM) flushes what is queued before the process exits, so a response that was
sent always has its record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, func, select

from lmfoundry.metering.models import GROUPS, UsageRecordView, UsageRow
from lmfoundry.runtime.periodic import Periodic
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import UsageRecord

log = logging.getLogger("lmfoundry.metering")

FLUSH_SECONDS = 0.25


def cost_of(prompt_tokens: int, completion_tokens: int, price_in: float, price_out: float) -> float:
    return prompt_tokens / 1000 * price_in + completion_tokens / 1000 * price_out


@dataclass
class Usage:
    request_id: str
    project_id: int
    target_kind: str
    target: str
    deployment: str
    key_slot: str
    model: str
    price_input_per_1k: float
    price_output_per_1k: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status_code: int = 200
    streamed: bool = False
    mirrored: bool = False
    refused: bool = False  # refused at admission: no tokens, not in the usage report
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def row(self) -> UsageRecord:
        return UsageRecord(
            request_id=self.request_id,
            at=self.at,
            project_id=self.project_id,
            target_kind=self.target_kind,
            target=self.target,
            deployment=self.deployment,
            key_slot=self.key_slot,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=round(self.latency_ms, 3),
            ttft_ms=None if self.ttft_ms is None else round(self.ttft_ms, 3),
            status_code=self.status_code,
            streamed=self.streamed,
            mirrored=self.mirrored,
            refused=self.refused,
            price_input_per_1k=self.price_input_per_1k,
            price_output_per_1k=self.price_output_per_1k,
            cost=cost_of(
                self.prompt_tokens,
                self.completion_tokens,
                self.price_input_per_1k,
                self.price_output_per_1k,
            ),
        )


@dataclass(frozen=True)
class Backlog:
    """Usage records not yet in the database: how many, and when the oldest was made."""

    pending: int
    oldest: datetime | None

    def lag_seconds(self) -> float:
        if self.oldest is None:
            return 0.0
        return max(0.0, (datetime.now(UTC) - self.oldest).total_seconds())


class MeteringService:
    """Queues usage records and writes them in batches.

    Without Redis the queue is this process's memory (flushed on SIGTERM). With Redis
    (several gateway processes) each record is pushed to a Redis list before the response
    completes, so a gateway killed outright loses nothing: any gateway's drainer moves the
    list into the database, and a record written twice (a drainer killed between the insert
    and the trim) is dropped by the unique request id.
    """

    def __init__(self, db: Database, enabled: bool = True, redis_url: str | None = None) -> None:
        self.db = db
        self.enabled = enabled
        self._pending: list[Usage] = []
        self._flush_lock = threading.Lock()  # the flusher task and report requests both flush
        self._loop = Periodic("writing usage records", FLUSH_SECONDS, self._flush_due, log)
        self._journal = _RedisJournal(redis_url) if redis_url else None

    async def record(self, usage: Usage) -> None:
        if not self.enabled:
            return
        if self._journal is not None:
            await self._journal.push(usage)
        else:
            self._pending.append(usage)

    def backlog(self) -> Backlog:
        """What waits to be written: this process's queue, or (with Redis) the shared
        journal of every gateway. Blocking (a Redis round trip): call it in a thread."""
        if self._journal is not None:
            return self._journal.backlog()
        pending = list(self._pending)
        return Backlog(len(pending), pending[0].at if pending else None)

    def start(self) -> None:
        self._loop.start()

    async def _flush_due(self) -> None:
        """A tick of the loop; a batch that fails to write stays queued for the next."""
        if self._journal is None and not self._pending:
            return  # nothing to write: no trip to a thread
        await asyncio.to_thread(self.flush, wait=False)

    def flush(self, wait: bool = True) -> int:
        """Write every queued record; on failure they stay queued. With Redis, `wait` waits
        for another drainer (or a killed one's lock to expire) rather than skipping."""
        with self._flush_lock:
            if self._journal is not None:
                return self._journal.drain(self._insert, wait)
            batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                self._insert([u.row() for u in batch])
            except BaseException:
                self._pending[:0] = batch
                raise
            return len(batch)

    def _insert(self, rows: list[UsageRecord]) -> None:
        """Insert, skipping request ids already written (a drain replayed after a crash)."""
        values = [
            {c.name: getattr(r, c.name) for c in UsageRecord.__table__.columns if c.name != "id"}
            for r in rows
        ]
        if not values:
            return
        dialect = self.db.engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        # One statement executed for many rows (compiled once and cached), rather than a
        # multi-row VALUES compiled anew for every batch size.
        table = cast(Table, UsageRecord.__table__)  # typed as a FromClause
        statement = insert(table).on_conflict_do_nothing(index_elements=["request_id"])
        with self.db.session() as s:
            s.execute(statement, values)

    async def stop(self) -> None:
        await self._loop.stop()
        await asyncio.to_thread(self.flush)
        if self._journal is not None:
            await self._journal.aclose()

    # -- reports -----------------------------------------------------------------------------

    def report(
        self,
        project_id: int,
        group_by: str,
        start: datetime | None,
        end: datetime | None,
        target: str | None = None,
        deployment: str | None = None,
    ) -> list[UsageRow]:
        """Billed usage (not mirrored, not refused) grouped as `GROUPS[group_by]` names,
        optionally only one target's or one deployment's."""
        names = GROUPS[group_by]
        column = {
            "kind": UsageRecord.target_kind,
            "target": UsageRecord.target,
            "deployment": UsageRecord.deployment,
            "key": UsageRecord.key_slot,
            "day": func.substr(func.cast(UsageRecord.at, _string()), 1, 10),
            "model": UsageRecord.model,
        }
        columns = [column[name] for name in names]
        query = select(
            *columns,
            func.count(UsageRecord.id),
            func.sum(UsageRecord.prompt_tokens),
            func.sum(UsageRecord.completion_tokens),
            func.sum(UsageRecord.cost),
        ).where(
            UsageRecord.project_id == project_id,
            UsageRecord.mirrored.is_(False),
            UsageRecord.refused.is_(False),  # refusals: on the monitoring page, not billed
        )
        if start is not None:
            query = query.where(UsageRecord.at >= start)
        if end is not None:
            query = query.where(UsageRecord.at < end)
        if target is not None:
            query = query.where(UsageRecord.target == target)
        if deployment is not None:
            query = query.where(UsageRecord.deployment == deployment)
        query = query.group_by(*columns).order_by(*columns)
        with self.db.session() as s:
            rows = s.execute(query).all()
        out = []
        for row in rows:
            keys = dict(zip(names, row[: len(names)], strict=True))
            requests, prompt, completion, cost = row[len(names) :]
            out.append(
                UsageRow(
                    **keys,
                    requests=int(requests or 0),
                    prompt_tokens=int(prompt or 0),
                    completion_tokens=int(completion or 0),
                    total_tokens=int((prompt or 0) + (completion or 0)),
                    cost=round(float(cost or 0.0), 8),
                )
            )
        return out

    def records(
        self, project_id: int, target: str | None = None, limit: int = 100
    ) -> list[UsageRecordView]:
        """A project's latest records, newest first (refusals left out)."""
        query = select(UsageRecord).where(
            UsageRecord.project_id == project_id, UsageRecord.refused.is_(False)
        )
        if target:
            query = query.where(UsageRecord.target == target)
        with self.db.session() as s:
            rows = s.scalars(query.order_by(UsageRecord.id.desc()).limit(limit)).all()
            return [
                UsageRecordView(
                    request_id=r.request_id,
                    at=r.at,
                    target_kind=r.target_kind,
                    target=r.target,
                    deployment=r.deployment,
                    key_slot=r.key_slot,
                    model=r.model,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    latency_ms=r.latency_ms,
                    ttft_ms=r.ttft_ms,
                    status_code=r.status_code,
                    streamed=r.streamed,
                    mirrored=r.mirrored,
                    cost=r.cost,
                )
                for r in rows
            ]


def _string() -> Any:
    from sqlalchemy import String

    return String()


class _RedisJournal:
    """Usage records in a Redis list until a drainer writes them to the database."""

    KEY = "lmf:usage:journal"
    LOCK = "lmf:usage:drain"
    LOCK_MS = 5000  # a batch is written well within it; a killed drainer's lock expires
    BATCH = 500

    def __init__(self, url: str) -> None:
        import redis
        import redis.asyncio as aredis

        self._async = aredis.from_url(url)
        self._sync = redis.from_url(url)
        self._trim = self._sync.register_script(_TRIM)
        self._release = self._sync.register_script(_RELEASE)

    async def push(self, usage: Usage) -> None:
        await self._async.rpush(self.KEY, json.dumps(_to_json(usage)))

    def backlog(self) -> Backlog:
        pending = int(self._sync.llen(self.KEY))
        first = self._sync.lindex(self.KEY, 0) if pending else None
        oldest = datetime.fromisoformat(json.loads(first)["at"]) if first else None
        return Backlog(pending, oldest)

    def drain(self, insert: Any, wait: bool) -> int:
        """Move the journal into the database, one batch at a time, one drainer at a time.

        `wait` waits for the lock past its lifetime, so a lock left by a drainer that was
        killed has expired by then; without it a held lock skips this drain.
        """
        token = uuid.uuid4().hex
        deadline = time.monotonic() + (self.LOCK_MS / 1000 + 1 if wait else 0)
        while not self._sync.set(self.LOCK, token, nx=True, px=self.LOCK_MS):
            if time.monotonic() >= deadline:
                return 0
            time.sleep(0.05)
        moved = 0
        try:
            while True:
                raw = self._sync.lrange(self.KEY, 0, self.BATCH - 1)
                if not raw:
                    return moved
                insert([Usage(**_from_json(json.loads(item))).row() for item in raw])
                # Trimmed only while the lock is still this drainer's (and its life renewed):
                # a drainer that outlived its lock leaves the batch to the lock's new holder,
                # which writes it again (skipped by request id) and trims it once.
                kept = self._trim(keys=[self.LOCK, self.KEY], args=[token, len(raw), self.LOCK_MS])
                if not kept:
                    return moved
                moved += len(raw)
        finally:
            self._release(keys=[self.LOCK], args=[token])

    async def aclose(self) -> None:
        await self._async.aclose()
        self._sync.close()


# The lock is a key holding its holder's token (SET NX PX). redis-py's Lock holds the token
# privately, and the trim must check the holder and trim in one step, so two short scripts.
_TRIM = """if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('ltrim', KEYS[2], tonumber(ARGV[2]), -1)
  redis.call('pexpire', KEYS[1], tonumber(ARGV[3]))
  return 1
end
return 0"""
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0"""


def _to_json(usage: Usage) -> dict[str, Any]:
    data = asdict(usage)
    data["at"] = usage.at.isoformat()
    return data


def _from_json(data: dict[str, Any]) -> dict[str, Any]:
    data["at"] = datetime.fromisoformat(data["at"])
    return data
