"""One streamed HTTP/1.1 POST over a unix socket, read as server-sent events.

The gateway relays every token of every GGUF answer through this, so its cost per event is
the relay's cost per token. httpx (which the rest of the project uses) reads a streamed
body through httpcore, h11 and anyio: a cancel scope, a pure-Python parse and six generator
layers per read, about 0.6 ms of CPU per token on two cores, which llama-server's decoding
threads then wait for. Here the bytes go from the event loop's `data_received` into
httptools (the C HTTP parser uvicorn uses) and out as whole events, with nothing between.
It does one thing: a POST with a JSON body, one response, no keep-alive, no redirects, no
TLS; anything else is httpx's.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import httptools

MAX_EVENT_BYTES = 1 << 20  # a server-sent event longer than this is a broken stream
MAX_ERROR_BYTES = 1 << 16  # the body kept of a refusal


def _data(event: bytes) -> bytes | None:
    """An event's data (its `data:` lines joined), None for one without (a comment)."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line[:5] == b"data:"]
    return b"\n".join(lines) if lines else None


class StreamBroken(Exception):
    """The connection failed, closed early, or carried something that is not HTTP/SSE."""


class _Response(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.error: BaseException | None = None
        self.events: collections.deque[bytes] = collections.deque()
        self.pending = b""  # the start of an event whose end has not arrived
        self.body = bytearray()  # a non-200 answer's body
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(StreamBroken(f"not an HTTP response: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.complete and self.error is None:
            reason = f": {exc}" if exc else ""
            self.error = StreamBroken(f"the server closed the connection mid-answer{reason}")
        self._wake()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.error is not None:
            return
        if self.status != 200:
            if len(self.body) < MAX_ERROR_BYTES:
                self.body += body[: MAX_ERROR_BYTES - len(self.body)]
            return
        data = self.pending + body if self.pending else body
        *whole, self.pending = data.replace(b"\r\n", b"\n").split(b"\n\n")
        if len(self.pending) > MAX_EVENT_BYTES:
            self._fail(StreamBroken(f"an event over {MAX_EVENT_BYTES} bytes"))
            return
        if whole:
            self.events.extend(whole)
            self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        if self.pending.strip():
            self.events.append(self.pending)
            self.pending = b""
        self._wake()

    # -- helpers -----------------------------------------------------------------------------

    @property
    def streaming(self) -> bool:
        """More may come: the answer has neither ended nor failed."""
        return not self.complete and self.error is None

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class EventStream:
    """`async with EventStream(socket, "/completion", body) as stream:` then `stream.status`
    (and `stream.body` when it is not 200) or `async for batch in stream.batches():` the
    `data:` payloads of the events. Leaving the block closes the connection: a server that
    stops work for a vanished client (llama-server does) stops it."""

    def __init__(self, socket: str, path: str, body: bytes, connect_timeout: float = 5.0) -> None:
        self.socket = socket
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close"
            "\r\n\r\n"
        ).encode() + body
        self.connect_timeout = connect_timeout
        self._response: _Response | None = None

    async def __aenter__(self) -> EventStream:
        loop = asyncio.get_running_loop()
        try:
            transport, response = await asyncio.wait_for(
                loop.create_unix_connection(_Response, self.socket), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise StreamBroken(f"cannot connect to {self.socket}: {exc}") from exc
        self._response = response
        try:
            transport.write(self.request)
            while not response.headers_done and response.error is None:
                await response.wait()
            if response.error is not None:
                raise response.error
            if response.status != 200:
                while not response.complete and response.error is None:
                    await response.wait()
        except BaseException:
            transport.close()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._response is not None and self._response.transport is not None:
            self._response.transport.close()

    @property
    def status(self) -> int:
        return self._response.status if self._response else 0

    @property
    def body(self) -> bytes:
        return bytes(self._response.body) if self._response else b""

    async def batches(self, pace: float = 0.0) -> AsyncIterator[list[bytes]]:
        """The `data:` payloads of the events, in lists of those that arrived together.

        With `pace` (seconds), once events come sooner than `pace` after one another, the
        socket is left unread for `pace` after each list: what arrives meanwhile costs one
        wake-up and one read, not one each. The first event comes at once, and when events
        slow down below that pace each comes at once again."""
        response = self._response
        assert response is not None and response.transport is not None, "use `async with`"
        loop = asyncio.get_running_loop()
        events = response.events
        last = -1e9  # when the previous list was taken
        fast = False  # events come sooner than `pace`: gather them
        while True:
            if not events and response.streaming:
                if fast:
                    response.transport.pause_reading()
                    await asyncio.sleep(max(0.0, last + pace - loop.time()))
                    response.transport.resume_reading()
                    await asyncio.sleep(0)  # the loop reads what gathered
                    fast = bool(events)
                if not events and response.streaming:
                    await response.wait()
                    fast = pace > 0 and loop.time() - last < pace
            if events:
                batch = [data for data in map(_data, events) if data is not None]
                events.clear()
                last = loop.time()
                if batch:
                    yield batch
                continue
            if response.error is not None:
                raise response.error
            if response.complete:
                return
