"""Sliding-window quota arithmetic with reservations that settle later.

Written here rather than taken from `limits`: its moving window can add cost but never take
it back, and a quota that bills the real token count must settle a reservation
(`prompt_tokens + max_tokens`) down to what the request used, and release all of it when a
request fails. Each window is a time-ordered log of admissions; an admission is allowed when
the log of the last 60 seconds plus the new reservation stays within both limits, so no
60-second window ever admits more than the quota.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Limits:
    tokens_per_minute: int
    requests_per_minute: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reservation: str | None
    remaining_tokens: int
    remaining_requests: int
    retry_after: float  # seconds until the same request would be admitted; 0 when allowed
    reason: str = ""

    @property
    def retry_after_seconds(self) -> int:
        return max(1, math.ceil(self.retry_after))


class _Entry:
    __slots__ = ("at", "id", "tokens")

    def __init__(self, id: str, at: float, tokens: int) -> None:
        self.id = id
        self.at = at
        self.tokens = tokens


class Window:
    """One target's admissions in the last minute."""

    def __init__(self) -> None:
        self._entries: deque[_Entry] = deque()
        self._by_id: dict[str, _Entry] = {}
        self._tokens = 0

    def _prune(self, now: float) -> None:
        horizon = now - WINDOW_SECONDS + 1e-6  # so `now + retry_after` is never a hair early
        while self._entries and self._entries[0].at <= horizon:
            entry = self._entries.popleft()
            self._tokens -= entry.tokens
            self._by_id.pop(entry.id, None)

    def reserve(self, id: str, tokens: int, limits: Limits, now: float) -> Decision:
        self._prune(now)
        used_requests = len(self._entries)
        wait = 0.0
        reason = ""
        if used_requests + 1 > limits.requests_per_minute:
            wait = (
                self._entries[used_requests - limits.requests_per_minute].at + WINDOW_SECONDS - now
            )
            reason = f"{limits.requests_per_minute} requests per minute"
        if tokens > limits.tokens_per_minute:
            # Never admissible; callers reject such requests with a 400 before asking.
            wait, reason = WINDOW_SECONDS, f"{limits.tokens_per_minute} tokens per minute"
        elif self._tokens + tokens > limits.tokens_per_minute:
            excess = self._tokens + tokens - limits.tokens_per_minute
            freed = 0
            for entry in self._entries:
                freed += entry.tokens
                if freed >= excess:
                    token_wait = entry.at + WINDOW_SECONDS - now
                    if token_wait > wait:
                        wait = token_wait
                        reason = f"{limits.tokens_per_minute} tokens per minute"
                    break
        if wait > 0 or reason:
            return Decision(
                False,
                None,
                self._remaining_tokens(limits),
                max(0, limits.requests_per_minute - used_requests),
                max(wait, 0.001),
                reason,
            )
        entry = _Entry(id, now, tokens)
        self._entries.append(entry)
        self._by_id[id] = entry
        self._tokens += tokens
        return Decision(
            True,
            id,
            self._remaining_tokens(limits),
            max(0, limits.requests_per_minute - used_requests - 1),
            0.0,
        )

    def settle(self, id: str, tokens: int) -> None:
        """Set a reservation to the tokens really used (never more than reserved)."""
        entry = self._by_id.get(id)
        if entry is None:
            return  # already out of the window
        tokens = max(0, min(tokens, entry.tokens))
        self._tokens += tokens - entry.tokens
        entry.tokens = tokens

    def remaining(self, limits: Limits, now: float) -> tuple[int, int]:
        self._prune(now)
        return (
            self._remaining_tokens(limits),
            max(0, limits.requests_per_minute - len(self._entries)),
        )

    def _remaining_tokens(self, limits: Limits) -> int:
        return max(0, limits.tokens_per_minute - self._tokens)
