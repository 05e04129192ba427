"""Connections and flows through the real CLI against a real `lmfoundry up`: a secret never
shows up anywhere (API, CLI output, logs, run outputs), llm nodes reach a deployment through an
lmfoundry connection, `flow test --interactive` keeps the chat history, and the SDK answers
with the services' own views."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lmfoundry.client import Client
from lmfoundry.connections.models import ConnectionView
from lmfoundry.flows.views import (
    DeployedFlowView,
    FlowNode,
    FlowResult,
    FlowView,
    RunDetail,
    RunLine,
    RunView,
)
from tests.conftest import LiveServer, start_server, stop_server
from tests.flows.helpers import DATA, cli, cli_process

SECRET = "pf-secret-7d1c0e5b9a"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("flows-live") / "home")
    yield live
    stop_server(live)


def test_a_secret_appears_nowhere(server: LiveServer, tmp_path: Path) -> None:
    seen: list[str] = []  # everything a user or an operator could read
    connection_file = tmp_path / "connection.yaml"
    connection_file.write_text(
        "$schema: https://azuremlschemas.azureedge.net/promptflow/latest/"
        "CustomConnection.schema.json\n"
        "name: vault\ntype: custom\n"
        "configs:\n  endpoint: http://127.0.0.1:9/score\n"
        f"secrets:\n  key: {SECRET}\n"
    )
    seen.append(cli_process(server, "connections", "create", "--file", str(connection_file)))
    seen.append(cli(server, "connections", "list"))
    shown = cli(server, "connections", "show", "vault", "--json")
    assert json.loads(shown)["secrets"] == {"key": "***"}
    seen.append(shown)
    seen.append(cli(server, "connections", "update", "vault", "--config", "region=local"))

    tested = cli(server, "flow", "test", str(DATA / "leaky"), "--json")
    outputs = json.loads(tested)["outputs"]
    # the flow got the real key (its digest matches) and every copy of it was masked
    assert outputs["sha256"] == hashlib.sha256(SECRET.encode()).hexdigest()
    assert outputs["shown"] == "key=*** secrets={'key': '***'}"
    seen.append(tested)
    failed = cli(server, "flow", "test", str(DATA / "leaky"), "fail=true", ok=False)
    assert "refused key ***" in failed
    seen.append(failed)

    data = tmp_path / "lines.jsonl"
    data.write_text('{"fail": false}\n{"fail": true}\n{"fail": false}\n')
    ran = cli(server, "flow", "run", str(DATA / "leaky"), "--name", "leaky", "--data", str(data))
    seen.append(ran)
    with server.client() as api:
        run = api.get("/api/v1/projects/default/runs").json()[0]
        assert (run["completed_lines"], run["failed_lines"]) == (2, 1)
        seen.append(cli(server, "flow", "runs", "show", run["id"], "--json"))
        seen.append(cli(server, "flow", "runs", "show", run["id"]))
        seen.append(cli(server, "flow", "deploy", "leaky"))
        key = api.get("/api/v1/projects/default/flows/leaky/keys").json()["primary_key"]
        scored = httpx.post(
            f"{server.url}/flows/leaky/score", json={}, headers={"api-key": key}, timeout=60
        )
        assert scored.status_code == 200 and scored.json()["shown"].startswith("key=***")
        seen.append(scored.text)
        seen.append(
            httpx.post(
                f"{server.url}/flows/leaky/score",
                json={"fail": True},
                headers={"api-key": key},
                timeout=60,
            ).text
        )
        for path in (
            "/connections",
            "/connections/vault",
            "/flows",
            "/flows/leaky",
            "/runs",
            f"/runs/{run['id']}",
            "/audit",
        ):
            seen.append(api.get("/api/v1/projects/default" + path).text)

    logs = [server.log, *(server.home / "logs").rglob("*")]
    for path in logs:
        if path.is_file():
            seen.append(path.read_text(errors="replace"))
    flow_log = (server.home / "logs" / "flows" / "runs").glob("*.log")
    assert "the key is *** and the connection is" in next(flow_log).read_text()
    for path in server.home.rglob("*"):  # database, artifacts, everything at rest
        if path.is_file() and path.name != "master.key":
            assert SECRET.encode() not in path.read_bytes(), path
    for text in seen:
        assert SECRET not in text


def test_llm_node_through_an_lmfoundry_connection(server: LiveServer) -> None:
    """The echo engine repeats the last user message: this checks the plumbing (template,
    connection, URL, key, streaming), not a model's answer."""
    with server.client() as api:
        created = api.post(
            "/api/v1/projects/default/serverless-deployments",
            json={"name": "echo-dep", "model": "echo"},
        )
        assert created.status_code == 201, created.text
    cli(server, "connections", "create", "model", "--serverless", "echo-dep")
    for stream in ("false", "true"):
        answer = cli(
            server,
            "flow",
            "test",
            str(DATA / "llm_echo"),
            "question=What is up?",
            f"stream={stream}",
            "--json",
        )
        result = json.loads(answer)
        assert result["status"] == "completed", result
        assert result["outputs"] == {
            "answer": "Please answer: What is up?",
            "prompt": "Please answer: What is up?",
        }
    with server.client() as api:
        usage = api.get("/api/v1/projects/default/usage").json()
    assert any(u.get("target") == "echo-dep" for u in usage), usage


