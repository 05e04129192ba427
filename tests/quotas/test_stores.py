"""The in-process and Redis quota stores keep the same semantics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from lmfoundry.quotas.redis_store import RedisQuotaStore
from lmfoundry.quotas.service import MemoryQuotaStore, QuotaStore
from lmfoundry.quotas.window import Limits

LIMITS = Limits(tokens_per_minute=1000, requests_per_minute=3)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[QuotaStore]:
    if request.param == "memory":
        yield MemoryQuotaStore()
        return
    redis_store = RedisQuotaStore(
        request.getfixturevalue("redis_url"), prefix=f"test:{uuid.uuid4().hex}"
    )
    yield redis_store
    await redis_store.aclose()


async def test_reserve_settle_and_refuse(store: QuotaStore) -> None:
    first = await store.reserve("t", "a", 700, LIMITS)
    assert first.allowed and first.remaining_tokens == 300 and first.remaining_requests == 2
    refused = await store.reserve("t", "b", 400, LIMITS)
    assert not refused.allowed
    assert 59 < refused.retry_after <= 60 and "tokens per minute" in refused.reason
    await store.settle("t", "a", 100)
    assert (await store.remaining("t", LIMITS)) == (900, 2)
    assert (await store.reserve("t", "b", 400, LIMITS)).allowed
    assert (await store.reserve("t", "c", 1, LIMITS)).allowed
    by_requests = await store.reserve("t", "d", 1, LIMITS)
    assert not by_requests.allowed and "requests per minute" in by_requests.reason
    assert (await store.reserve("other", "e", 1000, LIMITS)).allowed  # targets are separate
    assert not (await store.reserve("t2", "f", 1001, LIMITS)).allowed


async def test_concurrent_reservations_never_overshoot(store: QuotaStore) -> None:
    limits = Limits(tokens_per_minute=1000, requests_per_minute=1000)
    decisions = await asyncio.gather(
        *(store.reserve("race", str(i), 30, limits) for i in range(100))
    )
    assert sum(d.allowed for d in decisions) == 33


async def test_redis_store_is_shared_between_clients(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    one, two = RedisQuotaStore(redis_url, prefix), RedisQuotaStore(redis_url, prefix)
    try:
        assert (await one.reserve("t", "a", 600, LIMITS)).allowed
        assert not (await two.reserve("t", "b", 600, LIMITS)).allowed
        await one.settle("t", "a", 0)  # seen by the other client, which keeps b's place
        assert (await two.reserve("t", "c", 400, LIMITS, claim="c")).allowed
        assert not (await two.reserve("t", "d", 1, LIMITS, claim="d")).allowed
    finally:
        await one.aclose()
        await two.aclose()


@pytest.fixture(params=["memory", "redis"])
async def short_store(request: pytest.FixtureRequest) -> AsyncIterator[QuotaStore]:
    """Stores with a 1.5 s window, so that time can pass in a test."""
    if request.param == "memory":
        yield MemoryQuotaStore(window_seconds=1.5)
        return
    redis_store = RedisQuotaStore(
        request.getfixturevalue("redis_url"), prefix=f"test:{uuid.uuid4().hex}", window_seconds=1.5
    )
    yield redis_store
    await redis_store.aclose()


async def test_a_refused_caller_who_waits_as_told_gets_in(short_store: QuotaStore) -> None:
    limits = Limits(tokens_per_minute=100, requests_per_minute=1000)
    assert (await short_store.reserve("t", "a", 60, limits, claim="A")).allowed
    b = await short_store.reserve("t", "b", 60, limits, claim="B")
    c = await short_store.reserve("t", "c", 60, limits, claim="C")
    assert not b.allowed and not c.allowed
    assert 1.3 < b.retry_after <= 1.5 and 2.9 < c.retry_after <= 3.2  # C queues behind B
    await asyncio.sleep(b.retry_after)
    assert (await short_store.reserve("t", "b2", 60, limits, claim="B")).allowed
    early = await short_store.reserve("t", "c2", 60, limits, claim="C")
    assert not early.allowed
    await asyncio.sleep(c.retry_after - b.retry_after)
    assert (await short_store.reserve("t", "c3", 60, limits, claim="C")).allowed


async def test_capacity_freed_by_settling_goes_to_newcomers(short_store: QuotaStore) -> None:
    limits = Limits(tokens_per_minute=100, requests_per_minute=1000)
    assert (await short_store.reserve("t", "a", 90, limits, claim="A")).allowed
    await short_store.settle("t", "a", 10)
    assert (await short_store.reserve("t", "b", 90, limits, claim="B")).allowed


async def test_newcomers_get_only_what_promises_leave(short_store: QuotaStore) -> None:
    limits = Limits(tokens_per_minute=100, requests_per_minute=1000)
    assert (await short_store.reserve("t", "a", 60, limits, claim="A")).allowed
    assert not (await short_store.reserve("t", "b", 60, limits, claim="B")).allowed
    await short_store.settle("t", "a", 0)  # free now, but B was promised 60 soon
    assert not (await short_store.reserve("t", "d", 50, limits, claim="D")).allowed
    assert (await short_store.reserve("t", "e", 40, limits, claim="E")).allowed
