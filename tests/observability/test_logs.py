"""Structured logs: `lmfoundry up --log-format json` writes one JSON line per request, and the
request's id is the same in the response header, the line, the usage record and the audit log;
no key or token appears in the lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy.orm import Session

from lmfoundry.observability import logs
from lmfoundry.storage.models import UsageRecord
from tests.conftest import ADMIN_TOKEN, database_url_for, start_server, stop_server

QUESTION = [{"role": "user", "content": "Say hi."}]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the output that is a JSON object (the console's banner is not)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))  # a line that starts like JSON must parse
    return found


@pytest.mark.slow
def test_one_json_line_per_request_with_the_ids_that_tie_it_together(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home, args=["--log-format", "json"])
    try:
        with server.client() as api:
            created = api.post(
                "/api/v1/projects/default/serverless-deployments",
                json={"name": "logged", "model": "echo"},
            )
            assert created.status_code == 201, created.text
            keys = api.get("/api/v1/projects/default/serverless-deployments/logged/keys").json()
            default_keys = api.get(
                "/api/v1/projects/default/serverless-deployments/smollm2-135m-instruct/keys"
            ).json()
            url = created.json()["target_url"] + "chat/completions"
            answered = httpx.post(
                url,
                json={"messages": QUESTION, "max_tokens": 8},
                headers={"api-key": keys["primary_key"]},
            )
            assert answered.status_code == 200, answered.text
            streamed = httpx.post(
                url,
                json={"messages": QUESTION, "max_tokens": 8, "stream": True},
                headers={"Authorization": f"Bearer {keys['secondary_key']}"},
            )
            assert streamed.status_code == 200
            refused = httpx.post(url, json={"messages": QUESTION}, headers={"api-key": "nope"})
            embedder = api.post(
                "/api/v1/projects/default/serverless-deployments",
                json={"name": "vectors", "model": "all-MiniLM-L6-v2"},
            )
            assert embedder.status_code == 201, embedder.text
            embed_key = api.get(
                "/api/v1/projects/default/serverless-deployments/vectors/keys"
            ).json()["primary_key"]
            embedded = httpx.post(
                embedder.json()["target_url"] + "v1/embeddings",
                json={"input": ["a cat", "a kitten"]},
                headers={"api-key": embed_key},
                timeout=120,
            )
            assert embedded.status_code == 200, embedded.text
            assert refused.status_code == 401
            regenerated = api.post(
                "/api/v1/projects/default/serverless-deployments/logged/keys/regenerate",
                json={"key_type": "primary"},
            )
            assert regenerated.status_code == 200, regenerated.text
            audit = api.get("/api/v1/projects/default/audit").json()
    finally:
        stop_server(server)
    output = server.output()
    lines = json_lines(output)
    requests = {
        line["request_id"]: line for line in lines if line["logger"] == "lmfoundry.requests"
    }

    line = requests[answered.headers["x-request-id"]]
    usage = answered.json()["usage"]
    assert line["method"] == "POST"
    assert line["route"] == "/serverless/{name}/chat/completions"
    assert line["status"] == 200
    assert (line["project"], line["target_kind"], line["target"], line["deployment"]) == (
        "default",
        "serverless",
        "logged",
        "logged",
    )
    assert line["key_id"] == "serverless/logged/primary"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert line["latency_ms"] > 0
    assert line["level"] == "info" and line["message"] == "request"

    stream_line = requests[streamed.headers["x-request-id"]]
    assert stream_line["key_id"] == "serverless/logged/secondary"
    assert stream_line["completion_tokens"] > 0  # counted when the stream ended

    refusal = requests[refused.headers["x-request-id"]]
    assert refusal["status"] == 401
    assert "key_id" not in refusal  # no key opened it

    vectors = requests[embedded.headers["x-request-id"]]
    assert (vectors["target"], vectors["key_id"]) == ("vectors", "serverless/vectors/primary")
    assert vectors["prompt_tokens"] == embedded.json()["usage"]["prompt_tokens"]

    changed = requests[regenerated.headers["x-request-id"]]
    assert (
        changed["route"]
        == "/api/v1/projects/{project}/serverless-deployments/{name}/keys/regenerate"
    )
    by_action = {e["action"]: e for e in audit if e["target"] == "logged"}
    assert by_action["serverless.regenerate_key"]["request_id"] == changed["request_id"]
    assert by_action["serverless.create"]["request_id"] == created.headers["x-request-id"]

    engine = sqlalchemy.create_engine(database_url_for(home))
    with Session(engine) as s:
        record = s.scalar(
            sqlalchemy.select(UsageRecord).where(
                UsageRecord.request_id == answered.headers["x-request-id"]
            )
        )
    engine.dispose()
    assert record is not None
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )

    # uvicorn's own records are JSON too, and its text access log is gone
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    assert '"POST /serverless/logged/chat/completions HTTP/1.1" 200' not in output
    secrets = [ADMIN_TOKEN, embed_key, *keys.values(), *regenerated.json().values()]
    secrets += default_keys.values()
    for secret in secrets:
        assert secret not in output


def test_the_formatter_writes_a_request_line_as_one_object() -> None:
    info = logs.RequestInfo("abc", "GET", "/healthz", route="/healthz", status=200)
    record = logging.LogRecord("lmfoundry.requests", logging.INFO, __file__, 1, "request", (), None)
    record.request = info.fields()
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["request_id"] == "abc" and line["status"] == 200 and line["route"] == "/healthz"
    assert "project" not in line  # what the request never had is left out
    assert logs.logging_config("text", "info") is None
    assert logs.current_request_id() is None  # outside a request
