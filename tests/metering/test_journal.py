"""The shared usage journal (Redis) of several gateways: one drainer at a time, and no
record left behind by a drainer that was killed or outlived its lock."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from lmfoundry.metering.service import MeteringService, Usage, _RedisJournal
from lmfoundry.storage.db import Database


def usage(n: int) -> Usage:
    return Usage(
        request_id=uuid.uuid4().hex,
        project_id=1,
        target_kind="serverless",
        target="journal",
        deployment="journal",
        key_slot="primary",
        model="echo",
        price_input_per_1k=0.0,
        price_output_per_1k=0.0,
        prompt_tokens=n,
        completion_tokens=1,
    )


@dataclass
class Gateway:
    """One gateway's metering, the Redis it shares, and the loop its async client lives in."""

    service: MeteringService
    store: redis.Redis
    loop: asyncio.AbstractEventLoop

    def record(self, count: int) -> None:
        async def push() -> None:
            for n in range(count):
                await self.service.record(usage(n))

        self.loop.run_until_complete(push())

    def recorded(self) -> int:
        rows = self.service.report(1, "target", None, None, target="journal")
        return rows[0].requests if rows else 0


@pytest.fixture
def gateway(
    database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Gateway]:
    monkeypatch.setattr(_RedisJournal, "LOCK_MS", 1000)  # a killed drainer's lock: 1 s, not 5
    db = Database(database_url)
    db.migrate()
    store = redis.from_url(redis_url)
    store.delete(_RedisJournal.KEY, _RedisJournal.LOCK)
    made = Gateway(MeteringService(db, redis_url=redis_url), store, asyncio.new_event_loop())
    yield made
    made.loop.run_until_complete(made.service.stop())
    made.loop.close()
    store.delete(_RedisJournal.KEY, _RedisJournal.LOCK)
    store.close()


def test_a_killed_drainers_lock_expires_and_a_report_waits_for_it(
    gateway: Gateway,
) -> None:
    service, store = gateway.service, gateway.store
    gateway.record(3)
    # a gateway killed while draining leaves its lock behind, with its lifetime
    store.set(_RedisJournal.LOCK, "killed", px=_RedisJournal.LOCK_MS)

    started = time.monotonic()
    assert service.flush(wait=False) == 0  # the periodic drain skips a held lock at once
    assert time.monotonic() - started < 1
    assert gateway.recorded() == 0

    assert service.flush() == 3  # a report's flush waits for the lock to expire
    assert time.monotonic() - started < _RedisJournal.LOCK_MS / 1000 + 2
    assert gateway.recorded() == 3
    assert store.llen(_RedisJournal.KEY) == 0
    assert store.get(_RedisJournal.LOCK) is None  # released


def test_a_drainer_that_lost_its_lock_leaves_the_batch_to_the_next(gateway: Gateway) -> None:
    service, store = gateway.service, gateway.store
    gateway.record(4)
    journal = service._journal
    assert journal is not None

    def slow_insert(rows: list) -> None:
        service._insert(rows)
        # the insert outlived the lock, and another drainer took it meanwhile
        store.set(_RedisJournal.LOCK, "another", px=_RedisJournal.LOCK_MS)

    assert journal.drain(slow_insert, wait=False) == 0
    assert store.llen(_RedisJournal.KEY) == 4  # not trimmed: the new holder owns the list
    assert store.get(_RedisJournal.LOCK) == b"another"  # its lock untouched

    store.delete(_RedisJournal.LOCK)  # the other drainer ends
    assert service.flush() == 4  # writes the batch again: each request once
    assert gateway.recorded() == 4
    assert store.llen(_RedisJournal.KEY) == 0
