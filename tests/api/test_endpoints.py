"""Online endpoints through the API, on the echo engine (routing, keys, splits, /score)."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.conftest import Api

E = "/api/v1/projects/default/online-endpoints"
MESSAGES = [{"role": "user", "content": "hello from the test"}]


def wait_ready(api: Api, endpoint: str, *deployments: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [
            api.get(f"{E}/{endpoint}/deployments/{d}").json()["provisioning_state"]
            for d in deployments
        ]
        if all(s == "succeeded" for s in states):
            return
        assert "failed" not in states, states
        time.sleep(0.2)
    raise AssertionError(f"not ready: {states}")


@pytest.fixture
def endpoint(api: Api) -> dict[str, str]:
    created = api.post(E, json={"name": "ep", "requests_per_minute": 100_000})
    assert created.status_code == 201, created.text
    for name in ("blue", "green"):
        put = api.put(f"{E}/ep/deployments/{name}", json={"model": "echo"})
        assert put.status_code == 200, put.text
        assert put.json()["provisioning_state"] == "creating"
    wait_ready(api, "ep", "blue", "green")
    return {**created.json(), **api.get(f"{E}/ep/keys").json()}


def call(api: Api, key: str, path: str = "chat/completions", **kw: object):
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}  # type: ignore[dict-item]
    return api.client.post(f"/endpoints/ep/{path}", headers=headers, **kw)  # type: ignore[arg-type]


@pytest.mark.heavy  # 1,000 requests for the split's statistics; storage is the other tests'
def test_traffic_split_header_and_score(api: Api, endpoint: dict[str, str]) -> None:
    key = endpoint["primary_key"]
    assert call(api, key, json={"messages": MESSAGES}).status_code == 503  # no traffic yet
    assert api.put(f"{E}/ep/traffic", json={"blue": 90, "green": 10}).status_code == 200
    served = Counter()
    for _ in range(1000):
        response = call(api, key, json={"messages": MESSAGES})
        assert response.status_code == 200
        served[response.headers["azureml-model-deployment"]] += 1
    assert abs(served["blue"] / 10 - 90) <= 3 and abs(served["green"] / 10 - 10) <= 3, served
    for _ in range(20):
        targeted = call(
            api, key, json={"messages": MESSAGES}, headers={"azureml-model-deployment": "green"}
        )
        assert targeted.headers["azureml-model-deployment"] == "green"
    score = call(
        api,
        key,
        "score",
        json={
            "input_data": {
                "input_string": [{"role": "user", "content": "Who founded Microsoft?"}],
                "parameters": {"temperature": 0.7, "max_new_tokens": 128},
            }
        },
    )
    assert score.status_code == 200
    assert score.json() == {"output": "Who founded Microsoft?"}  # echo repeats the question
    unknown = call(
        api, key, json={"messages": MESSAGES}, headers={"azureml-model-deployment": "purple"}
    )
    assert unknown.status_code == 404 and "purple" in unknown.json()["error"]["message"]


def test_score_errors_are_real_errors(api: Api, endpoint: dict[str, str]) -> None:
    key = endpoint["primary_key"]
    api.put(f"{E}/ep/traffic", json={"blue": 100})
    for body, param in [
        ({"input_string": ["hi"]}, "input_data"),
        ({"input_data": {"parameters": {}}}, "input_data.input_string"),
        ({"input_data": {"input_string": []}}, "input_data.input_string"),
        (
            {"input_data": {"input_string": ["hi"], "parameters": {"beam": 2}}},
            "input_data.parameters.beam",
        ),
    ]:
        response = call(api, key, "score", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    assert (
        call(api, "f" * 64, "score", json={"input_data": {"input_string": ["x"]}}).status_code
        == 401
    )


def test_mirror_traffic_reaches_the_mirror_without_changing_answers(
    api: Api, endpoint: dict[str, str]
) -> None:
    key = endpoint["primary_key"]
    api.put(f"{E}/ep/traffic", json={"blue": 100})
    assert api.put(f"{E}/ep/mirror-traffic", json={"green": 50}).status_code == 200
    for n in range(40):
        response = call(api, key, json={"messages": [{"role": "user", "content": f"q {n}"}]})
        assert response.headers["azureml-model-deployment"] == "blue"
        assert response.json()["choices"][0]["message"]["content"] == f"q {n}"
    time.sleep(1.0)  # mirrored copies finish in the background
    platform = api.client.app.state.platform  # type: ignore[attr-defined]
    platform.metering.flush()
    project_id = platform.access.project_access(
        platform.access.admin_principal(), "default"
    ).project_id
    records = platform.metering.records(project_id, target="ep", limit=1000)
    mirrored = [r for r in records if r.mirrored]
    assert all(r.deployment == "green" for r in mirrored)
    assert 8 <= len(mirrored) <= 32  # about half of 40
    billed = api.get("/api/v1/projects/default/usage").json()
    assert next(r for r in billed if r["target"] == "ep")["requests"] == 40
    # by deployment: what answered (blue takes all the traffic; green's copies are not billed)
    by_deployment = api.get(
        "/api/v1/projects/default/usage", params={"group_by": "deployment", "target": "ep"}
    ).json()
    assert [(r["kind"], r["target"], r["deployment"], r["requests"]) for r in by_deployment] == [
        ("endpoint", "ep", "blue", 40)
    ]
    only_green = api.get("/api/v1/projects/default/usage", params={"deployment": "green"})
    assert only_green.json() == []


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("traffic", {"blue": 50, "green": 20}, "traffic"),
        ("traffic", {"blue": 100, "purple": 0}, "traffic.purple"),
        ("traffic", {"blue": 120}, "traffic.blue"),
        ("mirror-traffic", {"green": 60}, "mirror_traffic"),
        ("mirror-traffic", {"blue": 10, "green": 10}, "mirror_traffic"),
    ],
)
def test_bad_splits(api: Api, endpoint: dict[str, str], path: str, body: dict, param: str) -> None:
    response = api.put(f"{E}/ep/{path}", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert (
        "100" in response.json()["error"]["message"]
        or "deployment" in response.json()["error"]["message"]
        or "50" in response.json()["error"]["message"]
        or "mirror" in response.json()["error"]["message"]
    )
    assert api.get(f"{E}/ep").json()["traffic"] == {}


def test_a_mirror_cannot_take_live_traffic(api: Api, endpoint: dict[str, str]) -> None:
    api.put(f"{E}/ep/traffic", json={"blue": 100})
    response = api.put(f"{E}/ep/mirror-traffic", json={"blue": 10})
    assert response.status_code == 400 and "live traffic" in response.json()["error"]["message"]
    delete = api.delete(f"{E}/ep/deployments/blue")
    assert delete.status_code == 409 and "traffic" in delete.json()["error"]["message"]


def test_concurrency_limit_answers_429_at_once(api: Api, endpoint: dict[str, str]) -> None:
    put = api.put(
        f"{E}/ep/deployments/blue",
        json={"model": "echo", "request_settings": {"max_concurrent_requests_per_instance": 1}},
    )
    assert put.status_code == 200
    wait_ready(api, "ep", "blue")
    api.put(f"{E}/ep/traffic", json={"blue": 100})
    key = endpoint["primary_key"]
    with api.client.stream(
        "POST",
        "/endpoints/ep/chat/completions",
        headers={"api-key": key},
        json={"messages": MESSAGES, "stream": True},
    ) as held:
        assert held.status_code == 200
        started = time.monotonic()
        busy = call(api, key, json={"messages": MESSAGES})
        assert busy.status_code == 429 and time.monotonic() - started < 1.0
        assert "max_concurrent_requests_per_instance" in busy.json()["error"]["message"]
        held.read()
    assert call(api, key, json={"messages": MESSAGES}).status_code == 200


def test_endpoint_keys_are_their_own(api: Api, endpoint: dict[str, str]) -> None:
    serverless = api.deploy("other", model="echo")
    api.put(f"{E}/ep/traffic", json={"blue": 100})
    assert call(api, serverless["primary_key"], json={"messages": MESSAGES}).status_code == 403
    assert call(api, endpoint["secondary_key"], json={"messages": MESSAGES}).status_code == 200
    regenerated = api.post(f"{E}/ep/keys/regenerate", json={"key_type": "secondary"}).json()
    assert call(api, endpoint["secondary_key"], json={"messages": MESSAGES}).status_code == 401
    assert call(api, regenerated["secondary_key"], json={"messages": MESSAGES}).status_code == 200


def test_bad_deployments(api: Api, endpoint: dict[str, str]) -> None:
    for body, status, param in [
        ({"model": "echo", "instance_count": 0}, 400, "instance_count"),
        (
            {"model": "echo", "request_settings": {"request_timeout_ms": 0}},
            400,
            "request_settings.request_timeout_ms",
        ),
        ({"model": "no-such-model"}, 404, None),
        ({"model": "Phi-3-mini-4k-instruct"}, 503, None),
    ]:
        response = api.put(f"{E}/ep/deployments/red", json=body)
        assert response.status_code == status, (body, response.text)
        if param:
            assert response.json()["error"]["param"] == param
    assert api.get(f"{E}/ep").json()["deployments"] == ["blue", "green"]
