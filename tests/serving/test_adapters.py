"""Fine-tuned adapters on a shared base: two jobs trained on different answers, registered
from their jobs, deployed side by side on one endpoint (and one as a serverless API). They
share one instance of the base, and each answers with its own weights."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import LiveServer, start_server, stop_server
from tests.finetune.helpers import import_tiny, train_adapter
from tests.finetune.tiny import build_tiny_phi3

pytestmark = [pytest.mark.slow, pytest.mark.train, pytest.mark.heavy, pytest.mark.timeout(900)]

E = "/api/v1/projects/default/online-endpoints"
MODELS = "/api/v1/projects/default/models"


def wait_ready(http: httpx.Client, endpoint: str, deployment: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = http.get(f"{E}/{endpoint}/deployments/{deployment}").json()
        if state["provisioning_state"] == "succeeded":
            return
        assert state["provisioning_state"] != "failed", state
        time.sleep(0.2)
    raise AssertionError(f"{endpoint}/{deployment} not ready")


def score(url: str, key: str, deployment: str, question: str) -> str:
    body = {
        "input_data": {
            "input_string": [{"role": "user", "content": question}],
            "parameters": {"temperature": 0.0, "max_new_tokens": 8},
        }
    }
    response = httpx.post(
        url,
        json=body,
        headers={"Authorization": f"Bearer {key}", "azureml-model-deployment": deployment},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["azureml-model-deployment"] == deployment
    return str(response.json()["output"])


def instance_memory(http: httpx.Client) -> tuple[int, int]:
    """(running instances, their resident memory in bytes, children included)."""
    pids = [i["pid"] for i in http.get("/api/v1/instances").json() if i["state"] == "ready"]
    total = 0
    for pid in pids:
        process = psutil.Process(pid)
        total += process.memory_info().rss
        total += sum(child.memory_info().rss for child in process.children(recursive=True))
    return len(pids), total


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_phi3(tmp_path_factory.mktemp("models") / "tiny-phi3")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    live = start_server(tmp_path_factory.mktemp("adapters") / "home")
    yield live
    stop_server(live)


def test_two_adapters_share_one_base_and_each_answers_with_its_own_weights(
    server: LiveServer,
    tiny_phi3: Path,
) -> None:
    with server.client() as http:
        import_tiny(http, tiny_phi3)
        for name, answer in (("apples", "apple apple apple"), ("pears", "pear pear pear")):
            view = train_adapter(http, "tiny-phi3", name, answer)
            assert (view["version"], view["adapter"], view["base_model"]) == (
                1,
                True,
                "tiny-phi3",
            )
            assert view["lineage"]["job_id"] == view["job_id"]
            assert view["lineage"]["training_data"] == f"{name}:1"

        assert http.post(E, json={"name": "fruit"}).status_code == 201
        keys = http.get(f"{E}/fruit/keys").json()
        url = http.get(f"{E}/fruit").json()["scoring_uri"]
        put = http.put(f"{E}/fruit/deployments/blue", json={"model": "apples:1"})
        assert put.status_code in (200, 201), put.text
        wait_ready(http, "fruit", "blue")
        assert score(url, keys["primary_key"], "blue", "Name a fruit.").startswith("apple")
        one = instance_memory(http)

        put = http.put(f"{E}/fruit/deployments/green", json={"model": "pears:1"})
        assert put.status_code in (200, 201), put.text
        wait_ready(http, "fruit", "green")
        traffic = http.put(f"{E}/fruit/traffic", json={"blue": 50, "green": 50})
        assert traffic.status_code == 200, traffic.text

        # Each deployment answers with its own adapter, on questions it was never shown.
        for question in ("What do you like?", "Say something."):
            apple = score(url, keys["primary_key"], "blue", question)
            pear = score(url, keys["primary_key"], "green", question)
            assert apple.startswith("apple") and "pear" not in apple, apple
            assert pear.startswith("pear") and "apple" not in pear, pear
        two = instance_memory(http)

        # Both adapters are served by the one instance of the base model.
        assert one[0] == two[0] == 1, (one, two)
        assert two[1] < 1.3 * one[1], (one, two)

        # A registered adapter can be deployed as a serverless API too.
        created = http.post(
            "/api/v1/projects/default/serverless-deployments",
            json={"name": "pears-api", "model": "pears:1"},
        )
        assert created.status_code == 201, created.text
        deployment = created.json()
        key = http.get("/api/v1/projects/default/serverless-deployments/pears-api/keys").json()
    answer = httpx.post(
        deployment["target_url"] + "chat/completions",
        json={
            "messages": [{"role": "user", "content": "Name a fruit."}],
            "temperature": 0,
            "max_tokens": 8,
        },
        headers={"api-key": key["primary_key"]},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"].startswith("pear")
