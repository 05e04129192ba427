"""The sliding-window arithmetic that quotas rest on."""

from __future__ import annotations

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
    assert refused.retry_after == WINDOW_SECONDS - 20.0  # when "a" leaves the window
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
    assert refused.retry_after == WINDOW_SECONDS - 5.0
    assert refused.retry_after_seconds == 55


def test_a_request_bigger_than_the_quota_is_never_admitted() -> None:
    assert not Window().reserve("a", 1001, LIMITS, now=0.0).allowed


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 400), st.integers(0, 400)),
        max_size=80,
    )
)
def test_no_sixty_second_window_admits_more_than_the_quota(
    events: list[tuple[float, int, int]],
) -> None:
    """Whatever the arrivals and settlements, the settled tokens admitted in any 60 s window
    stay within the limit, and a refusal's retry_after is really enough."""
    window = Window()
    now = 0.0
    admitted: list[tuple[float, int]] = []
    for step, (gap, cost, used) in enumerate(events):
        now += gap
        decision = window.reserve(str(step), cost, LIMITS, now)
        if decision.allowed:
            settled = min(used, cost)
            window.settle(str(step), settled)
            admitted.append((now, settled))
        elif cost <= LIMITS.tokens_per_minute:
            probe = Window()
            probe._entries = window._entries.copy()
            probe._tokens = window._tokens
            probe._by_id = dict(window._by_id)
            assert probe.reserve("probe", cost, LIMITS, now + decision.retry_after).allowed
    for start, _ in admitted:
        inside = [t for at, t in admitted if start <= at < start + WINDOW_SECONDS]
        assert sum(inside) <= LIMITS.tokens_per_minute
        assert len(inside) <= LIMITS.requests_per_minute
