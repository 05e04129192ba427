"""The streamed-POST reader the gateway relays llama-server's answers with, against small
unix-socket servers that answer as llama-server does (chunked server-sent events), and as it
must not (a refusal, a cut connection, something that is not HTTP)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from lmfoundry.runtime.event_stream import EventStream, StreamBroken

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serving(tmp_path: Path, handler: Handler) -> AsyncIterator[str]:
    path = str(tmp_path / "s.sock")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path)
    async with server:
        yield path


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def streaming(events: list[bytes], gap: float = 0.0, end: bool = True) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for event in events:
            writer.write(chunk(event))
            await writer.drain()
            if gap:
                await asyncio.sleep(gap)
        if end:
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    return handler


async def collect(path: str, pace: float = 0.0) -> tuple[int, list[list[bytes]]]:
    async with EventStream(path, "/completion", b'{"prompt": [1]}') as stream:
        return stream.status, [batch async for batch in stream.batches(pace)]


async def test_events_split_across_and_within_chunks(tmp_path: Path) -> None:
    events = [
        b'data: {"content": "a"}\n\ndata: {"con',  # an event cut across two chunks
        b'tent": "b"}\n\n',
        b": a comment, no data\n\n",
        b"data: line one\ndata: line two\n\n",  # one event, two data lines
        b'data: {"content": "c", "stop": true}\r\n\r\n',  # CRLF line ends
    ]
    async with serving(tmp_path, streaming(events, gap=0.01)) as path:
        status, batches = await collect(path)
    assert status == 200
    data = [d for batch in batches for d in batch]
    assert data == [
        b'{"content": "a"}',
        b'{"content": "b"}',
        b"line one\nline two",
        b'{"content": "c", "stop": true}',
    ]


async def test_a_refusal_keeps_its_status_and_body(tmp_path: Path) -> None:
    body = json.dumps({"error": {"message": "the prompt is too long"}}).encode()

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()

    async with serving(tmp_path, refuse) as path, EventStream(path, "/completion", b"{}") as stream:
        assert stream.status == 400
        assert json.loads(stream.body)["error"]["message"] == "the prompt is too long"


async def test_a_cut_connection_is_a_broken_stream_after_what_arrived(tmp_path: Path) -> None:
    events = [b'data: {"content": "a"}\n\n']
    async with serving(tmp_path, streaming(events, end=False)) as path:
        seen: list[bytes] = []
        with pytest.raises(StreamBroken, match="closed the connection mid-answer"):
            async with EventStream(path, "/completion", b"{}") as stream:
                async for batch in stream.batches():
                    seen += batch
    assert seen == [b'{"content": "a"}']


async def test_not_http_and_no_server_are_broken_streams(tmp_path: Path) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async with serving(tmp_path, garbage) as path:
        with pytest.raises(StreamBroken, match="not an HTTP response"):
            await collect(path)
    with pytest.raises(StreamBroken, match="cannot connect"):
        await collect(str(tmp_path / "nobody.sock"))


async def test_pacing_gathers_fast_events_and_keeps_slow_ones_apart(tmp_path: Path) -> None:
    fast = [b'data: {"n": %d}\n\n' % i for i in range(30)]
    async with serving(tmp_path, streaming(fast, gap=0.005)) as path:
        _, unpaced = await collect(path)
        _, paced = await collect(path, pace=0.05)
    assert [d for b in paced for d in b] == [d for b in unpaced for d in b]  # nothing lost
    assert len(paced[0]) == 1  # the first event at once
    assert len(paced) < len(unpaced) / 3  # the rest gathered, about ten a read

    slow = [b'data: {"n": %d}\n\n' % i for i in range(4)]
    async with serving(tmp_path, streaming(slow, gap=0.1)) as path:
        _, batches = await collect(path, pace=0.03)
    assert [len(b) for b in batches] == [1, 1, 1, 1]  # slower than the pace: each at once


async def test_leaving_early_closes_the_connection(tmp_path: Path) -> None:
    closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(chunk(b"data: {}\n\n"))
                await writer.drain()
                await asyncio.sleep(0.01)
        except (ConnectionError, BrokenPipeError):
            closed.set()

    async with serving(tmp_path, endless) as path:
        async with EventStream(path, "/completion", b"{}") as stream:
            async for _ in stream.batches():
                break
        await asyncio.wait_for(closed.wait(), 5)
