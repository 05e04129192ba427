"""The tutorial's scenario 3 in its own shape, against lmfoundry online endpoints.

Flows with the tutorial's imports and contract (a custom connection named `connection`,
`connection.endpoint` / `connection.key`, the /score request body) call an online endpoint's
/score URL with its primary key: one serving a LoRA adapter fine-tuned (by a real job) to
answer "apple apple apple", and one serving the bundled SmolLM2, whose answers depend on the
conversation so far.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer, start_server, stop_server
from tests.finetune.helpers import import_tiny, train_adapter
from tests.finetune.tiny import build_tiny_phi3
from tests.flows.helpers import DATA, cli

pytestmark = [pytest.mark.slow, pytest.mark.train, pytest.mark.heavy, pytest.mark.timeout(900)]

E = "/api/v1/projects/default/online-endpoints"
CONNECTION = "/api/v1/projects/default/connections/connection"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("tutorial") / "home")
    yield live
    stop_server(live)


def endpoint(api: httpx.Client, name: str, model: str) -> tuple[str, str]:
    """An online endpoint with one deployment `blue` of `model` taking all the traffic:
    (scoring URI, primary key)."""
    assert api.post(E, json={"name": name}).status_code == 201
    put = api.put(f"{E}/{name}/deployments/blue", json={"model": model, "instance_count": 1})
    assert put.status_code in (200, 201), put.text
    deadline = time.monotonic() + 300
    while api.get(f"{E}/{name}/deployments/blue").json()["provisioning_state"] != "succeeded":
        assert time.monotonic() < deadline, api.get(f"{E}/{name}/deployments/blue").json()
        time.sleep(0.2)
    assert api.put(f"{E}/{name}/traffic", json={"blue": 100}).status_code == 200
    return api.get(f"{E}/{name}").json()["scoring_uri"], api.get(f"{E}/{name}/keys").json()[
        "primary_key"
    ]


def connect(api: httpx.Client, scoring_uri: str, key: str) -> None:
    """The tutorial's custom connection: the endpoint URL as a config, the key as a secret."""
    body = {"configs": {"endpoint": scoring_uri}, "secrets": {"key": key}}
    assert api.put(CONNECTION, json=body).is_success


def direct_answer(scoring_uri: str, key: str, messages: list[dict[str, str]]) -> str:
    body = {
        "input_data": {
            "input_string": messages,
            "parameters": {"temperature": 0.0, "max_new_tokens": 24},
        }
    }
    reply = httpx.post(
        scoring_uri, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["output"])


@pytest.fixture(scope="module")
def fine_tuned(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    tiny = build_tiny_phi3(tmp_path_factory.mktemp("models") / "tiny-phi3")
    with server.client() as api:
        import_tiny(api, tiny)
        train_adapter(api, "tiny-phi3", "apples", "apple apple apple")
        return endpoint(api, "fruit", "apples:1")


@pytest.fixture(scope="module")
def smol(server: LiveServer) -> tuple[str, str]:
    with server.client() as api:
        return endpoint(api, "smol", "SmolLM2-135M-Instruct")


def test_the_flow_returns_the_fine_tuned_models_answer(
    server: LiveServer, fine_tuned: tuple[str, str]
) -> None:
    scoring_uri, key = fine_tuned
    with server.client() as api:
        connect(api, scoring_uri, key)
    result = json.loads(
        cli(server, "flow", "test", str(DATA / "score_client"), f"input_data={QUESTION}", "--json")
    )
    assert result["status"] == "completed", result
    answer = result["outputs"]["answer"]
    assert answer.startswith("apple"), answer  # what the adapter was trained to say
    assert answer == direct_answer(scoring_uri, key, [{"role": "user", "content": QUESTION}])

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


def test_the_chat_version_keeps_the_history(server: LiveServer, smol: tuple[str, str]) -> None:
    scoring_uri, key = smol
    with server.client() as api:
        connect(api, scoring_uri, key)
    output = cli(
        server,
        "flow",
        "test",
        str(DATA / "score_chat"),
        "--interactive",
        stdin=f"{QUESTION}\nAnd of Germany?\n\n",
    )
    first = direct_answer(scoring_uri, key, [{"role": "user", "content": QUESTION}])
    assert first.strip() and first in output
    # the second turn carries the first question and the model's first answer: greedy
    # decoding answers it exactly as the endpoint does when sent that history
    second = direct_answer(
        scoring_uri,
        key,
        [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "And of Germany?"},
        ],
    )
    assert second in output
    without_history = direct_answer(
        scoring_uri, key, [{"role": "user", "content": "And of Germany?"}]
    )
    assert second != without_history  # the history changed the answer
