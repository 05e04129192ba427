"""The engine protocol: what an instance process runs, and what the gateway needs to admit
a request before any instance is touched.

Two halves:

* `Tokenizer` lives in the gateway. It renders the chat template and counts prompt tokens,
  so that the context check and the quota reservation use exact numbers and a bad request
  never wakes an instance. It is light (llama.cpp's vocab-only load for GGUF files).
* `Engine` lives in an instance process. It takes token ids and sampling parameters and
  yields text deltas; closing the iterator cancels the sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]
# One generated token's log probability in OpenAI's shape: `token`, `logprob`, `bytes` and
# `top_logprobs` (a list of the same three for the most likely tokens at that place).
TokenLogprob = dict[str, Any]


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    grammar: str | None = None  # GBNF, for response_format json_object / json_schema / tools
    n: int = 1  # choices generated from the one prompt (engines with the `choices` feature)
    logprobs: int | None = None  # None: none; K: each token's and the K most likely (`logprobs`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingParams:
        return cls(**data)


@dataclass
class GenerationRequest:
    prompt: list[int]
    params: SamplingParams
    request_id: str = ""
    adapter: str | None = None
    # Seconds the caller lets deltas gather before it takes them (0: each as it comes);
    # engines that stream over a socket (llama-server) read that much less often.
    delivery_interval: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "params": self.params.to_dict(),
            "request_id": self.request_id,
            "adapter": self.adapter,
            "delivery_interval": self.delivery_interval,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        return cls(
            prompt=list(data["prompt"]),
            params=SamplingParams.from_dict(data["params"]),
            request_id=data.get("request_id", ""),
            adapter=data.get("adapter"),
            delivery_interval=float(data.get("delivery_interval", 0.0)),
        )


@dataclass
class Delta:
    """New text of choice `index` since its last delta; `completion_tokens` counts all of
    that choice's tokens so far. `pieces`, when given, is `text` as the engine produced it,
    piece by piece (one per token that arrived together), for streams that send each as its
    own chunk. `logprobs` holds one entry per token of `text` when the request asked for
    them. A request with `n` choices ends when each has had a delta with a finish reason."""

    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None
    pieces: tuple[str, ...] = ()
    index: int = 0
    logprobs: list[TokenLogprob] | None = None

    def to_item(self) -> dict[str, Any]:
        """The delta as one line of the instance wire (worker, Ray replica)."""
        item: dict[str, Any] = {"text": self.text, "n": self.completion_tokens}
        if self.finish_reason:
            item["finish_reason"] = self.finish_reason
        if self.index:
            item["i"] = self.index
        if self.logprobs is not None:
            item["lp"] = self.logprobs
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Delta:
        return cls(
            text=item["text"],
            completion_tokens=item["n"],
            finish_reason=item.get("finish_reason"),
            index=int(item.get("i", 0)),
            logprobs=item.get("lp"),
        )


class Engine(Protocol):
    """Generates tokens in an instance process."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Yield deltas until a stop sequence, an end-of-generation token or max_tokens.

        Closing the iterator early (client gone) cancels the sequence and frees its cache.
        """
        ...

    def stats(self) -> dict[str, Any]:
        """Numbers for the health check: active sequences, queue length, memory."""
        ...

    @property
    def failure(self) -> str | None:
        """Why the engine can answer nothing more (its decode loop died), or None."""
        ...

    async def aclose(self) -> None: ...


class Tokenizer(Protocol):
    """Renders chat messages and counts tokens in the gateway."""

    context_length: int
    supports_tools: bool

    def render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str: ...

    def encode(self, text: str) -> list[int]: ...


class EngineError(Exception):
    """Raised by an engine for a request it cannot run (the gateway maps it to a 4xx)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class EngineDown(RuntimeError):
    """Raised to every request of an engine that can answer nothing more: its decode loop
    failed, or it was shut down. The instance reports itself failed and is restarted; the
    gateway answers 503 with Retry-After."""


def checked_prompt(request: GenerationRequest, limit: int, n_vocab: int, room: str) -> list[int]:
    """The request's prompt ids, or an `EngineError` for what an engine cannot run: an empty
    prompt, one that leaves no room for a generated token within `limit` (`room` says what
    holds it, with `{limit}` filled in), a `max_tokens` below 1, ids outside the vocabulary."""
    prompt = [int(t) for t in request.prompt]
    if not prompt:
        raise EngineError("The prompt is empty.", param="messages")
    if len(prompt) + 1 > limit:
        raise EngineError(
            f"The prompt is {len(prompt)} tokens long, but {room.format(limit=limit)} "
            "(prompt plus at least one generated token); shorten the messages.",
            param="messages",
        )
    if request.params.max_tokens < 1:
        raise EngineError("max_tokens must be at least 1.", param="max_tokens")
    if min(prompt) < 0 or max(prompt) >= n_vocab:
        raise EngineError(
            "The prompt contains token ids outside the model's vocabulary.", param="messages"
        )
    return prompt


