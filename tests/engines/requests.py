"""One request run to its end on an engine, as the engine tests make it."""

from __future__ import annotations

import asyncio
from typing import Any

from lmfoundry.engines.base import Delta, Engine, GenerationRequest, SamplingParams


async def run(engine: Engine, prompt: list[int], **params: Any) -> tuple[str, Delta]:
    """The text and the last delta of a greedy request (24 tokens unless `params` say
    otherwise); every delta but the last has no finish reason, and the last has one."""
    params.setdefault("max_tokens", 24)
    params.setdefault("temperature", 0.0)
    request = GenerationRequest(prompt=prompt, params=SamplingParams(**params))
    parts: list[str] = []
    last: Delta | None = None
    async with asyncio.timeout(60):  # a hung engine fails here, not at pytest's timeout
        async for delta in engine.generate(request):
            assert last is None or last.finish_reason is None
            parts.append(delta.text)
            last = delta
    assert last is not None and last.finish_reason is not None
    return "".join(parts), last
