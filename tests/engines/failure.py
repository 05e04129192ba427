"""The check every engine with a decode thread must pass: when its decode loop raises, every
running and queued request ends at once with `EngineDown`, the engine reports the failure
(and so does its instance's health check), and a new request is refused at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from lmfoundry.engines.base import Delta, EngineDown, GenerationRequest
from lmfoundry.runtime.spec import InstanceSpec
from lmfoundry.runtime.worker import health

BOUND = 2.0  # seconds from the failure to the end of every request


async def _consume(engine: Any, request: GenerationRequest) -> Any:
    deltas: list[Delta] = []
    try:
        async for delta in engine.generate(request):
            deltas.append(delta)
    except EngineDown as exc:
        return exc
    return deltas


def fail_after(
    engine: Any, step: str, monkeypatch: pytest.MonkeyPatch, after: int = 3
) -> list[float]:
    """Make the method `step`, which the decode loop calls each iteration, run for real
    `after` times and then raise "injected decode failure"; returns the times of its calls."""
    original = getattr(engine, step)
    calls: list[float] = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        if len(calls) > after:
            raise RuntimeError("injected decode failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, step, failing)  # the decode thread looks it up each time
    return calls


async def check_decode_failure(
    engine: Any,
    step: str,
    requests: list[GenerationRequest],
    monkeypatch: pytest.MonkeyPatch,
    after: int = 3,
) -> None:
    """`requests` must outnumber the engine's batch (so that some queue) and be long enough
    not to finish within `after` steps; `step` names the method the decode loop calls each
    iteration, and its call number `after + 1` raises."""
    calls = fail_after(engine, step, monkeypatch, after)
    tasks = [asyncio.create_task(_consume(engine, r)) for r in requests]
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    ended_at = time.monotonic()
    assert len(calls) == after + 1, "the decode loop did not get to the failing step"
    assert ended_at - calls[-1] < BOUND
    assert all(isinstance(r, EngineDown) for r in results), results
    assert all("injected decode failure" in str(r) for r in results)

    assert engine.failure is not None and "injected decode failure" in engine.failure
    spec = InstanceSpec.make(engine.engine_name, "model", {})
    report = health(engine, spec, time.monotonic())
    assert report["status"] == "failed" and report["failure"] == engine.failure

    refused_at = time.monotonic()
    with pytest.raises(EngineDown, match="injected decode failure"):
        async for _ in engine.generate(requests[0]):
            pass
    assert time.monotonic() - refused_at < 0.5
