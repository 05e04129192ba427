"""Per-target quotas: in-process by default, shared through Redis when configured."""

from __future__ import annotations

import time
import uuid
from typing import Protocol

from lmfoundry.quotas.window import WINDOW_SECONDS, Decision, Limits, Window

DEFAULT_TOKENS_PER_MINUTE = 200_000
DEFAULT_REQUESTS_PER_MINUTE = 1_000


class QuotaStore(Protocol):
    async def reserve(
        self, target: str, id: str, tokens: int, limits: Limits, claim: str = ""
    ) -> Decision: ...

    async def settle(self, target: str, id: str, tokens: int) -> None: ...

    async def remaining(self, target: str, limits: Limits) -> tuple[int, int]: ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached (readiness checks)."""
        ...

    async def aclose(self) -> None: ...


class MemoryQuotaStore:
    """One process's windows (the event loop serialises access, so no lock is needed)."""

    def __init__(self, window_seconds: float = WINDOW_SECONDS) -> None:
        self.window_seconds = window_seconds
        self._windows: dict[str, Window] = {}

    def _window(self, target: str) -> Window:
        window = self._windows.get(target)
        if window is None:
            window = self._windows[target] = Window(self.window_seconds)
        return window

    async def reserve(
        self, target: str, id: str, tokens: int, limits: Limits, claim: str = ""
    ) -> Decision:
        return self._window(target).reserve(id, tokens, limits, time.monotonic(), claim)

    async def settle(self, target: str, id: str, tokens: int) -> None:
        self._window(target).settle(id, tokens)

    async def remaining(self, target: str, limits: Limits) -> tuple[int, int]:
        return self._window(target).remaining(limits, time.monotonic())

    async def ping(self) -> None:
        return None  # this process's memory

    async def aclose(self) -> None:
        return None


class UnlimitedQuotaStore:
    """Quotas switched off (`LMFOUNDRY_QUOTAS_ENABLED=false`): everything is admitted."""

    async def reserve(
        self, target: str, id: str, tokens: int, limits: Limits, claim: str = ""
    ) -> Decision:
        return Decision(True, id, limits.tokens_per_minute, limits.requests_per_minute, 0.0)

    async def settle(self, target: str, id: str, tokens: int) -> None:
        return None

    async def remaining(self, target: str, limits: Limits) -> tuple[int, int]:
        return limits.tokens_per_minute, limits.requests_per_minute

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class QuotaService:
    def __init__(self, store: QuotaStore) -> None:
        self.store = store

    async def reserve(self, target: str, tokens: int, limits: Limits, claim: str = "") -> Decision:
        """`claim` identifies the caller's retry (key slot and cost), so a refused caller who
        comes back when told finds its place in line kept."""
        return await self.store.reserve(target, uuid.uuid4().hex, tokens, limits, claim)

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


def make_store(redis_url: str | None, enabled: bool = True) -> QuotaStore:
    if not enabled:
        return UnlimitedQuotaStore()
    if redis_url:
        from lmfoundry.quotas.redis_store import RedisQuotaStore

        return RedisQuotaStore(redis_url)
    return MemoryQuotaStore()
