"""The Responses API on top of the chat path: parse, continue the stored conversation, run
the request as chat completions (admission, quota and metering are the chat path's: one
usage record per response), answer as a Response object or its events, and store it.

The caller hands in `chat`, the chat path of the target the key opened (a serverless
deployment through the gateway, an online endpoint through its traffic split), so this
service never knows which of the two it runs on.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from lmfoundry.errors import LmfError
from lmfoundry.responses.models import DeletedResponse, InputItems, ResponseObject
from lmfoundry.responses.store import Owner, ResponseStore
from lmfoundry.serving.checks import Reply
from lmfoundry.serving.response_items import new_id, output_of, response_object, usage
from lmfoundry.serving.response_stream import ResponseEvents, chat_chunks, sse
from lmfoundry.serving.responses import ResponsesRequest

ChatCall = Callable[[bytes], Awaitable[Reply]]

# The chat path names its own parameters in errors; a Responses caller sent these instead.
_PARAMS = {
    "response_format.json_schema": "text.format.schema",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
    "messages": "input",
}
_WORDS = re.compile(r"\b(response_format\.json_schema|max_tokens|response_format|messages)\b")


class ResponsesService:
    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    async def create(self, owner: Owner, body: bytes, chat: ChatCall) -> Reply:
        request = ResponsesRequest.parse(body)
        history: list[dict[str, Any]] = []
        if request.previous_response_id:
            history = self.store.get(
                owner, request.previous_response_id, "previous_response_id"
            ).conversation
        inputs = request.input_items()
        chat_body = request.to_chat(history, inputs)
        if request.stored:
            self.store.check_room(owner, history + inputs)
        response_id, created = new_id("resp"), int(time.time())
        try:
            result = await chat(chat_body)
        except LmfError as exc:
            _rename(exc)
            raise
        if result.stream is not None:
            events = ResponseEvents(response_id, request.echo(), request.model or "", created)
            result.stream = self._stream(owner, request, result.stream, events, history, inputs)
            return result
        answer = result.body or {}
        output, status = output_of(answer)
        counts = answer["usage"]
        response = response_object(
            response_id,
            request.echo(),
            answer["model"],
            created,
            status,
            output,
            usage(counts["prompt_tokens"], counts["completion_tokens"]),
        )
        if request.stored:
            self.store.save(owner, response, inputs, history + inputs + output)
        return Reply(headers=result.headers, body=response)

    async def _stream(
        self,
        owner: Owner,
        request: ResponsesRequest,
        stream: AsyncIterator[bytes],
        events: ResponseEvents,
        history: list[dict[str, Any]],
        inputs: list[dict[str, Any]],
    ) -> AsyncIterator[bytes]:
        chunks = chat_chunks(stream)
        try:
            async for chunk in chunks:
                if "error" in chunk:
                    yield b"".join(sse(e) for e in events.fail(chunk))
                    return
                out = events.chunk(chunk)
                if out:
                    yield b"".join(sse(e) for e in out)
            last = events.finish()
            if request.stored and events.response is not None:
                # stored before the caller sees response.completed, so that a request it
                # sends at once with this previous_response_id finds it
                self.store.save(owner, events.response, inputs, history + inputs + events.output)
            yield b"".join(sse(e) for e in last)
        finally:
            await chunks.aclose()
            await stream.aclose()  # type: ignore[attr-defined]  # settles and meters

    def get(self, owner: Owner, response_id: str) -> ResponseObject:
        return ResponseObject.model_validate(self.store.get(owner, response_id).response)

    def input_items(self, owner: Owner, response_id: str) -> InputItems:
        items = [
            {"id": item.get("id") or new_id("item"), **item}
            for item in self.store.get(owner, response_id).input_items
        ]
        return InputItems(
            data=items,
            first_id=items[0]["id"] if items else None,
            last_id=items[-1]["id"] if items else None,
        )

    def delete(self, owner: Owner, response_id: str) -> DeletedResponse:
        self.store.delete(owner, response_id)
        return DeletedResponse(id=response_id)


def _rename(exc: LmfError) -> None:
    """The chat path's error in the Responses API's words (`max_output_tokens`, not
    `max_tokens`; `tools[0].name`, not `tools[0].function.name`)."""
    if exc.param:
        exc.param = _WORDS.sub(lambda m: _PARAMS[m.group(1)], exc.param)
        exc.param = exc.param.replace(".function.", ".")
    message = _WORDS.sub(lambda m: _PARAMS[m.group(1)], exc.message)
    exc.message = message.replace(".function.", ".")
    exc.args = (exc.message,)
