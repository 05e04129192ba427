"""The `echo` engine: answers with the last user message, word by word.

For tests and benchmarks of the gateway (auth, quotas, routing, metering) only; nothing that
claims a model answered may use it. Its tokens are Unicode code points of the rendered
prompt, so counts are exact and the engine can read the prompt back from the ids.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from lmfoundry.engines.base import Delta, GenerationRequest

ECHO_TEMPLATE_CONTEXT = 32768


class EchoTokenizer:
    context_length = ECHO_TEMPLATE_CONTEXT
    supports_tools = False

    def __init__(self, context_length: int | None = None) -> None:
        if context_length:
            self.context_length = context_length

    def render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        return "".join(f"<{m['role']}>{m.get('content') or ''}\n" for m in messages)

    def encode(self, text: str) -> list[int]:
        return [ord(ch) for ch in text]


_LAST_USER = re.compile(r"<user>(.*)\n", re.DOTALL)


class EchoEngine:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # seconds per token, to make requests take time in tests
        self.active = 0
        self.failure: str | None = None  # nothing runs beside the event loop to fail

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        prompt = "".join(chr(t) for t in request.prompt)
        users = [m for m in prompt.split("\n") if m.startswith("<user>")]
        text = users[-1][len("<user>") :] if users else ""
        words = re.findall(r"\S+\s*", text) or [""]
        params = request.params
        self.active += 1
        try:
            produced = ""
            for n, word in enumerate(words, start=1):
                if n > params.max_tokens:
                    yield Delta(text="", completion_tokens=n - 1, finish_reason="length")
                    return
                if self.delay:
                    await asyncio.sleep(self.delay)
                candidate = produced + word
                for stop in params.stop:
                    cut = candidate.find(stop)
                    if cut >= 0:
                        yield Delta(
                            text=candidate[len(produced) : cut],
                            completion_tokens=n,
                            finish_reason="stop",
                        )
                        return
                produced = candidate
                last = n == len(words)
                yield Delta(text=word, completion_tokens=n, finish_reason="stop" if last else None)
        finally:
            self.active -= 1

    def stats(self) -> dict[str, Any]:
        return {"active": self.active, "queued": 0}

    async def aclose(self) -> None:
        return None
