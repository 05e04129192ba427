"""Connections bound when a flow runs (Prompt flow's `--connections node.input=name` and the
portal's picker): checked against the flow and the project, bound by default when one
connection fits, saved on a flow, kept by runs and deploys; and `flow test --local` with a
connection.yaml. The tutorial itself, against a real endpoint: test_tutorial_pasted.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows import bindings
from lmfoundry.flows.dag import load_dag
from tests.conftest import Api
from tests.flows.helpers import CONNECTIONS, FLOWS, RUNS, cli, upload, wait_run, write_flow
from tests.flows.test_tutorial_pasted import SLOT, write_tutorial

SECRET = "peek-secret-5b0c9e17"
PEEK_DAG = """
inputs:
  text: {type: string, default: hi}
outputs:
  out: {type: object, reference: "${peek.output}"}
nodes:
- name: peek
  type: python
  source: {type: code, path: peek.py}
  inputs:
    text: ${inputs.text}
"""
PEEK_CODE = """
import hashlib

from promptflow import tool
from promptflow.connections import CustomConnection


@tool
def peek(text: str, conn: CustomConnection) -> dict:
    return {
        "text": text,
        "endpoint": conn.endpoint,
        "key_sha256": hashlib.sha256(conn.key.encode()).hexdigest(),
        "key": conn.key,  # masked on its way out
    }
