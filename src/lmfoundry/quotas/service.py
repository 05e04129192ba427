"""Per-target quotas: in-process by default, shared through Redis when configured.

A target's quota has two windows. Requests per minute are counted first, before a prompt is
rendered or a token counted, so a flood of huge prompts costs little; then the request's
`prompt_tokens + max_tokens` are reserved against tokens per minute and settled to what it
used when it ends. A refusal is an `OverQuota` (429) with `Retry-After` and the
`x-ratelimit-*` headers.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Protocol

from lmfoundry.errors import RateLimited
from lmfoundry.quotas.window import WINDOW_SECONDS, Decision, Limits, Window

DEFAULT_TOKENS_PER_MINUTE = 200_000
DEFAULT_REQUESTS_PER_MINUTE = 1_000
UNLIMITED = 2**31 - 1


@dataclass(frozen=True)
class Quota:
    """One target's quota: the key its windows are kept under, its name for messages, and
    its limits."""

    key: str  # "serverless:3", "endpoint:7"
    name: str
    limits: Limits

    @property
    def requests_key(self) -> str:
        """The window of generating requests, counted before any rendering."""
        return f"{self.key}:requests"


@dataclass(frozen=True)
class Grant:
    """A reservation that was admitted, and the headers that report what is left."""

    reservation: str
    remaining_tokens: int
    remaining_requests: int
    headers: dict[str, str]


class OverQuota(RateLimited):
    """A 429 from a target's quota; `limit` names the window that refused (`tokens` or
    `requests`), for /metrics."""

    def __init__(
        self, quota: Quota, decision: Decision, headers: dict[str, str], limit: str
    ) -> None:
        seconds = decision.retry_after_seconds
        super().__init__(
            f"{quota.name!r} is over its quota of {decision.reason}; retry after {seconds} s "
            "or raise the deployment's quota.",
            headers={
                **headers,
                "Retry-After": str(seconds),
                "retry-after-ms": str(int(decision.retry_after * 1000) + 1),
            },
        )
        self.limit = limit


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

    # -- a target's windows ------------------------------------------------------------------

    async def count_request(self, quota: Quota, claim: str = "") -> int:
        """Count one generating request against requests/min; the requests left, or
        `OverQuota`. `claim` names the caller's retry (same key, same body), so a refused
        caller who comes back when told keeps its place in line."""
        limits = Limits(UNLIMITED, quota.limits.requests_per_minute)
        decision = await self.reserve(quota.requests_key, 0, limits, claim)
        if not decision.allowed:
            raise OverQuota(quota, decision, {}, "requests")
        return decision.remaining_requests

    async def reserve_tokens(
        self, quota: Quota, tokens: int, claim: str = "", counted: int | None = None
    ) -> Grant:
        """Reserve `tokens` against tokens/min after `count_request` (which left `counted`
        requests). Without `counted` the one window counts the request too (embeddings)."""
        if counted is None:
            limits = quota.limits
        else:
            limits = Limits(quota.limits.tokens_per_minute, UNLIMITED)
        decision = await self.reserve(quota.key, tokens, limits, claim)
        requests = decision.remaining_requests if counted is None else counted
        requests = min(requests, decision.remaining_requests)
        headers = rate_limit_headers(quota.limits, decision.remaining_tokens, requests)
        if not decision.allowed:
            # one window counting both names the limit that refused in its reason
            refused = "requests" if "requests per minute" in decision.reason else "tokens"
            raise OverQuota(quota, decision, headers, refused)
        return Grant(decision.reservation or "", decision.remaining_tokens, requests, headers)

    async def settle_tokens(self, quota: Quota, reservation: str, used: int) -> None:
        """Settle a reservation to the tokens the request used (0 frees all of it)."""
        if reservation:
            await self.settle(quota.key, reservation, used)

    async def headers(self, quota: Quota) -> dict[str, str]:
        """The `x-ratelimit-*` headers of what the target has left now."""
        tokens, requests = await self.remaining(quota.key, quota.limits)
        _, counted = await self.remaining(quota.requests_key, quota.limits)
        return rate_limit_headers(quota.limits, tokens, min(requests, counted))

    @staticmethod
    def unlimited(quota: Quota) -> Grant:
        """What a mirrored copy gets: it is not the caller's request, so not its quota."""
        limits = quota.limits
        headers = rate_limit_headers(limits, limits.tokens_per_minute, limits.requests_per_minute)
        return Grant("", limits.tokens_per_minute, limits.requests_per_minute, headers)


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
