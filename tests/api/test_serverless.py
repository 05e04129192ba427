"""Serverless deployments through the management API, and the gateway's contract, on the
echo engine (no model: these tests are about keys, validation, routing and headers)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Api

DEPLOYMENTS = "/api/v1/projects/default/serverless-deployments"
MESSAGES = [{"role": "user", "content": "hello big world"}]


def chat(api: Api, name: str, key: str, body: object | None = None, **headers: str):
    payload = body if body is not None else {"messages": MESSAGES}
    return api.client.post(
        f"/serverless/{name}/chat/completions",
        headers={"api-key": key, **headers},
        content=json.dumps(payload).encode(),
    )


def test_create_list_show_delete(api: Api) -> None:
    created = api.deploy("echo-a")
    assert created["target_url"].endswith("/serverless/echo-a/")
    assert created["tokens_per_minute"] == 200_000
    assert created["requests_per_minute"] == 1_000
    assert len(created["primary_key"]) == 64 and created["primary_key"] != created["secondary_key"]
    names = [d["name"] for d in api.get(DEPLOYMENTS).json()]
    assert names == ["echo-a"]
    assert "primary_key" not in api.get(f"{DEPLOYMENTS}/echo-a").json()
    assert api.delete(f"{DEPLOYMENTS}/echo-a").status_code == 204
    assert api.get(f"{DEPLOYMENTS}/echo-a").status_code == 404
    # the deleted deployment's keys no longer open anything
    assert chat(api, "echo-a", created["primary_key"]).status_code == 404


def test_names_are_unique_and_one_deployment_per_model(api: Api) -> None:
    api.deploy("echo-a")
    again = api.post(DEPLOYMENTS, json={"name": "echo-a", "model": "echo"})
    assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]
    second = api.post(DEPLOYMENTS, json={"name": "echo-b", "model": "echo"})
    assert second.status_code == 409
    assert "'echo-a' already serves echo" in second.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "Bad Name", "model": "echo"}, "name"),
        ({"name": "ok", "model": "no-such-model"}, None),
        ({"name": "ok", "model": "echo", "tokens_per_minute": 0}, "tokens_per_minute"),
        ({"name": "ok", "model": "echo", "colour": "red"}, "colour"),
        ({"name": "ok", "model": "Phi-3-mini-4k-instruct"}, "model"),
    ],
)
def test_bad_create_requests_name_the_problem(api: Api, body: dict, param: str | None) -> None:
    response = api.post(DEPLOYMENTS, json=body)
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    if param:
        assert error["param"] == param
    assert error["message"]
    assert api.get(DEPLOYMENTS).json() == []


def test_chat_completion_shape_and_headers(api: Api) -> None:
    dep = api.deploy("echo-a")
    response = chat(api, "echo-a", dep["primary_key"])
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "echo"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "hello big world",
        "tool_calls": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    headers = response.headers
    assert headers["azureml-model-deployment"] == "echo-a"
    assert headers["x-request-id"]
    assert headers["x-ratelimit-limit-tokens"] == "200000"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 200000
    assert headers["x-ratelimit-limit-requests"] == "1000"
    assert headers["x-ratelimit-remaining-requests"] == "999"


def test_stream_is_data_only_sse_with_usage_on_a_final_choice(api: Api) -> None:
    dep = api.deploy("echo-a")
    body = {"messages": MESSAGES, "stream": True}
    response = chat(api, "echo-a", dep["primary_key"], body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "hello big world"
    last = chunks[-1]
    assert last["choices"] and last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"]["completion_tokens"] == 3
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_both_key_headers_and_both_slots_work(api: Api) -> None:
    dep = api.deploy("echo-a")
    for key in (dep["primary_key"], dep["secondary_key"]):
        bearer = api.client.post(
            "/serverless/echo-a/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"messages": MESSAGES},
        )
        assert bearer.status_code == 200
        assert chat(api, "echo-a", key).status_code == 200


def test_wrong_missing_and_foreign_keys(api: Api) -> None:
    a = api.deploy("echo-a")
    project = api.post("/api/v1/projects", json={"name": "other"})
    assert project.status_code == 201
    b = api.deploy("echo-b", project="other")
    assert chat(api, "echo-a", "0" * 64).status_code == 401
    missing = api.client.post("/serverless/echo-a/chat/completions", json={"messages": MESSAGES})
    assert missing.status_code == 401
    assert "api-key" in missing.json()["error"]["message"]
    foreign = chat(api, "echo-a", b["primary_key"])
    assert foreign.status_code == 403
    assert "choices" not in foreign.json()
    assert chat(api, "echo-b", a["primary_key"]).status_code == 403
    assert chat(api, "no-such", a["primary_key"]).status_code == 404


def test_regenerating_primary_kills_it_at_once_secondary_keeps_working(api: Api) -> None:
    dep = api.deploy("echo-a")
    regenerated = api.post(f"{DEPLOYMENTS}/echo-a/keys/regenerate", json={"key_type": "primary"})
    assert regenerated.status_code == 200
    keys = regenerated.json()
    assert keys["primary_key"] != dep["primary_key"]
    assert keys["secondary_key"] == dep["secondary_key"]
    assert chat(api, "echo-a", dep["primary_key"]).status_code == 401
    assert chat(api, "echo-a", dep["secondary_key"]).status_code == 200
    assert chat(api, "echo-a", keys["primary_key"]).status_code == 200
    bad = api.post(f"{DEPLOYMENTS}/echo-a/keys/regenerate", json={"key_type": "tertiary"})
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"messages": MESSAGES, "max_tokens": -1}, "max_tokens"),
        ({"messages": MESSAGES, "temperature": 9}, "temperature"),
        ({"messages": MESSAGES, "top_p": 0}, "top_p"),
        ({"messages": MESSAGES, "stop": [""]}, "stop"),
        ({"messages": "hi"}, "messages"),
        ({}, "messages"),
        ([1, 2], "body"),
    ],
)
def test_invalid_bodies_get_400_naming_the_field(api: Api, body: object, param: str) -> None:
    dep = api.deploy("echo-a")
    response = chat(api, "echo-a", dep["primary_key"], body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert param.split("[")[0].split(".")[0] in error["message"]


def test_malformed_json_and_oversized_body(api: Api) -> None:
    dep = api.deploy("echo-a")
    bad = api.client.post(
        "/serverless/echo-a/chat/completions",
        headers={"api-key": dep["primary_key"]},
        content=b'{"messages": [',
    )
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["error"]["message"]
    huge = api.client.post(
        "/serverless/echo-a/chat/completions",
        headers={"api-key": dep["primary_key"]},
        content=b"x" * (10 * 1024 * 1024),
    )
    assert huge.status_code == 413
    assert "larger than" in huge.json()["error"]["message"]


def test_extra_parameters_header(api: Api) -> None:
    dep = api.deploy("echo-a")
    key = dep["primary_key"]
    body = {"messages": MESSAGES, "top_k": 5}
    refused = chat(api, "echo-a", key, body)
    assert refused.status_code == 400
    assert "top_k" in refused.json()["error"]["message"]
    assert chat(api, "echo-a", key, body, **{"extra-parameters": "drop"}).status_code == 200
    assert chat(api, "echo-a", key, body, **{"extra-parameters": "pass-through"}).status_code == 200
    unknown = chat(
        api,
        "echo-a",
        key,
        {"messages": MESSAGES, "safe_prompt": True},
        **{"extra-parameters": "pass-through"},
    )
    # azure-ai-inference's `model_extras` sample: an extra the model does not take is
    # ignored, and the response says so.
    assert unknown.status_code == 200
    assert unknown.headers["x-lmfoundry-ignored-parameters"] == "safe_prompt"
    dropped = chat(api, "echo-a", key, body, **{"extra-parameters": "drop"})
    assert dropped.headers["x-lmfoundry-ignored-parameters"] == "top_k"
    assert chat(api, "echo-a", key, body, **{"extra-parameters": "maybe"}).status_code == 400


def test_valid_but_unsupported_parameters_get_422_with_loc(api: Api) -> None:
    dep = api.deploy("echo-a")
    for field, value in [
        ("n", 2),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("response_format", {"type": "json_object"}),
        ("logprobs", True),
    ]:
        response = chat(api, "echo-a", dep["primary_key"], {"messages": MESSAGES, field: value})
        assert response.status_code == 422, (field, response.text)
        assert response.json()["detail"]["loc"] == ["body", field]


def test_prompt_longer_than_context(api: Api) -> None:
    dep = api.deploy("echo-a")
    long = [{"role": "user", "content": "x" * 40_000}]
    response = chat(api, "echo-a", dep["primary_key"], {"messages": long})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    assert "context" in response.json()["error"]["message"]
    too_many = chat(api, "echo-a", dep["primary_key"], {"messages": MESSAGES, "max_tokens": 40_000})
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "max_tokens"


def test_info_and_models(api: Api) -> None:
    dep = api.deploy("echo-a")
    info = api.client.get("/serverless/echo-a/info", headers={"api-key": dep["primary_key"]})
    assert info.json() == {
        "model_name": "echo",
        "model_type": "chat-completions",
        "model_provider_name": "lmfoundry",
        "capabilities": ["chat_completions", "completions", "responses", "streaming"],
    }
    models = api.client.get(
        "/serverless/echo-a/v1/models", headers={"Authorization": f"Bearer {dep['primary_key']}"}
    )
    assert models.json()["data"][0]["id"] == "echo"
    assert api.client.get("/serverless/echo-a/info").status_code == 401


def test_quota_update_applies_to_the_next_request(api: Api) -> None:
    dep = api.deploy("echo-a")
    patched = api.patch(f"{DEPLOYMENTS}/echo-a", json={"requests_per_minute": 1})
    assert patched.status_code == 200 and patched.json()["requests_per_minute"] == 1
    assert chat(api, "echo-a", dep["primary_key"]).status_code == 200
    limited = chat(api, "echo-a", dep["primary_key"])
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert api.patch(f"{DEPLOYMENTS}/echo-a", json={"tokens_per_minute": None}).status_code == 400


def test_a_refused_request_tells_its_rate_limits(api: Api) -> None:
    dep = api.deploy("echo-a")
    bad = chat(api, "echo-a", dep["primary_key"], {"messages": MESSAGES, "temperature": 9})
    assert bad.status_code == 400, bad.text
    assert bad.headers["x-ratelimit-limit-requests"] == "1000"  # as a served one would
    assert bad.headers["x-ratelimit-remaining-requests"] == "1000"  # a refusal costs nothing
