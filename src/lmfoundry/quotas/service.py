"""Per-target quotas: in-process by default, shared through Redis when configured."""

from __future__ import annotations

import time
import uuid
from typing import Protocol

from lmfoundry.quotas.window import Decision, Limits, Window

DEFAULT_TOKENS_PER_MINUTE = 200_000
DEFAULT_REQUESTS_PER_MINUTE = 1_000


class QuotaStore(Protocol):
    async def reserve(self, target: str, id: str, tokens: int, limits: Limits) -> Decision: ...

    async def settle(self, target: str, id: str, tokens: int) -> None: ...

    async def remaining(self, target: str, limits: Limits) -> tuple[int, int]: ...

    async def aclose(self) -> None: ...


class MemoryQuotaStore:
    """One process's windows (the event loop serialises access, so no lock is needed)."""

    def __init__(self) -> None:
        self._windows: dict[str, Window] = {}

    def _window(self, target: str) -> Window:
        window = self._windows.get(target)
        if window is None:
            window = self._windows[target] = Window()
        return window

    async def reserve(self, target: str, id: str, tokens: int, limits: Limits) -> Decision:
        return self._window(target).reserve(id, tokens, limits, time.monotonic())

    async def settle(self, target: str, id: str, tokens: int) -> None:
        self._window(target).settle(id, tokens)

    async def remaining(self, target: str, limits: Limits) -> tuple[int, int]:
        return self._window(target).remaining(limits, time.monotonic())

    async def aclose(self) -> None:
        return None


class QuotaService:
    def __init__(self, store: QuotaStore) -> None:
        self.store = store

    async def reserve(self, target: str, tokens: int, limits: Limits) -> Decision:
        return await self.store.reserve(target, uuid.uuid4().hex, tokens, limits)

    async def settle(self, target: str, reservation: str, tokens: int) -> None:
        await self.store.settle(target, reservation, tokens)

    async def remaining(self, target: str, limits: Limits) -> tuple[int, int]:
        return await self.store.remaining(target, limits)


def rate_limit_headers(
    limits: Limits, remaining_tokens: int, remaining_requests: int
) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limits.requests_per_minute),
        "x-ratelimit-remaining-requests": str(remaining_requests),
        "x-ratelimit-limit-tokens": str(limits.tokens_per_minute),
        "x-ratelimit-remaining-tokens": str(remaining_tokens),
    }


def make_store(redis_url: str | None) -> QuotaStore:
    if redis_url:
        from lmfoundry.quotas.redis_store import RedisQuotaStore

        return RedisQuotaStore(redis_url)
    return MemoryQuotaStore()