"""


def peek_flow(folder: Path) -> Path:
    return write_flow(folder, PEEK_DAG, {"peek.py": PEEK_CODE})


def connection(api: Api, name: str, kind: str = "custom") -> None:
    if kind == "custom":
        body: dict[str, Any] = {
            "configs": {"endpoint": f"http://{name}.example/score"},
            "secrets": {"key": SECRET + name},
        }
    else:
        body = {"type": kind, "configs": {}, "secrets": {}}
    response = api.put(f"{CONNECTIONS}/{name}", json=body)
    assert response.status_code in (200, 201), response.text


def refused(response: Any, param: str, *words: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error["message"]
    return str(error["message"])


# -- checking, without a server ---------------------------------------------------------------


def test_the_tutorial_has_one_open_connection_input(tmp_path: Path) -> None:
    dag = load_dag(write_tutorial(tmp_path / "flow"))
    (slot,) = bindings.slots(dag)
    assert (slot.key, slot.takes, slot.declared) == (SLOT, "CustomConnection", None)
    assert slot.types == ("custom", "lmfoundry")

    chosen = bindings.check(dag, {}, {"connection": "custom"})
    assert chosen.bindings == chosen.defaulted == {SLOT: "connection"}
    bound = bindings.apply(dag, chosen.bindings).node("integrate_with_promptflow")
    assert bound.connection_inputs == {"connection": "connection"}
    assert bound.inputs["connection"] == "connection"

    given = bindings.check(dag, {SLOT: "mine"}, {"mine": "lmfoundry", "other": "custom"})
    assert (given.bindings, given.defaulted) == ({SLOT: "mine"}, {})


@pytest.mark.parametrize(
    ("given", "available", "param", "words"),
    [
        ({}, {}, f"connections.{SLOT}", ["no connection of type custom or lmfoundry", SLOT]),
        ({}, {"a": "custom", "b": "custom"}, f"connections.{SLOT}", ["(a, b)", f"{SLOT}=NAME"]),
        ({"nope.connection": "a"}, {"a": "custom"}, "connections.nope.connection", ["node"]),
        (
            {"integrate_with_promptflow.input_data": "a"},
            {"a": "custom"},
            "connections.integrate_with_promptflow.input_data",
            ["does not take a connection", "its connection inputs: connection"],
        ),
        ({SLOT: "gone"}, {"a": "custom"}, f"connections.{SLOT}", ["'gone'", "does not exist"]),
    ],
)
def test_each_problem_names_the_input_and_the_fix(
    tmp_path: Path, given: dict[str, str], available: dict[str, str], param: str, words: list[str]
) -> None:
    dag = load_dag(write_tutorial(tmp_path / "flow"))
    with pytest.raises(InvalidRequest) as caught:
        bindings.check(dag, given, available)
    assert caught.value.param == param
    for word in words:
        assert word in caught.value.message


def test_a_connection_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    code = PEEK_CODE.replace("conn: CustomConnection", "conn: SerpConnection")
    dag = load_dag(write_flow(tmp_path / "flow", PEEK_DAG, {"peek.py": code}))
    with pytest.raises(InvalidRequest) as caught:
        bindings.check(dag, {"peek.conn": "deployment"}, {"deployment": "lmfoundry"})
    assert "takes a SerpConnection" in caught.value.message
    assert "of type 'lmfoundry'" in caught.value.message
    # and by default only a custom connection fits it
    assert bindings.check(dag, {}, {"d": "lmfoundry", "c": "custom"}).defaulted == {
        "peek.conn": "c"
    }


def test_parse_pairs_takes_the_flags_form() -> None:
    assert bindings.parse_pairs(["a.connection=x", " b.conn = y "]) == {
        "a.connection": "x",
        "b.conn": "y",
    }
    for bad in ("a=x", "a.connection", "a.connection="):
        with pytest.raises(InvalidRequest, match=r"NODE\.INPUT=CONNECTION"):
            bindings.parse_pairs([bad])


# -- through the API ----------------------------------------------------------------------------


def test_bindings_from_upload_to_deploy(api: Api, tmp_path: Path) -> None:
    view = upload(api, peek_flow(tmp_path / "peek"), "peek")  # accepted with the input open
    assert view["connection_inputs"] == [
        {
            "key": "peek.conn",
            "node": "peek",
            "input": "conn",
            "takes": "CustomConnection",
            "types": ["custom", "lmfoundry"],
            "declared": None,
            "bound": None,
        }
    ]
    test = f"{FLOWS}/peek/test"
    refused(api.post(test, json={}), "connections.peek.conn", "--connections peek.conn=NAME")

    connection(api, "alpha")
    once = api.post(test, json={})
    assert once.status_code == 200, once.text
    result = once.json()
    assert result["status"] == "completed", result
    assert result["defaulted_connections"] == {"peek.conn": "alpha"}
    assert result["outputs"]["out"]["endpoint"] == "http://alpha.example/score"
    assert result["outputs"]["out"]["key"] == "***"  # the flow had it; the answer masks it
    digest = hashlib.sha256((SECRET + "alpha").encode()).hexdigest()
    assert result["outputs"]["out"]["key_sha256"] == digest

    connection(api, "beta")
    refused(api.post(test, json={}), "connections.peek.conn", "(alpha, beta)")
    chosen = api.post(test, json={"connections": {"peek.conn": "beta"}}).json()
    assert chosen["outputs"]["out"]["endpoint"] == "http://beta.example/score"
    assert chosen["defaulted_connections"] == {}
    assert chosen["connection_bindings"] == {"peek.conn": "beta"}

    bad = {"connections": {"peek.text": "beta"}}
    refused(api.post(test, json=bad), "connections.peek.text", "does not take a connection")
    bad = {"connections": {"peek.conn": "gamma"}}
    refused(api.post(test, json=bad), "connections.peek.conn", "'gamma'", "does not exist")

    # saved on the flow (the studio's picker): tests use it, a new version keeps it
    saved = api.put(f"{FLOWS}/peek/connections", json={"connections": {"peek.conn": "beta"}})
    assert saved.status_code == 200, saved.text
    assert saved.json()["connection_bindings"] == {"peek.conn": "beta"}
    assert saved.json()["connection_inputs"][0]["bound"] == "beta"
    again = upload(api, peek_flow(tmp_path / "peek"), "peek")
    assert again["version"] == 2 and again["connection_bindings"] == {"peek.conn": "beta"}
    out = api.post(test, json={}).json()["outputs"]["out"]
    assert out["endpoint"] == "http://beta.example/score"

    # a named run binds what it is given, and keeps it
    run = api.post(
        f"{FLOWS}/peek/runs",
        data={
            "column_mapping": json.dumps({"text": "${data.q}"}),
            "connections": json.dumps({"peek.conn": "alpha"}),
            "name": "peek_run_1",
        },
        files={"data": ("lines.jsonl", b'{"q": "one"}\n{"q": "two"}\n')},
    )
    assert run.status_code == 202, run.text
    assert run.json()["id"] == "peek_run_1"
    assert run.json()["connection_bindings"] == {"peek.conn": "alpha"}
    done = wait_run(api, "peek_run_1")
    assert done["status"] == "completed", done
    lines = api.get(f"{RUNS}/peek_run_1").json()["lines"]
    assert [line["outputs"]["out"]["endpoint"] for line in lines] == [
        "http://alpha.example/score"
    ] * 2
    taken = api.post(f"{FLOWS}/peek/runs", data={"name": "peek_run_1"}, files=run_files())
    assert taken.status_code == 409, taken.text

    # a deploy saves the binding it is given; the score uses it
    deployed = api.post(f"{FLOWS}/peek/deploy", json={"connections": {"peek.conn": "alpha"}})
    assert deployed.status_code == 200, deployed.text
    assert deployed.json()["connection_bindings"] == {"peek.conn": "alpha"}
    key = api.get(f"{FLOWS}/peek/keys").json()["primary_key"]
    scored = api.client.post("/flows/peek/score", json={"text": "x"}, headers={"api-key": key})
    assert scored.status_code == 200, scored.text
    assert scored.json()["out"]["endpoint"] == "http://alpha.example/score"


def run_files() -> dict[str, tuple[str, bytes]]:
    return {"data": ("lines.jsonl", b'{"text": "one"}\n')}


# -- on this machine ----------------------------------------------------------------------------

CONNECTION_YAML = """\
$schema: https://azuremlschemas.azureedge.net/promptflow/latest/CustomConnection.schema.json
name: {name}
type: custom
configs:
  endpoint: http://{name}.example/score
secrets:
  key: {secret}
