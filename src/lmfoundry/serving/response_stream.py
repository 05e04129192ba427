"""A chat-completions stream as Responses API events.

The chat path streams `data: {chunk}` lines; a Responses stream is typed events, each with a
`sequence_number`, sent as OpenAI sends them (`event: <type>` then `data: {...}`) and with no
`[DONE]`: `response.created`, `response.in_progress`, then per output item
`response.output_item.added`, (`response.content_part.added`, `response.output_text.delta`...,
`response.output_text.done`, `response.content_part.done`) or
(`response.function_call_arguments.delta`, `.done`), `response.output_item.done`, and last
`response.completed` (or `response.incomplete` when max_output_tokens cut it short, or
`error` + `response.failed`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from lmfoundry.serving.response_items import call_item, message_item, new_id, response_object, usage


async def chat_chunks(stream: AsyncIterator[bytes]) -> AsyncGenerator[dict[str, Any]]:
    """The JSON objects of a data-only SSE byte stream, up to `[DONE]`."""
    buffer = b""
    async for data in stream:
        buffer += data
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            for line in raw.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return
                yield json.loads(payload)


def sse(event: dict[str, Any]) -> bytes:
    return (
        b"event: "
        + event["type"].encode()
        + b"\ndata: "
        + json.dumps(event, separators=(",", ":")).encode()
        + b"\n\n"
    )


class _Call:
    def __init__(self, item_id: str, output_index: int, call_id: str, name: str) -> None:
        self.item_id, self.output_index = item_id, output_index
        self.call: dict[str, Any] = {"id": call_id, "function": {"name": name, "arguments": ""}}


class ResponseEvents:
    """The events of one streamed response; `response` is the final Response object once
    `finish` (or `fail`) has built the last event."""

    def __init__(self, response_id: str, echo: dict[str, Any], model: str, created_at: int) -> None:
        self.id, self.echo, self.model, self.created_at = response_id, echo, model, created_at
        self.sequence = 0
        self._done: list[tuple[int, dict[str, Any]]] = []  # finished items, by output_index
        self.response: dict[str, Any] | None = None
        self._started = False
        self._text: tuple[str, int, list[str]] | None = None  # item id, index, parts
        self._calls: dict[int, _Call] = {}
        self._next_index = 0
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _snapshot(self, status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
        return response_object(
            self.id,
            self.echo,
            self.model,
            self.created_at,
            status,
            self.output,
            self._usage if status != "in_progress" else None,
            error,
        )

    @property
    def output(self) -> list[dict[str, Any]]:
        return [item for _, item in sorted(self._done, key=lambda pair: pair[0])]

    def start(self) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        return [
            self._event("response.created", response=self._snapshot("in_progress")),
            self._event("response.in_progress", response=self._snapshot("in_progress")),
        ]

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of one chat chunk."""
        self.model = chunk.get("model") or self.model
        events = self.start()
        if chunk.get("usage"):
            u = chunk["usage"]
            self._usage = usage(u["prompt_tokens"], u["completion_tokens"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text_delta(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call_delta(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def _text_delta(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self._text is None:
            item_id, index = new_id("msg"), self._take_index()
            self._text = (item_id, index, [])
            item = {**message_item(item_id, "", "in_progress"), "content": []}
            events.append(self._event("response.output_item.added", output_index=index, item=item))
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        item_id, index, parts = self._text
        parts.append(text)
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _call_delta(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        position = delta.get("index", 0)
        function = delta.get("function") or {}
        call = self._calls.get(position)
        if call is None:
            events += self._close_text()
            call = _Call(new_id("fc"), self._take_index(), delta["id"], function.get("name", ""))
            self._calls[position] = call
            item = call_item(call.item_id, call.call, "in_progress")
            events.append(
                self._event("response.output_item.added", output_index=call.output_index, item=item)
            )
        arguments = function.get("arguments")
        if arguments:
            call.call["function"]["arguments"] += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    delta=arguments,
                )
            )
        return events

    def _take_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        return index

    def _close_text(self, status: str = "completed") -> list[dict[str, Any]]:
        if self._text is None:
            return []
        item_id, index, parts = self._text
        self._text = None
        text = "".join(parts)
        item = message_item(item_id, text, status)
        self._done.append((index, item))
        part = item["content"][0]
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        return [
            self._event("response.output_text.done", **where, text=text, logprobs=[]),
            self._event("response.content_part.done", **where, part=part),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def finish(self) -> list[dict[str, Any]]:
        """The events that close the open items, and `response.completed` (or
        `response.incomplete`)."""
        events = self.start()
        status = "incomplete" if self._finish == "length" else "completed"
        if self._text is None and not self._calls:
            events += self._text_delta("")  # an empty answer is still a message
        events += self._close_text(status)
        for position in sorted(self._calls):
            call = self._calls.pop(position)
            item = call_item(call.item_id, call.call)
            self._done.append((call.output_index, item))
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    arguments=item["arguments"],
                    name=item["name"],
                )
            )
            events.append(
                self._event("response.output_item.done", output_index=call.output_index, item=item)
            )
        self.response = self._snapshot(status)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        events.append(self._event(kind, response=self.response))
        return events

    def fail(self, error: dict[str, Any]) -> list[dict[str, Any]]:
        """An `error` event and `response.failed` for an error the chat stream ended with."""
        events = self.start()
        detail = error.get("error", error)
        message = str(detail.get("message", "The model failed while answering."))
        self.response = self._snapshot("failed", {"code": "server_error", "message": message})
        events.append(
            self._event(
                "error", code=detail.get("code"), message=message, param=detail.get("param")
            )
        )
        events.append(self._event("response.failed", response=self.response))
        return events
