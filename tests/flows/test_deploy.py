"""Deployed flows: `POST /flows/{name}/score` with a key, Prompt flow's request and response
shapes (JSON, and server-sent events when the chat output streams)."""

from __future__ import annotations

import json

from tests.conftest import Api
from tests.flows.helpers import DATA, FLOWS, upload


def score(api: Api, name: str, key: str | None, body: object, **headers: str):  # type: ignore[no-untyped-def]
    if key:
        headers = {"Authorization": f"Bearer {key}", **headers}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.client.post(f"/flows/{name}/score", content=content, headers=headers)


def test_deploy_score_keys_undeploy(api: Api) -> None:
    upload(api, DATA / "numbers", "numbers")
    assert score(api, "numbers", "x" * 64, {"number": 3}).status_code == 404  # not deployed
    assert api.get(f"{FLOWS}/numbers/keys").status_code == 400
    view = api.post(f"{FLOWS}/numbers/deploy").json()
    assert view["deployed_version"] == 1
    assert view["scoring_uri"].endswith("/flows/numbers/score")
    keys = api.get(f"{FLOWS}/numbers/keys").json()

    ok = score(api, "numbers", keys["primary_key"], {"number": 3})
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"square": 9, "parity": "odd"}
    by_api_key = api.client.post(
        "/flows/numbers/score", json={"number": 4}, headers={"api-key": keys["secondary_key"]}
    )
    assert by_api_key.json() == {"square": 16, "parity": "even"}
    # a line that fails answers 400 naming the node, as Prompt flow's /score does
    failed = score(api, "numbers", keys["primary_key"], {"number": 13})
    assert failed.status_code == 400
    assert "Node 'square' failed" in failed.json()["error"]["message"]
    # keys: missing, wrong, another deployment's
    assert score(api, "numbers", None, {"number": 3}).status_code == 401
    assert score(api, "numbers", "f" * 64, {"number": 3}).status_code == 401
    other = api.deploy("echo-a")["primary_key"]
    assert score(api, "numbers", other, {"number": 3}).status_code == 403
    assert score(api, "numbers", keys["primary_key"], {"number": "x"}).status_code == 400

    # a new upload does not change what is served until it is deployed
    upload(api, DATA / "router", "numbers")
    assert score(api, "numbers", keys["primary_key"], {"number": 5}).json()["square"] == 25
    api.post(f"{FLOWS}/numbers/deploy")
    assert score(api, "numbers", keys["primary_key"], {"text": "Hm?"}).json()["kind"] == "question"

    regenerated = api.post(f"{FLOWS}/numbers/keys/regenerate", json={"key_type": "primary"}).json()
    assert score(api, "numbers", keys["primary_key"], {"text": "a"}).status_code == 401
    assert score(api, "numbers", regenerated["primary_key"], {"text": "a"}).status_code == 200

    assert api.delete(f"{FLOWS}/numbers/deploy").json()["deployed_version"] is None
    assert score(api, "numbers", regenerated["primary_key"], {"text": "a"}).status_code == 404
    actions = [e["action"] for e in api.get("/api/v1/projects/default/audit").json()]
    assert {"flow.upload", "flow.deploy", "flow.regenerate_key", "flow.undeploy"} <= set(actions)


def test_chat_flow_score_json_and_stream(api: Api) -> None:
    upload(api, DATA / "stream_chat", "talk")
    api.post(f"{FLOWS}/talk/deploy")
    key = api.get(f"{FLOWS}/talk/keys").json()["primary_key"]
    history = [{"inputs": {"question": "hello"}, "outputs": {"answer": "hi", "turn": 1}}]
    body = {"question": "how are you", "chat_history": history}

    answer = score(api, "talk", key, body)
    assert answer.json() == {"answer": "turn 2: you said how are you ", "turn": 2}

    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    with api.client.stream("POST", "/flows/talk/score", json=body, headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(x[6:]) for x in response.iter_lines() if x.startswith("data: ")]
    # Prompt flow's format: the other outputs first, then one event per chunk
    assert events[0] == {"turn": 2}
    assert [e["answer"] for e in events[1:]] == [
        "turn ",
        "2: ",
        "you ",
        "said ",
        "how ",
        "are ",
        "you ",
    ]


def test_a_single_input_flow_takes_a_plain_text_body(api: Api) -> None:
    upload(api, DATA / "router", "router")
    api.post(f"{FLOWS}/router/deploy")
    key = api.get(f"{FLOWS}/router/keys").json()["primary_key"]
    answer = score(api, "router", key, b"Plain text?")
    assert answer.status_code == 200 and answer.json()["kind"] == "question"
    # extra fields are ignored, as Prompt flow's /score ignores them
    assert score(api, "router", key, {"text": "x.", "colour": "red"}).json()["kind"] == "statement"


def test_readers_see_flows_and_runs_but_cannot_run_deploy_or_read_keys(api: Api) -> None:
    upload(api, DATA / "numbers", "numbers")
    api.post(f"{FLOWS}/numbers/deploy")
    token = api.post("/api/v1/users", json={"name": "rita"}).json()["token"]
    api.put("/api/v1/projects/default/members/rita", json={"role": "reader"})
    reader = {"Authorization": f"Bearer {token}"}
    c = api.client
    assert c.get(FLOWS, headers=reader).status_code == 200
    assert c.get(f"{FLOWS}/numbers", headers=reader).status_code == 200
    assert c.get("/api/v1/projects/default/runs", headers=reader).status_code == 200
    forbidden = [
        c.post(f"{FLOWS}/numbers/test", json={"inputs": {"number": 1}}, headers=reader),
        c.get(f"{FLOWS}/numbers/keys", headers=reader),
        c.post(f"{FLOWS}/numbers/deploy", headers=reader),
        c.delete(f"{FLOWS}/numbers", headers=reader),
        c.post(f"{FLOWS}/numbers/runs", data={"column_mapping": "{}"}, headers=reader),
        c.post(FLOWS, data={"name": "x"}, files={"file": ("f", b"x")}, headers=reader),
    ]
    assert [r.status_code for r in forbidden] == [403] * len(forbidden)