def test_interactive_chat_keeps_the_history(server: LiveServer) -> None:
    output = cli(
        server,
        "flow",
        "test",
        str(DATA / "stream_chat"),
        "--interactive",
        stdin="hello\nand again\n\n",
    )
    assert "turn 1: you said hello" in output
    assert "turn 2: you said and again" in output
    not_chat = cli(server, "flow", "test", str(DATA / "numbers"), "--interactive", ok=False)
    assert "--interactive needs a chat flow" in not_chat


def test_the_sdk_answers_with_the_services_views(server: LiveServer, tmp_path: Path) -> None:
    """Each SDK call returns the view its service returns, holding every field of the JSON."""
    data = tmp_path / "numbers.jsonl"
    data.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(11, 15)))
    with Client(url=server.url, token=server.token) as lmf, server.client() as api:
        put = lmf.put_connection(
            "sdk_conn", configs={"endpoint": "http://e"}, secrets={"key": SECRET}
        )
        assert isinstance(put, ConnectionView) and put.secrets == {"key": "***"}
        assert lmf.get_connection("sdk_conn") == put
        assert put in lmf.connections()
        as_json = api.get("/api/v1/projects/default/connections/sdk_conn").json()
        assert put.model_dump(mode="json") == as_json

        flow = lmf.upload_flow(DATA / "numbers", "sdk-numbers")
        assert isinstance(flow, FlowView) and (flow.version, flow.deployed_version) == (1, None)
        assert flow.nodes[0] == FlowNode(name="square", type="python", aggregation=False)
        assert lmf.get_flow("sdk-numbers") == flow and flow in lmf.flows()
        as_json = api.get("/api/v1/projects/default/flows/sdk-numbers").json()
        assert flow.model_dump(mode="json") == as_json

        result = lmf.test_flow("sdk-numbers", {"number": 3})
        assert isinstance(result, FlowResult) and result.status == "completed"
        assert result.outputs == {"square": 9, "parity": "odd"}
        assert result.metrics == {"lines": 1, "sum_of_squares": 9}
        failed = lmf.test_flow(DATA / "numbers", {"number": 13})  # a folder, not uploaded
        assert failed.status == "failed" and failed.error and failed.error["node"] == "square"

        created = lmf.create_run("sdk-numbers", data, {"number": "${data.n}"}, name="sdk_run")
        assert isinstance(created, RunView) and (created.id, created.total_lines) == ("sdk_run", 4)
        run = lmf.wait_run("sdk_run", timeout=120)
        assert isinstance(run, RunDetail) and run.status == "completed"
        assert (run.completed_lines, run.failed_lines) == (3, 1)
        assert all(isinstance(line, RunLine) for line in run.lines)
        assert [line.status for line in run.lines] == [
            "completed",
            "completed",
            "failed",
            "completed",
        ]
        assert run.lines[0].outputs == {"square": 121, "parity": "odd"}
        as_json = api.get("/api/v1/projects/default/runs/sdk_run").json()
        assert run.model_dump(mode="json") == as_json
        assert [r.id for r in lmf.runs("sdk-numbers")] == ["sdk_run"]
        assert lmf.cancel_run("sdk_run").status == "completed"  # finished: nothing to cancel

        deployed = lmf.deploy_flow("sdk-numbers")
        assert isinstance(deployed, DeployedFlowView) and deployed.deployed_version == 1
        assert deployed.scoring_uri == f"{server.url}/flows/sdk-numbers/score"
        assert deployed.defaulted_connections == {}
        key = lmf.flow_keys("sdk-numbers").primary_key
        scored = httpx.post(
            deployed.scoring_uri, json={"number": 4}, headers={"api-key": key}, timeout=60
        )
        assert scored.json() == {"square": 16, "parity": "even"}
        undeployed = lmf.undeploy_flow("sdk-numbers")
        assert (undeployed.deployed_version, undeployed.scoring_uri) == (None, None)
