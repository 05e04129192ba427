"""Usage records and cost: what clients were told they used is what gets billed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, LiveServer, start_server, stop_server

QUESTION = [{"role": "user", "content": "Name three colours."}]


def cli(server: LiveServer, *args: str) -> str:
    env = {
        **os.environ,
        "LMFOUNDRY_HOME": str(server.home),
        "LMFOUNDRY_URL": server.url,
        "LMFOUNDRY_TOKEN": server.token,
    }
    done = subprocess.run(
        [sys.executable, "-m", "lmfoundry", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def stream_usage(url: str, key: str, body: dict) -> dict:
    usage = {}
    with httpx.stream(
        "POST", url, json={**body, "stream": True}, headers={"api-key": key}, timeout=120
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return usage


@pytest.mark.slow
def test_billed_usage_equals_what_clients_received(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home")
    try:
        with server.client() as c:
            c.post("/api/v1/projects", json={"name": "billing"})  # default serves SmolLM2
            created = c.post(
                "/api/v1/projects/billing/serverless-deployments",
                json={
                    "name": "billed",
                    "model": "SmolLM2-135M-Instruct",
                    "price_input_per_1k": 0.5,
                    "price_output_per_1k": 2.0,
                },
            )
            assert created.status_code == 201, created.text
            project = created.json()["project"]
            url = created.json()["target_url"] + "chat/completions"
            key = c.get(f"/api/v1/projects/{project}/serverless-deployments/billed/keys").json()[
                "primary_key"
            ]
        received = []
        for n in range(4):
            body = {"messages": QUESTION, "max_tokens": 8 + 4 * n, "temperature": 0.5, "seed": n}
            reply = httpx.post(url, json=body, headers={"api-key": key}, timeout=120)
            received.append(reply.json()["usage"])
            received.append(stream_usage(url, key, body))
        rows = json.loads(cli(server, "usage", "--json", "--project", project))
        billed = next(r for r in rows if r["target"] == "billed")
        prompt = sum(u["prompt_tokens"] for u in received)
        completion = sum(u["completion_tokens"] for u in received)
        assert billed["requests"] == 8
        assert (billed["prompt_tokens"], billed["completion_tokens"]) == (prompt, completion)
        assert billed["cost"] == pytest.approx(prompt / 1000 * 0.5 + completion / 1000 * 2.0)
        table = cli(server, "usage", "--project", project)
        assert "billed" in table and "total" in table
        csv_text = cli(server, "usage", "--csv", "--group-by", "day", "--project", project)
        assert csv_text.splitlines()[0].startswith("day,requests,prompt_tokens")
    finally:
        stop_server(server)


def test_a_record_per_request_with_key_slot_and_status(api: Api) -> None:
    dep = api.deploy("metered", tokens_per_minute=10_000)
    url = "/serverless/metered/chat/completions"
    api.client.post(url, headers={"api-key": dep["primary_key"]}, json={"messages": QUESTION})
    api.client.post(
        url, headers={"api-key": dep["secondary_key"]}, json={"messages": QUESTION, "stream": True}
    )
    api.client.post(
        url,
        headers={"api-key": dep["secondary_key"]},
        json={"messages": QUESTION, "temperature": 5},
    )  # refused: no record
    by_key = api.get("/api/v1/projects/default/usage", params={"group_by": "key"}).json()
    assert {(r["key"], r["requests"]) for r in by_key} == {("primary", 1), ("secondary", 1)}
    platform = api.client.app.state.platform  # type: ignore[attr-defined]
    records = platform.metering.records(
        platform.access.project_access(platform.access.admin_principal(), "default").project_id
    )
    assert {r.status_code for r in records} == {200}
    assert any(r.streamed for r in records) and not all(r.streamed for r in records)
    assert all(r.ttft_ms is not None and r.latency_ms >= r.ttft_ms for r in records)
    bad = api.get("/api/v1/projects/default/usage", params={"group_by": "colour"})
    assert bad.status_code == 400


@pytest.mark.slow
def test_no_record_is_lost_when_the_server_is_stopped(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home")
    with server.client() as c:
        c.post(
            "/api/v1/projects/default/serverless-deployments",
            json={"name": "stopped", "model": "echo"},
        )
        key = c.get("/api/v1/projects/default/serverless-deployments/stopped/keys").json()[
            "primary_key"
        ]
    url = server.url + "/serverless/stopped/chat/completions"

    def call(n: int) -> int:
        body = {"messages": [{"role": "user", "content": f"request {n}"}]}
        return httpx.post(url, json=body, headers={"api-key": key}, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, range(200)))
    assert statuses.count(200) == 200
    assert stop_server(server, signal.SIGTERM) == 0  # right after the last response
    again = start_server(tmp_path / "home")
    try:
        with again.client() as c:
            rows = c.get("/api/v1/projects/default/usage").json()
        assert next(r for r in rows if r["target"] == "stopped")["requests"] == 200
    finally:
        stop_server(again)