class DecodeThread:
    """The lifecycle of an engine whose decode loop runs on a thread of its own (llamacpp,
    transformers, onnx). The subclass names itself in `engine_name`; sets `_thread`,
    `_cond`, `_incoming` (a list), `_live` (an empty set), `_closed`, `_stopping` and
    `_failure` (None); builds a sequence in `_submit` (with `.loop`, `.queue`, `.done` and
    `.cancelled`) and hands it over with `_enqueue`. Its loop exits when it sees `_stopping`
    and then calls `_shut_down`; if it raises, it calls `_died` with the exception.
    `_after_stop` frees what the loop held.

    `_live` holds every sequence whose consumer has not finished, whatever the loop knows of
    it, so that a loop that dies mid-step (its sequences half moved between its own lists,
    final deltas not yet delivered) still ends every one of them."""

    engine_name: str
    _thread: threading.Thread
    _cond: threading.Condition
    _incoming: list[Any]
    _live: set[Any]
    _closed: bool
    _stopping: bool
    _failure: BaseException | None

    def _submit(self, request: GenerationRequest) -> Any:
        raise NotImplementedError

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        async with aclosing(relay(self._submit(request), self._cond, self._live)) as deltas:
            async for delta in deltas:
                yield delta

    @property
    def failure(self) -> str | None:
        """Why the decode loop stopped for good, or None while it runs (the instance's
        health check reports it, and the instance then exits to be restarted)."""
        if self._failure is None:
            return None
        return f"the {self.engine_name} engine failed: {self._failure!r}"

    def _check_open(self) -> None:
        """Refuse a new request at once when the engine can no longer answer it."""
        if self._closed or self._stopping:
            raise EngineDown(f"the {self.engine_name} engine is closed")
        failure = self.failure
        if failure is not None:
            raise EngineDown(failure)

    def _enqueue(self, seq: Any) -> None:
        """Hand a new sequence to the decode thread (or refuse it: `EngineDown`)."""
        with self._cond:
            self._check_open()
            self._incoming.append(seq)
            self._live.add(seq)
            self._cond.notify()

    def _end_all(self, exc: BaseException) -> None:
        """End every live sequence with `exc` (from the decode thread, as its last act)."""
        with self._cond:
            seqs = list(self._live)
        for seq in seqs:
            seq.done = True
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody listens
                seq.loop.call_soon_threadsafe(seq.queue.put_nowait, exc)

    def _shut_down(self) -> None:
        """End the requests still there when the loop exits because the engine closes."""
        self._end_all(EngineDown(f"the {self.engine_name} engine was shut down"))

    def _died(self, exc: BaseException) -> None:
        """The decode loop raised: every queued and running request ends now with
        `EngineDown`, and every later one is refused, so that nobody waits on a thread that
        is gone."""
        log.error("%s decode loop failed", self.engine_name, exc_info=exc)
        with self._cond:  # a request enqueued after this is refused by `_check_open`
            self._failure = exc
        self._end_all(EngineDown(self.failure or "the engine failed"))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._stop_thread()
        await asyncio.to_thread(self._thread.join)
        self._after_stop()

    def close(self) -> None:
        """Synchronous `aclose` (scripts, benchmarks)."""
        if self._closed:
            return
        self._stop_thread()
        self._thread.join()
        self._after_stop()

    def _stop_thread(self) -> None:
        self._closed = True
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _after_stop(self) -> None:
        return None


async def relay(seq: Any, cond: threading.Condition, live: set[Any]) -> AsyncGenerator[Delta, None]:
    """The deltas a decode thread posts to `seq.queue`, up to the one with a finish reason
    (an exception posted instead is raised); then the sequence leaves `live`. If the
    consumer goes away first, the sequence is marked cancelled and the thread woken to drop
    it."""
    try:
        while True:
            item = await seq.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return
    finally:
        with cond:
            live.discard(seq)
            if not seq.done:
                seq.cancelled = True
                cond.notify()
