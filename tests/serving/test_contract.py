"""The serverless contract against a real `lmfoundry up` process and the bundled model,
driven by the official `openai` and `azure-ai-inference` clients."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import SystemMessage, UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

from tests.conftest import LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("contract") / "home")
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def target(server: LiveServer) -> tuple[str, str, str]:
    """(target URL, primary key, secondary key) of the deployment `up` created."""
    with server.client() as c:
        deployment = c.get(f"/api/v1/projects/default/serverless-deployments/{NAME}").json()
        keys = c.get(f"/api/v1/projects/default/serverless-deployments/{NAME}/keys").json()
    return deployment["target_url"], keys["primary_key"], keys["secondary_key"]


def test_openai_client(target: tuple[str, str, str]) -> None:
    url, key, _ = target
    client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(
        model=NAME, messages=QUESTION, max_tokens=24, temperature=0
    )
    text = reply.choices[0].message.content
    assert text and "Paris" in text
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.model == "SmolLM2-135M-Instruct"

    stream = client.chat.completions.create(
        model=NAME,
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy: the same answer streamed and not
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_azure_inference_client(target: tuple[str, str, str]) -> None:
    url, key, _ = target
    client = ChatCompletionsClient(endpoint=url, credential=AzureKeyCredential(key))
    info = client.get_model_info()
    assert info.model_name == "SmolLM2-135M-Instruct"
    assert info.model_type == "chat-completions"
    assert "tools" in info["capabilities"]  # beyond Azure's fields, kept by its client
    reply = client.complete(
        messages=[
            SystemMessage("Answer in one sentence."),
            UserMessage("What is the capital of France? Answer in one word."),
        ],
        max_tokens=32,
        temperature=0,
    )
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0
    parts = []
    for update in client.complete(
        messages=[UserMessage("What is the capital of France? Answer in one word.")],
        max_tokens=32,
        temperature=0,
        stream=True,
    ):
        if update.choices:
            parts.append(update.choices[0].delta.content or "")
    assert "Paris" in "".join(parts)
    with pytest.raises(HttpResponseError) as refused:
        client.complete(messages=[UserMessage("hi")], temperature=9)
    assert refused.value.status_code == 400
    assert "temperature" in str(refused.value)


def test_azure_inference_client_with_an_empty_credential_and_the_api_key_header(
    target: tuple[str, str, str],
) -> None:
    """azure-ai-inference's Azure OpenAI-style samples: `AzureKeyCredential("")` plus
    `headers={"api-key": key}`, so the request carries an empty Bearer and the real key."""
    url, key, _ = target
    client = ChatCompletionsClient(
        endpoint=url, credential=AzureKeyCredential(""), headers={"api-key": key}
    )
    reply = client.complete(
        messages=[UserMessage("What is the capital of France? Answer in one word.")],
        max_tokens=32,
        temperature=0,
    )
    assert "Paris" in reply.choices[0].message.content
    wrong = ChatCompletionsClient(
        endpoint=url, credential=AzureKeyCredential(""), headers={"api-key": "x" * 64}
    )
    with pytest.raises(HttpResponseError) as refused:
        wrong.complete(messages=[UserMessage("hi")], max_tokens=4)
    assert refused.value.status_code == 401


def test_keys_of_other_deployments_and_unknown_names(
    server: LiveServer, target: tuple[str, str, str]
) -> None:
    url, key, _ = target
    with server.client() as c:
        created = c.post("/api/v1/projects", json={"name": "contract-other"})
        assert created.status_code == 201
        other = c.post(
            "/api/v1/projects/contract-other/serverless-deployments",
            json={"name": "contract-smol", "model": "SmolLM2-135M-Instruct"},
        )
        assert other.status_code == 201
        other_key = c.get(
            "/api/v1/projects/contract-other/serverless-deployments/contract-smol/keys"
        ).json()["primary_key"]
    client = openai.OpenAI(base_url=url + "v1", api_key=other_key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=4)
    bad = openai.OpenAI(base_url=url + "v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=4)
    missing = openai.OpenAI(base_url=url.replace(NAME, "nobody") + "v1", api_key=key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        missing.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=4)


def test_prompt_longer_than_the_context(target: tuple[str, str, str]) -> None:
    url, key, _ = target
    client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hello " * 9000}], max_tokens=8
        )
    assert "context" in str(refused.value)


def test_eight_concurrent_streams_complete(target: tuple[str, str, str]) -> None:
    url, key, _ = target

    async def one(client: openai.AsyncOpenAI, n: int) -> tuple[str, int]:
        stream = await client.chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": f"Count from {n} to {n + 20}."}],
            max_tokens=48,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, tokens = "", 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return text, tokens

    async def run() -> list[tuple[str, int]]:
        client = openai.AsyncOpenAI(base_url=url + "v1", api_key=key, max_retries=0)
        try:
            return await asyncio.gather(*(one(client, n) for n in range(8)))
        finally:
            await client.close()

    results = asyncio.run(run())
    assert len(results) == 8
    assert all(text and tokens > 0 for text, tokens in results)


def _instance_pids(server: LiveServer) -> list[int]:
    with server.client() as c:
        return [
            i["pid"]
            for i in c.get("/api/v1/instances").json()
            if i["pid"] and i["state"] == "ready"
        ]


def test_killing_the_instance_fails_one_request_cleanly(
    server: LiveServer, target: tuple[str, str, str]
) -> None:
    url, key, _ = target
    body = {
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 400,
        "stream": True,
    }
    received = []
    with httpx.stream(
        "POST", url + "chat/completions", json=body, headers={"api-key": key}, timeout=60
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: ") and '"content":"' in line:
                received.append(line)
                if len(received) == 3:
                    break
        pids = _instance_pids(server)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        rest = list(lines)
    assert "data: [DONE]" not in rest  # the stream ended with an error, not a fake answer
    assert any('"error"' in line for line in rest)

    deadline = time.monotonic() + 60
    client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
    while True:
        try:
            reply = client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=8)
            break
        except (openai.InternalServerError, openai.APIStatusError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert reply.choices[0].message.content
    assert set(_instance_pids(server)).isdisjoint(pids)


def test_regenerated_primary_fails_at_once(
    server: LiveServer, target: tuple[str, str, str]
) -> None:
    with server.client() as c:
        c.post(
            "/api/v1/projects/default/serverless-deployments",
            json={"name": "regen-me", "model": "echo"},
        )
        keys = c.get("/api/v1/projects/default/serverless-deployments/regen-me/keys").json()
        c.post(
            "/api/v1/projects/default/serverless-deployments/regen-me/keys/regenerate",
            json={"key_type": "primary"},
        )
    url = target[0].replace(NAME, "regen-me")

    def status(key: str) -> int:
        return httpx.post(
            url + "chat/completions", headers={"api-key": key}, json={"messages": QUESTION}
        ).status_code

    assert status(keys["primary_key"]) == 401
    assert status(keys["secondary_key"]) == 200


def test_restart_keeps_deployments_and_keys(tmp_path: Path) -> None:
    first = start_server(tmp_path / "home")
    try:
        with first.client() as c:
            c.post("/api/v1/projects", json={"name": "keepme"})
            c.post(
                "/api/v1/projects/keepme/serverless-deployments",
                json={"name": "kept", "model": "echo", "tokens_per_minute": 5000},
            )
            keys = c.get("/api/v1/projects/keepme/serverless-deployments/kept/keys").json()
    finally:
        assert stop_server(first) == 0
    second = start_server(tmp_path / "home")
    try:
        with second.client() as c:
            kept = c.get("/api/v1/projects/keepme/serverless-deployments/kept").json()
            assert kept["tokens_per_minute"] == 5000
            again = c.get("/api/v1/projects/keepme/serverless-deployments/kept/keys").json()
            assert again == keys
            names = [
                d["name"] for d in c.get("/api/v1/projects/default/serverless-deployments").json()
            ]
            assert names == [NAME]
        reply = httpx.post(
            kept["target_url"] + "chat/completions",
            headers={"api-key": keys["primary_key"]},
            json={"messages": QUESTION},
        )
        assert reply.status_code == 200
    finally:
        stop_server(second)
