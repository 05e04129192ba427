"""Sliding-window quota arithmetic with reservations that settle later, and fair retries.

Written here rather than taken from `limits`: its moving window can add cost but never take
it back, and a quota that bills the real token count must settle a reservation
(`prompt_tokens + max_tokens`) down to what the request used, and release all of it when a
request fails.

Each window is a time-ordered log of admissions; a request is admitted when the log of the
last 60 seconds plus its reservation stays within both limits, so no 60-second window ever
admits more than the quota.

A refused request gets a *promise*: a place in the log at the earliest time the quota can
take it after every earlier promise, and `Retry-After` says when that is. Until the promise
is claimed (by the same caller's retry: same key slot and same cost) or expires, newcomers
queue behind it, so a client that waits as told is admitted on its retry instead of losing
the freed capacity to whoever asked last.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

WINDOW_SECONDS = 60.0
PROMISE_GRACE_SECONDS = 5.0  # how long a promise waits for its caller to come back
CLAIM_SLACK_SECONDS = 1.5
EPSILON = 1e-6  # added to waits so `now + retry_after` is never a hair early (float rounding)


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
        return max(1, math.ceil(self.retry_after - 2 * EPSILON))


class _Entry:
    __slots__ = ("at", "claim", "expires", "id", "tokens")

    def __init__(
        self, id: str, at: float, tokens: int, claim: str = "", expires: float = 0.0
    ) -> None:
        self.id = id
        self.at = at
        self.tokens = tokens
        self.claim = claim
        self.expires = expires


class Window:
    """One target's admissions in the last minute, and the promises made to refused callers."""

    def __init__(self, seconds: float = WINDOW_SECONDS) -> None:
        self.seconds = seconds  # 60 in production; tests shorten it
        # How late a promised caller may claim without crowding the next promise: Retry-After
        # is rounded up to whole seconds, so up to 1 s, plus the network.
        self.claim_slack = min(CLAIM_SLACK_SECONDS, seconds / 10)
        self._entries: deque[_Entry] = deque()
        self._by_id: dict[str, _Entry] = {}
        self._tokens = 0
        self._promises: deque[_Entry] = deque()

    def _prune(self, now: float) -> None:
        horizon = now - self.seconds
        while self._entries and self._entries[0].at <= horizon:
            entry = self._entries.popleft()
            self._tokens -= entry.tokens
            self._by_id.pop(entry.id, None)
        if self._promises and any(p.expires < now for p in self._promises):
            self._promises = deque(p for p in self._promises if p.expires >= now)

    def reserve(
        self, id: str, tokens: int, limits: Limits, now: float, claim: str = ""
    ) -> Decision:
        """Admit `tokens` now, or refuse with the time the caller should come back."""
        self._prune(now)
        mine = self._due_promise(claim, now)
        if self._fits(tokens, limits) and self._promises_hold(tokens, limits, now, mine):
            if mine is not None:
                self._promises.remove(mine)
            return self._admit(id, tokens, limits, now)
        if mine is not None:
            # Its time has come but a limit was lowered meanwhile: keep the place in line.
            return self._refuse(1.0, limits, self._reason(tokens, limits))
        # A caller back early gets a new place; its old one expires unclaimed. (Callers with
        # the same key and cost share a claim, so an early caller cannot be told apart from
        # another one that is waiting its turn.)
        return self._promise(id, tokens, limits, now, claim)

    def _due_promise(self, claim: str, now: float) -> _Entry | None:
        """A promise whose time has come, for this claim (the same key slot and cost: such
        callers are interchangeable)."""
        for promise in self._promises:
            if promise.at > now + 2 * EPSILON:
                return None
            if promise.claim == claim:
                return promise
        return None

    def _promises_hold(
        self, tokens: int, limits: Limits, now: float, claimed: _Entry | None
    ) -> bool:
        """Whether admitting `tokens` now still leaves room for every other promise at its
        time (capacity freed early by settlements goes to newcomers only if it is spare)."""
        for promise in self._promises:
            if promise is claimed:
                continue
            at = max(promise.at, now)
            if at >= now + self.seconds:
                break  # this and later promises' windows start after `now` leaves
            low = at - self.seconds
            count, used = 1, tokens  # the request being admitted
            for entry in self._entries:
                if entry.at > low:
                    count += 1
                    used += entry.tokens
            for other in self._promises:
                if other is not claimed and low < other.at <= at:
                    count += 1
                    used += other.tokens
            if count > limits.requests_per_minute or used > limits.tokens_per_minute:
                return False
        return True

    def _fits(self, tokens: int, limits: Limits) -> bool:
        return (
            len(self._entries) + 1 <= limits.requests_per_minute
            and self._tokens + tokens <= limits.tokens_per_minute
        )

    def _admit(self, id: str, tokens: int, limits: Limits, now: float) -> Decision:
        entry = _Entry(id, now, tokens)
        self._entries.append(entry)
        self._by_id[id] = entry
        self._tokens += tokens
        return Decision(
            True,
            id,
            self._remaining_tokens(limits),
            max(0, limits.requests_per_minute - len(self._entries)),
            0.0,
        )

    def _promise(self, id: str, tokens: int, limits: Limits, now: float, claim: str) -> Decision:
        reason = self._reason(tokens, limits)
        if tokens > limits.tokens_per_minute:
            # Never admissible; callers reject such requests with a 400 before asking.
            return self._refuse(self.seconds, limits, reason)
        # The log (admissions, then promises) only ever loses its oldest items as time
        # passes, so the earliest time is when enough of the oldest have left the window.
        log = [*self._entries, *self._promises]
        total = sum(e.tokens for e in log)
        need_requests = len(log) + 1 - limits.requests_per_minute
        at = self._promises[-1].at if self._promises else now
        freed = 0
        for k, entry in enumerate(log, start=1):
            if k - 1 >= need_requests and total - freed + tokens <= limits.tokens_per_minute:
                break
            freed += entry.tokens
            # A promised caller may come back a little late and so stay in the log longer.
            slack = self.claim_slack if k > len(self._entries) else EPSILON
            at = max(at, entry.at + self.seconds + slack)
        self._promises.append(_Entry(id, at, tokens, claim, at + PROMISE_GRACE_SECONDS))
        return self._refuse(max(at - now, 0.001), limits, reason)

    def _reason(self, tokens: int, limits: Limits) -> str:
        if len(self._entries) + 1 > limits.requests_per_minute:
            return f"{limits.requests_per_minute} requests per minute"
        if self._tokens + tokens > limits.tokens_per_minute:
            return f"{limits.tokens_per_minute} tokens per minute"
        return "requests waiting ahead of this one"

    def _refuse(self, wait: float, limits: Limits, reason: str) -> Decision:
        return Decision(
            False,
            None,
            self._remaining_tokens(limits),
            max(0, limits.requests_per_minute - len(self._entries)),
            wait,
            reason,
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
