"""The gateway-to-instance wire (`runtime.client` and `runtime.worker`), against a real
instance process running the echo engine: answers, reused connections, a refused request,
a closed stream cancelling its sequence, a graceful stop, and a killed instance."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lmfoundry.engines.base import GenerationRequest, SamplingParams
from lmfoundry.errors import EngineFailed
from lmfoundry.runtime.client import InstanceClient, InstanceLost
from lmfoundry.runtime.spec import InstanceSpec


def prompt(text: str) -> list[int]:
    return [ord(ch) for ch in f"<user>{text}\n"]  # the echo tokenizer's ids


def request(text: str, max_tokens: int = 64) -> GenerationRequest:
    return GenerationRequest(prompt=prompt(text), params=SamplingParams(max_tokens=max_tokens))


@pytest.fixture
async def instance(tmp_path: Path) -> AsyncIterator[tuple[InstanceClient, subprocess.Popen]]:
    socket = tmp_path / "echo.sock"
    spec = InstanceSpec.make("echo", "echo", {"delay": 0.05})
    command = ["-m", "lmfoundry.runtime.worker", "--socket", str(socket), "--spec", spec.to_json()]
    process = subprocess.Popen([sys.executable, *command])
    client = InstanceClient(str(socket))
    deadline = time.monotonic() + 30
    while True:
        try:
            await client.health(timeout=1)
            break
        except InstanceLost:
            assert time.monotonic() < deadline and process.poll() is None
            await asyncio.sleep(0.05)
    yield client, process
    await client.aclose()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0  # a graceful stop


async def test_answers_and_reuses_its_connection(instance: tuple) -> None:
    client, process = instance
    deltas = [d async for d in client.generate(request("one two three"))]
    assert "".join(d.text for d in deltas) == "one two three"
    assert [d.completion_tokens for d in deltas] == [1, 2, 3]
    assert deltas[-1].finish_reason == "stop" and all(d.finish_reason is None for d in deltas[:-1])
    assert len(client._idle) == 1  # the connection went back to the pool...
    reused = client._idle[0]
    deltas = [d async for d in client.generate(request("four five", max_tokens=1))]
    assert [(d.text, d.finish_reason) for d in deltas] == [("four ", None), ("", "length")]
    assert client._idle == [reused]  # ...and the next request took it

    health = await client.health()
    assert health["pid"] == process.pid and health["engine"] == "echo"


async def test_concurrent_requests_each_get_their_own_answer(instance: tuple) -> None:
    client, _ = instance

    async def one(n: int) -> str:
        return "".join([d.text async for d in client.generate(request(f"request {n} here"))])

    answers = await asyncio.gather(*(one(n) for n in range(12)))
    assert answers == [f"request {n} here" for n in range(12)]


async def test_closing_the_stream_cancels_the_sequence_in_the_instance(instance: tuple) -> None:
    client, _ = instance
    stream = client.generate(request(" ".join(["word"] * 200)))  # 10 s at 0.05 s a word
    async for delta in stream:
        assert delta.text == "word "
        break
    assert (await client.health())["active"] == 1
    await stream.aclose()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while (await client.health())["active"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (await client.health())["active"] == 0


async def test_a_bad_request_is_refused_and_the_instance_keeps_serving(instance: tuple) -> None:
    client, _ = instance

    class Broken(GenerationRequest):
        def to_dict(self) -> dict:
            return {"prompt": [65], "params": {"no_such_parameter": 1}}

    with pytest.raises(EngineFailed, match="refused the request: bad generate request"):
        async for _ in client.generate(Broken(prompt=[], params=SamplingParams(max_tokens=1))):
            pass
    assert "".join([d.text async for d in client.generate(request("still here"))]) == "still here"


async def test_a_killed_instance_is_reported_as_lost(instance: tuple) -> None:
    client, process = instance
    stream = client.generate(request(" ".join(["word"] * 200)))
    async for _ in stream:
        break
    os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(InstanceLost):
        async for _ in stream:
            pass
    process.wait(timeout=10)
    with pytest.raises(InstanceLost):
        await client.health(timeout=1)


async def test_a_stop_finishes_the_answer_in_flight_and_waits_for_no_idle_connection(
    instance: tuple,
) -> None:
    client, process = instance
    idle = InstanceClient(client.socket)  # a second gateway: one pooled connection, idle
    assert (await idle.health())["active"] == 0
    assert len(idle._idle) == 1

    stream = client.generate(request("one two three four five six seven eight"))  # 0.4 s
    words = [(await anext(stream)).text]
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    words += [d.text async for d in stream]
    assert "".join(words) == "one two three four five six seven eight"  # finished
    assert await asyncio.to_thread(process.wait, 10) == 0
    assert time.monotonic() - started < 2  # not the 5 s grace: the idle connection closed
    await idle.aclose()