"""


def test_flow_test_local_reads_connection_yaml(tmp_path: Path) -> None:
    local = SimpleNamespace(home=tmp_path / "home")  # no server: only a home for the logs
    folder = peek_flow(tmp_path / "peek")
    (folder / "connection.yaml").write_text(
        CONNECTION_YAML.format(name="here", secret=SECRET + "here")
    )
    output = cli(local, "flow", "test", str(folder), "--local", "text=local", "--json")  # type: ignore[arg-type]
    result = json.loads(output[output.index("{") :])
    assert result["status"] == "completed", result
    out = result["outputs"]["out"]
    assert out["text"] == "local" and out["endpoint"] == "http://here.example/score"
    assert out["key_sha256"] == hashlib.sha256((SECRET + "here").encode()).hexdigest()
    assert SECRET not in output  # the secret is never printed

    printed = cli(local, "flow", "test", "--flow", str(folder), "--local", "--inputs", "text=x")  # type: ignore[arg-type]
    assert "Bound peek.conn to connection 'here'" in printed
    assert '"endpoint": "http://here.example/score"' in printed and SECRET not in printed

    other = tmp_path / "other.yaml"
    other.write_text(CONNECTION_YAML.format(name="there", secret=SECRET + "there"))
    both = ["--connection-file", str(folder / "connection.yaml"), "--connection-file", str(other)]
    failed = cli(local, "flow", "test", str(folder), "--local", *both, ok=False)  # type: ignore[arg-type]
    assert "--connections peek.conn=NAME" in failed
    chosen = cli(
        local,  # type: ignore[arg-type]
        "flow",
        "test",
        str(folder),
        "--local",
        *both,
        "--connections",
        "peek.conn=there",
        "--json",
    )
    assert json.loads(chosen)["outputs"]["out"]["endpoint"] == "http://there.example/score"
    assert SECRET not in chosen


def test_readers_cannot_bind_and_no_project_lends_its_connections(api: Api, tmp_path: Path) -> None:
    upload(api, peek_flow(tmp_path / "peek"), "peek")
    connection(api, "alpha")
    token = api.post("/api/v1/users", json={"name": "rita"}).json()["token"]
    api.put("/api/v1/projects/default/members/rita", json={"role": "reader"})
    reader = {"Authorization": f"Bearer {token}"}
    body = {"connections": {"peek.conn": "alpha"}}
    put = api.client.put(f"{FLOWS}/peek/connections", json=body, headers=reader)
    assert put.status_code == 403, put.text
    assert api.get(f"{FLOWS}/peek").json()["connection_bindings"] == {}

    # a connection of another project is not this project's to bind
    assert api.post("/api/v1/projects", json={"name": "other"}).status_code == 201
    theirs = {"configs": {"endpoint": "http://theirs.example"}, "secrets": {"key": "k" * 8}}
    assert api.put("/api/v1/projects/other/connections/theirs", json=theirs).is_success
    bad = {"connections": {"peek.conn": "theirs"}}
    refused(api.post(f"{FLOWS}/peek/test", json=bad), "connections.peek.conn", "does not exist")


def test_environment_variables_read_connection_fields_as_prompt_flow_does(
    api: Api, tmp_path: Path
) -> None:
    """`KEY: ${alpha.key}` is the connection's secret in the flow's environment (masked in
    what the flow answers); `${alpha.endpoint}` a config; a missing field is a 400."""
    connection(api, "alpha")
    dag = """
    environment_variables:
      KEY: ${alpha.key}
      URL: ${alpha.endpoint}
      PLAIN: ${not a reference}
    inputs: {}
    outputs: {out: {type: object, reference: "${env.output}"}}
    nodes:
    - name: env
      type: python
      source: {type: code, path: env.py}
      inputs: {}
    """
    code = """
    import hashlib
    import os

    from promptflow import tool


    @tool
    def env() -> dict:
        key = os.environ["KEY"]
        return {"url": os.environ["URL"], "plain": os.environ["PLAIN"], "key": key,
                "key_sha256": hashlib.sha256(key.encode()).hexdigest()}
    """
    flow = write_flow(tmp_path / "env", dag, {"env.py": code})
    assert load_dag(flow).connection_names == ["alpha"]
    upload(api, flow, "env")
    answer = api.post(f"{FLOWS}/env/test", json={"inputs": {}})
    assert answer.status_code == 200, answer.text
    out = answer.json()["outputs"]["out"]
    assert out["url"] == "http://alpha.example/score" and out["plain"] == "${not a reference}"
    assert out["key_sha256"] == hashlib.sha256((SECRET + "alpha").encode()).hexdigest()
    assert SECRET not in answer.text  # the secret itself is masked

    (flow / "flow.dag.yaml").write_text(
        (flow / "flow.dag.yaml").read_text().replace("${alpha.endpoint}", "${alpha.url}")
    )
    upload(api, flow, "env2")
    missing = api.post(f"{FLOWS}/env2/test", json={"inputs": {}})
    refused(missing, "environment_variables.URL", "has no field 'url'", "endpoint, key")
    assert SECRET not in missing.text
