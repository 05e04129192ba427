"""The sliding-window arithmetic that quotas rest on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfoundry.quotas.window import WINDOW_SECONDS, Limits, Window

LIMITS = Limits(tokens_per_minute=1000, requests_per_minute=5)


def test_admits_until_tokens_run_out_then_says_when() -> None:
    window = Window()
    assert window.reserve("a", 600, LIMITS, now=0.0).allowed
    assert window.reserve("b", 300, LIMITS, now=10.0).allowed
    refused = window.reserve("c", 200, LIMITS, now=20.0)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(WINDOW_SECONDS - 20.0)  # when "a" leaves
    assert refused.remaining_tokens == 100
    assert window.reserve("c", 200, LIMITS, now=0.0 + WINDOW_SECONDS).allowed


def test_settling_returns_unused_tokens() -> None:
    window = Window()
    assert window.reserve("a", 900, LIMITS, now=0.0).allowed
    assert not window.reserve("b", 500, LIMITS, now=1.0).allowed
    window.settle("a", 120)  # the request used far less than it reserved
    assert window.reserve("b", 500, LIMITS, now=2.0).allowed
    window.settle("b", 10_000)  # never more than reserved
    assert window.remaining(LIMITS, now=3.0)[0] == 1000 - 120 - 500


def test_requests_per_minute() -> None:
    window = Window()
    for i in range(5):
        assert window.reserve(str(i), 1, LIMITS, now=float(i)).allowed
    refused = window.reserve("x", 1, LIMITS, now=5.0)
    assert not refused.allowed and refused.remaining_requests == 0
    assert refused.retry_after == pytest.approx(WINDOW_SECONDS - 5.0)
    assert refused.retry_after_seconds == 55


def test_a_request_bigger_than_the_quota_is_never_admitted() -> None:
    assert not Window().reserve("a", 1001, LIMITS, now=0.0).allowed


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 8),
    st.lists(
        st.tuples(st.integers(1, 400), st.integers(0, 400), st.floats(0, 3, allow_nan=False)),
        min_size=1,
        max_size=60,
    ),
    st.booleans(),
    st.booleans(),
)
def test_fair_retries_and_no_window_over_the_quota(
    clients: int, requests: list[tuple[int, int, float]], shared_claim: bool, whole_seconds: bool
) -> None:
    """Clients send requests as fast as they can, each waiting Retry-After when refused
    (exactly, or rounded up to whole seconds as the header says): every retry is admitted,
    and no 60 s window admits more than the quota. Clients whose requests are identical
    (one key, the same body) cannot be told apart, so there only the quota is checked."""
    window = Window()

    def claim(client: int, cost: int) -> str:
        return f"primary:{cost}" if shared_claim else str(client)

    ready = [0.0] * clients  # when each client sends next
    queue = list(enumerate(requests))
    waiting: dict[int, tuple[int, int, int, float]] = {}  # client -> (request, cost, used, at)
    admitted: list[tuple[float, int]] = []
    while queue or waiting:
        client = min(range(clients), key=lambda c: ready[c])
        now = ready[client]
        if client in waiting:
            index, cost, used, _ = waiting.pop(client)
            decision = window.reserve(str(index), cost, LIMITS, now, claim=claim(client, cost))
            if not shared_claim:
                assert decision.allowed, "a retry after Retry-After must succeed"
            elif not decision.allowed:  # an identical caller took its place: wait again
                wait = decision.retry_after_seconds if whole_seconds else decision.retry_after
                waiting[client] = (index, cost, used, now + wait)
                ready[client] = now + wait
                continue
        elif queue:
            index, (cost, used, think) = queue.pop(0)
            decision = window.reserve(str(index), cost, LIMITS, now, claim=claim(client, cost))
            if not decision.allowed:
                wait = decision.retry_after_seconds if whole_seconds else decision.retry_after
                waiting[client] = (index, cost, used, now + wait)
                ready[client] = now + wait
                continue
            now += think
        else:
            ready[client] = float("inf")
            continue
        window.settle(str(index), min(used, cost))
        admitted.append((ready[client], min(used, cost)))
        ready[client] = now + 0.001
    for start, _ in admitted:
        inside = [t for at, t in admitted if start <= at < start + WINDOW_SECONDS]
        assert sum(inside) <= LIMITS.tokens_per_minute
        assert len(inside) <= LIMITS.requests_per_minute
