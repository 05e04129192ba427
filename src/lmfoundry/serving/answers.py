"""Answers: an engine's deltas as the wire's bodies and streams.

The gateway runs every API the same way (admit, generate, settle); what differs is how the
deltas of the request's choices become a response. Each API's request makes its `Answer`:
`body` for an answer in one piece, `stream` for server-sent events. Chat answers turn a
choice's text into `tool_calls` when the request offered tools (`serving.tools`).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Protocol

from lmfoundry.engines.base import Delta
from lmfoundry.serving.tools import ToolPlan


class Choice:
    """What one choice has generated so far."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.tokens = 0
        self.finish: str | None = None
        self.logprobs: list[dict[str, Any]] | None = None

    def add(self, delta: Delta) -> None:
        self.parts.append(delta.text)
        self.tokens = delta.completion_tokens
        if delta.finish_reason:
            self.finish = delta.finish_reason
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + delta.logprobs

    @property
    def text(self) -> str:
        return "".join(self.parts)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def event(body: dict[str, Any]) -> bytes:
    """One data-only server-sent event."""
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class Stream(Protocol):
    """The events of one streamed answer, in order: `start`, `delta` for each delta,
    `end` with the usage; then `DONE`."""

    def start(self) -> bytes: ...

    def delta(self, delta: Delta) -> bytes: ...

    def end(self, usage_: dict[str, int]) -> bytes: ...


class Answer(Protocol):
    def body(self, choices: list[Choice], usage_: dict[str, int]) -> dict[str, Any]: ...

    def stream(self) -> Stream: ...


# -- chat completions ------------------------------------------------------------------------


class ChatAnswer:
    """`chat.completion` bodies and `chat.completion.chunk` streams."""

    def __init__(
        self, model: str, n: int = 1, tools: ToolPlan | None = None, logprobs: bool = False
    ) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.model, self.n, self.tools, self.logprobs = model, n, tools, logprobs

    def body(self, choices: list[Choice], usage_: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [self._choice(i, c) for i, c in enumerate(choices)],
            "usage": usage_,
        }

    def _choice(self, index: int, choice: Choice) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": choice.text, "tool_calls": None}
        finish = choice.finish or "stop"
        calls = self.tools.parse(choice.text) if self.tools else None
        if calls:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [c.to_wire() for c in calls],
            }
            finish = "tool_calls"
        logprobs = {"content": choice.logprobs or []} if self.logprobs else None
        return {"index": index, "message": message, "finish_reason": finish, "logprobs": logprobs}

    def stream(self) -> ChatStream:
        return ChatStream(self)


class ChatStream:
    """A chat answer's chunks. A choice that may be a tool call is held back from its first
    `{` to its end and then sent as OpenAI streams calls (`delta.tool_calls` with `index`,
    `id` and the function's name, then its arguments); text is sent as it comes, and content
    chunks, which differ only in their text, are written around a template (one small
    `json.dumps` per token, not a whole chunk's)."""

    _MARK = "\x00"

    def __init__(self, answer: ChatAnswer) -> None:
        self.answer = answer
        self.created = int(time.time())
        self._templates: dict[int, tuple[bytes, bytes]] = {}
        self._held: dict[int, list[Delta]] = {}  # choices that may be tool calls
        self._decided: set[int] = set()
        self._finished: dict[int, str] = {}

    def chunk(
        self,
        index: int,
        delta: dict[str, Any],
        finish: str | None = None,
        usage_: dict[str, int] | None = None,
        logprobs: Any = None,
    ) -> bytes:
        body: dict[str, Any] = {
            "id": self.answer.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.answer.model,
            "choices": [
                {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
            ],
        }
        if usage_ is not None:
            body["usage"] = usage_
        return event(body)

    def content(self, index: int, text: str) -> bytes:
        template = self._templates.get(index)
        if template is None:
            whole = self.chunk(index, {"content": self._MARK})
            prefix, suffix = whole.split(json.dumps(self._MARK).encode())
            template = self._templates[index] = (prefix, suffix)
        return template[0] + json.dumps(text).encode() + template[1]

    def start(self) -> bytes:
        return b"".join(
            self.chunk(i, {"role": "assistant", "content": ""}) for i in range(self.answer.n)
        )

    def delta(self, delta: Delta) -> bytes:
        out = self._text(delta)
        if delta.finish_reason:
            out += self._finish(delta.index, delta.finish_reason)
        return out

    def _text(self, delta: Delta) -> bytes:
        index, tools = delta.index, self.answer.tools
        if tools is not None and index not in self._decided:
            held = self._held.setdefault(index, [])
            held.append(delta)
            text = "".join(d.text for d in held).lstrip()
            if not text:
                return b""
            self._decided.add(index)
            if tools.forced or text[0] in "{<":
                return b""  # held until the end: it may be a call
            del self._held[index]
            return self._released(index, held)
        if index in self._held:
            self._held[index].append(delta)
            return b""
        if not delta.text:
            return b""
        return self._content(index, delta.text, delta)

    def _content(self, index: int, text: str, delta: Delta) -> bytes:
        if self.answer.logprobs:
            return self.chunk(index, {"content": text}, logprobs={"content": delta.logprobs or []})
        if delta.pieces and text == delta.text:  # tokens that came together: a chunk each
            return b"".join(self.content(index, piece) for piece in delta.pieces)
        return self.content(index, text)

    def _released(self, index: int, held: list[Delta]) -> bytes:
        """Held deltas that turned out to be text, sent as one chunk."""
        text = "".join(d.text for d in held)
        if not text:
            return b""
        logprobs = [e for d in held for e in d.logprobs or ()]
        return self._content(index, text, Delta(text, 0, logprobs=logprobs))

    def _finish(self, index: int, reason: str) -> bytes:
        held = self._held.pop(index, None)
        out = b""
        if held is not None:
            text = "".join(d.text for d in held)
            calls = self.answer.tools.parse(text) if self.answer.tools else None
            if calls:
                for k, call in enumerate(calls):
                    head = {"index": k, "id": call.id, "type": "function",
                            "function": {"name": call.name, "arguments": ""}}  # fmt: skip
                    out += self.chunk(index, {"tool_calls": [head]})
                    args = {"index": k, "function": {"arguments": call.arguments}}
                    out += self.chunk(index, {"tool_calls": [args]})
                reason = "tool_calls"
            else:
                out += self._released(index, held)
        self._finished[index] = reason
        return out

    def end(self, usage_: dict[str, int]) -> bytes:
        """The finish reasons, the last one carrying the usage (the azure-ai-inference client
        wants a choice in every chunk)."""
        indexes = sorted(self._finished) or [0]
        out = b""
        for i in indexes:
            last = i == indexes[-1]
            out += self.chunk(i, {}, self._finished.get(i, "stop"), usage_ if last else None)
        return out
