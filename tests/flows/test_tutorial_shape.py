"""The tutorial's scenario 3 in its own shape, answered by a real model.

Flows with the tutorial's imports and contract (a custom connection named `connection`,
`connection.endpoint` / `connection.key`, the /score request body) call a small /score server
that stands in for an online endpoint: it translates each request into a chat completion of the
bundled SmolLM2 behind a real serverless deployment. (The end-to-end test against an lmfoundry
online endpoint, with the tutorial's files verbatim, comes with online endpoints.)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, start_server, stop_server
from tests.flows.helpers import DATA, cli

pytestmark = pytest.mark.slow

DEPLOYMENT = "smollm2-135m-instruct"
SCORE_KEY = "score-key-0123456789abcdef"
QUESTION = "What is the capital of France?"


class ScoreEndpoint:
    """`POST /score` as an online endpoint answers it, backed by a serverless deployment."""

    def __init__(self, target_url: str, key: str) -> None:
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path != "/score" or self.headers["authorization"] != f"Bearer {SCORE_KEY}":
                    self.send_response(401)
                    self.end_headers()
                    return
                endpoint.requests.append(body)
                data = body["input_data"]
                reply = httpx.post(
                    target_url + "chat/completions",
                    json={
                        "messages": data["input_string"],
                        "temperature": data["parameters"]["temperature"],
                        "max_tokens": data["parameters"]["max_new_tokens"],
                    },
                    headers={"api-key": key},
                    timeout=120,
                )
                answer = json.dumps({"output": reply.json()["choices"][0]["message"]["content"]})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/score"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("tutorial") / "home")
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def endpoint(server: LiveServer) -> Iterator[tuple[ScoreEndpoint, str, str]]:
    with server.client() as api:
        base = f"/api/v1/projects/default/serverless-deployments/{DEPLOYMENT}"
        target = api.get(base).json()["target_url"]
        key = api.get(base + "/keys").json()["primary_key"]
        score = ScoreEndpoint(target, key)
        connection = {"configs": {"endpoint": score.url}, "secrets": {"key": SCORE_KEY}}
        assert api.put(
            "/api/v1/projects/default/connections/connection", json=connection
        ).is_success
    yield score, target, key
    score.close()


def direct_answer(target: str, key: str, messages: list[dict[str, str]]) -> str:
    reply = httpx.post(
        target + "chat/completions",
        json={"messages": messages, "temperature": 0.0, "max_tokens": 24},
        headers={"api-key": key},
        timeout=120,
    )
    return str(reply.json()["choices"][0]["message"]["content"])


def test_the_flow_returns_the_models_answer(
    server: LiveServer, endpoint: tuple[ScoreEndpoint, str, str]
) -> None:
    score, target, key = endpoint
    result = json.loads(
        cli(server, "flow", "test", str(DATA / "score_client"), f"input_data={QUESTION}", "--json")
    )
    assert result["status"] == "completed", result
    answer = result["outputs"]["answer"]
    assert answer.strip()
    # greedy decoding: exactly what the deployment answers when asked directly
    assert answer == direct_answer(target, key, [{"role": "user", "content": QUESTION}])
    assert score.requests[-1]["input_data"]["input_string"] == [
        {"role": "user", "content": QUESTION}
    ]

    # uploaded and deployed, it answers Prompt flow's /score request the same way
    cli(server, "flow", "upload", str(DATA / "score_client"), "--name", "phi-chat")
    cli(server, "flow", "deploy", "phi-chat")
    with server.client() as api:
        flow_key = api.get("/api/v1/projects/default/flows/phi-chat/keys").json()["primary_key"]
    scored = httpx.post(
        f"{server.url}/flows/phi-chat/score",
        json={"input_data": QUESTION},
        headers={"Authorization": f"Bearer {flow_key}"},
        timeout=120,
    )
    assert scored.status_code == 200, scored.text
    assert scored.json() == {"answer": answer}


def test_the_chat_version_keeps_the_history(
    server: LiveServer, endpoint: tuple[ScoreEndpoint, str, str]
) -> None:
    score, target, key = endpoint
    before = len(score.requests)
    output = cli(
        server,
        "flow",
        "test",
        str(DATA / "score_chat"),
        "--interactive",
        stdin=f"{QUESTION}\nAnd of Germany?\n\n",
    )
    first, second = score.requests[before:]
    first_answer = direct_answer(target, key, first["input_data"]["input_string"])
    assert first_answer.strip() and first_answer in output
    # the second turn carries the first question and the model's first answer
    assert second["input_data"]["input_string"] == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": "And of Germany?"},
    ]
    assert direct_answer(target, key, second["input_data"]["input_string"]) in output
