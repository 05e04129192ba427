"""An instance that dies mid-answer, behind a real `lmfoundry up`: the llama-server process of
the bundled model is killed (SIGKILL) while it streams two answers and holds two more in its
queue. Every one of them ends at once with a 503 (streams with an error event), every one is
metered, the instance is restarted and answers again. Every wait below has its own bound."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"
SERVERLESS = f"/api/v1/projects/default/serverless-deployments/{NAME}"
LONG = {
    "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
    "max_tokens": 400,
}
BOUND = 2.0  # seconds from the failure to the end of every request


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("engine-failure")
    # Two requests decode, the rest wait in llama-server's queue.
    live = start_server(root / "home", env={"LMFOUNDRY_ENGINE_MAX_SEQUENCES": "2"})
    yield live
    stop_server(live)


@dataclass
class Call:
    """One request made on a thread of its own."""

    stream: bool
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    events: list[str] = field(default_factory=list)
    first_content: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    thread: threading.Thread | None = None

    def start(self, url: str, key: str) -> Call:
        self.thread = threading.Thread(target=self._run, args=(url, key), daemon=True)
        self.thread.start()
        return self

    def _run(self, url: str, key: str) -> None:
        body = {**LONG, "stream": self.stream}
        with httpx.Client(timeout=60) as http:
            if not self.stream:
                response = http.post(url + "chat/completions", json=body, headers={"api-key": key})
                self.status, self.headers = response.status_code, dict(response.headers)
                self.body = response.json()
            else:
                with http.stream(
                    "POST", url + "chat/completions", json=body, headers={"api-key": key}
                ) as response:
                    self.status, self.headers = response.status_code, dict(response.headers)
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            self.events.append(line[6:])
                            if '"content":"' in line and '"content":""' not in line:
                                self.first_content.set()
        self.ended_at = time.monotonic()


def instance_of(live: LiveServer) -> dict[str, Any]:
    with live.client() as c:
        listed = c.get("/api/v1/instances").json()
    assert len(listed) == 1, listed
    return dict(listed[0])


def requests_metered(live: LiveServer) -> int:
    with live.client() as c:
        rows = c.get("/api/v1/projects/default/usage").json()
    return sum(r["requests"] for r in rows if r["target"] == NAME)


def test_a_killed_instance_ends_every_request_with_503_and_is_restarted(
    server: LiveServer,
) -> None:
    live = server
    with live.client() as c:
        url = c.get(SERVERLESS).json()["target_url"]
        key = c.get(f"{SERVERLESS}/keys").json()["primary_key"]
    warm = httpx.post(
        url + "chat/completions",
        json={"messages": LONG["messages"], "max_tokens": 2},
        headers={"api-key": key},
        timeout=60,
    )
    assert warm.status_code == 200, warm.text
    before = instance_of(live)
    assert before["state"] == "ready" and before["pid"]

    streams = [Call(stream=True).start(url, key) for _ in range(2)]
    for call in streams:
        assert call.first_content.wait(30), "the streams did not start answering"
    waiting = [Call(stream=False).start(url, key) for _ in range(2)]  # queued behind them
    deadline = time.monotonic() + 10
    while instance_of(live)["active"] < 4:
        assert time.monotonic() < deadline, "the queued requests did not reach the instance"
        time.sleep(0.05)

    os.kill(before["pid"], signal.SIGKILL)  # the llama-server process itself
    failed_at = time.monotonic()
    for call in [*streams, *waiting]:
        assert call.thread is not None
        call.thread.join(BOUND + 5)
        assert call.ended_at is not None, "a request of the failed engine is still waiting"
        assert call.ended_at - failed_at < BOUND, call.ended_at - failed_at

    for call in waiting:
        assert call.status == 503, call.body
        assert int(call.headers["retry-after"]) >= 1
        message = call.body["error"]["message"]
        # The instance by its id (as /api/v1/instances lists it) and the model it serves
        # (serverless deployments of one model share its instances).
        assert before["id"] in message and "SmolLM2-135M-Instruct" in message, message
        assert "restarted" in message and "code -9" in message, message
    for call in streams:
        assert call.status == 200  # the headers went out before the failure
        assert "[DONE]" not in call.events  # no pretend ending
        error = json.loads(call.events[-1])["error"]
        assert error["status"] == 503 and before["id"] in error["message"]

    # The supervisor restarts the instance, and the deployment answers again.
    deadline = time.monotonic() + 60
    while True:
        now = instance_of(live)
        if now["state"] == "ready" and now["pid"] not in (None, before["pid"]):
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    assert now["id"] == before["id"] and now["restarts"] == before["restarts"] + 1
    again = httpx.post(
        url + "chat/completions",
        json={"messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 16},
        headers={"api-key": key},
        timeout=60,
    )
    assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["message"]["content"]

    # Nothing lost: the warm-up, the four failed requests and the last one are all metered.
    deadline = time.monotonic() + 10
    while requests_metered(live) < 6:
        assert time.monotonic() < deadline, requests_metered(live)
        time.sleep(0.2)
    assert requests_metered(live) == 6


# Serve awaits a deployment's async `__del__`; built outside Serve, the garbage collector
# calls it and drops the coroutine (the engine is closed by the test itself).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_ray_replica_whose_llama_server_died_fails_its_health_check() -> None:
    """The Ray Serve replica class (no cluster needed to build it) holds its llama-server as a
    child process: when that dies mid-answer, the request ends with an `engine_failed` item
    and Serve's `check_health` raises, so that Serve replaces the replica."""
    pytest.importorskip("ray")
    from lmfoundry.catalog.bundled import smollm2_path
    from lmfoundry.engines.gguf import GGUFTokenizer
    from lmfoundry.runtime.ray_replica import Instance
    from lmfoundry.runtime.spec import InstanceSpec

    model = smollm2_path()
    assert model is not None
    spec = InstanceSpec.make("llamacpp", str(model), {"max_sequences": 2, "kv_tokens": 4096})
    replica = Instance(spec.to_json())
    try:
        replica.check_health()  # a healthy replica passes
        tokenizer = GGUFTokenizer(model)
        prompt = tokenizer.encode(tokenizer.render(LONG["messages"]))
        tokenizer.close()
        payload = {"prompt": prompt, "params": {"max_tokens": 400, "temperature": 0.0}}

        items: list[dict[str, Any]] = []
        async with asyncio.timeout(BOUND + 30):
            async for item in replica.generate(payload):
                items.append(item)
                if len(items) == 3:
                    os.kill(replica.engine.process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        assert items[-1]["error"]["kind"] == "engine_failed", items[-1]
        assert "code -9" in items[-1]["error"]["message"]
        assert (await replica.health())["status"] == "failed"
        with pytest.raises(RuntimeError, match="llama-server exited"):
            replica.check_health()
    finally:
        await replica.engine.aclose()
