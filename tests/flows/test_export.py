"""`lmfoundry flow export --to agent-framework`: the exported program, run with
agent-framework-core, gives what lmfoundry gives for the same inputs — line by line, batch
metrics, bypassed branches, failures — and llm nodes answer the same through the same
deployment. Flows it cannot translate are refused, naming the node."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows.export import REQUIREMENTS, export_flow
from tests.conftest import Api, LiveServer, start_server, stop_server
from tests.flows.helpers import DATA, FLOWS, run_once, upload, wait_run, write_flow

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("agent_framework") is None
    or importlib.util.find_spec("agent_framework_openai") is None,
    reason="agent-framework-core and agent-framework-openai are not installed "
    "(they are in the dev extra: scripts/install --dev)",
)

BRANCH_LINES = [
    {"text": "Is it raining?"},
    {"text": "It rains a lot"},
    {"text": "Who goes there?", "shout": True},
    {"text": "boom?"},  # on_question raises: the line fails, the others go on
    {"text": "Calm seas"},
]


def run_program(
    out: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python OUT/main.py ARGS` (no PYTHON* variables, no user site)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LMFOUNDRY_")}
    environ.pop("PYTHONPATH", None)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-E", "-s", str(out / "main.py"), *args],
        capture_output=True,
        text=True,
        cwd=out.parent,
        env=environ,
        timeout=300,
    )


def start_batch(api: Any, flow: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    created = api.post(
        f"{FLOWS}/{flow}/runs",
        data={"column_mapping": "{}"},
        files={"data": ("lines.jsonl", data)},
    )
    assert created.status_code == 202, created.text
    return wait_run(api, created.json()["id"], timeout=300)


def lmfoundry(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LMFOUNDRY_")}
    return subprocess.run(
        [sys.executable, "-m", "lmfoundry", *args],
        capture_output=True,
        text=True,
        env={**environ, "COLUMNS": "200"},
        timeout=120,
    )


def test_activate_bypass_and_aggregation_give_lmfoundrys_outputs(api: Api, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    done = lmfoundry(
        "flow", "export", str(DATA / "export_branch"), "--to", "agent-framework", str(out)
    )
    assert done.returncode == 0, done.stderr
    written = export_flow(DATA / "export_branch", "agent-framework", tmp_path / "again")
    assert f"Wrote {len(written)} files to {out}" in done.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == written
    assert {"main.py", "flow_runtime.py", "promptflow/__init__.py", "helpers/after.py"} <= set(
        written
    )
    # the flow's own code is copied verbatim; the program pins what it was tested with
    for name in ("answer.py", "helpers/after.py", "statement.jinja2"):
        assert (out / name).read_bytes() == (DATA / "export_branch" / name).read_bytes()
    assert (out / "requirements.txt").read_text().split() == list(REQUIREMENTS)
    program = (out / "main.py").read_text()
    assert "condition=ACTIVATE['on_question'].holds" in program
    assert "builder.add_fan_in_edges(lines, stats)" in program
    assert "# asked: left out, it reads an aggregation node" in program

    upload(api, DATA / "export_branch", "branch")
    # one line, as `lmfoundry flow test` runs it (aggregation over that line included)
    for inputs in BRANCH_LINES:
        expected = run_once(api, "branch", **inputs)
        pairs = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in inputs.items()]
        done = run_program(out, "--json", *pairs)
        got = json.loads(done.stdout)
        assert got["status"] == expected["status"], (done.stdout, done.stderr, expected)
        assert done.returncode == (0 if expected["status"] == "completed" else 1)
        if expected["status"] == "completed":
            assert got["outputs"] == expected["outputs"]
            assert got["metrics"] == expected["metrics"]
        else:
            assert got["error"]["node"] == expected["error"]["node"] == "on_question"
            assert got["error"]["message"] == expected["error"]["message"]
            assert "answer.py" in got["error"]["traceback"]
            assert "flow_runtime" not in got["error"]["traceback"]
    # printed as `lmfoundry flow test` prints it: the outputs as JSON, then the metrics
    shown = run_program(out, "text=It rains")
    assert shown.returncode == 0, shown.stderr
    expected = run_once(api, "branch", text="It rains")
    assert shown.stdout == (
        json.dumps(expected["outputs"], indent=2)
        + f"\nmetrics: {json.dumps(expected['metrics'])}\n"
    )
    assert json.loads(shown.stdout.rsplit("metrics:", 1)[0])["statement"] == "[It]\n[rains]\n"
    failed = run_program(out, "text=boom?")
    assert failed.returncode == 1
    assert "Failed: Node 'on_question' failed: ValueError: cannot answer 'boom?'" in failed.stderr

    # a batch: every line, then the aggregation over the completed ones, as `flow run` does
    run = start_batch(api, "branch", BRANCH_LINES)
    data = tmp_path / "lines.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in BRANCH_LINES))
    done = run_program(out, "--data", str(data))
    batch = json.loads(done.stdout)
    assert done.returncode == 1  # one line failed
    assert batch["metrics"] == run["metrics"]
    assert (batch["metrics"]["questions"], batch["metrics"]["lines"]) == (2, 4)
    assert [line["status"] for line in batch["lines"]] == [line["status"] for line in run["lines"]]
    for mine, theirs in zip(batch["lines"], run["lines"], strict=True):
        assert mine["line_number"] == theirs["line_number"]
        if theirs["status"] == "completed":
            assert mine["outputs"] == theirs["outputs"]
        else:
            assert mine["error"]["message"] == theirs["error"]["message"]
            assert mine["error"]["node"] == theirs["error"]["node"] == "on_question"
    bypassed = batch["lines"][1]["outputs"]
    assert bypassed["question"] is None and bypassed["after_question"] is None
    assert bypassed["merged"].startswith("(no question) | ")  # the parameter's default


HISTORY = [{"inputs": {"question": "hi"}, "outputs": {"answer": "turn 1: you said hi"}}]


@pytest.mark.parametrize(
    ("flow", "lines"),
    [
        ("numbers", [{"number": 4}, {"number": 13}, {"number": 7}]),  # 13 fails in square.py
        ("router", [{"text": "Is it raining?"}, {"text": "It rains."}]),
        ("stream_chat", [{"question": "hello"}, {"question": "again", "chat_history": HISTORY}]),
        # a class tool, literals converted to annotations, ${node} and ${flow.x}, .words[0]
        ("export_tools", [{"text": "Bob and Alice"}, {"text": "Hi"}]),
    ],
)
def test_the_other_test_flows_give_the_same_outputs(
    api: Api, tmp_path: Path, flow: str, lines: list[dict[str, Any]]
) -> None:
    out = tmp_path / flow
    export_flow(DATA / flow, "agent-framework", out)
    upload(api, DATA / flow, flow.replace("_", "-"))
    for inputs in lines:
        expected = run_once(api, flow.replace("_", "-"), **inputs)
        done = run_program(out, "--json", "--inputs-json", json.dumps(inputs))
        got = json.loads(done.stdout)
        assert got["status"] == expected["status"], (done.stdout, done.stderr)
        if expected["status"] == "completed":
            assert (got["outputs"], got["metrics"]) == (expected["outputs"], expected["metrics"])
        else:
            assert got["error"]["message"] == expected["error"]["message"]


def test_additional_includes_are_copied_beside_the_flow(tmp_path: Path) -> None:
    """As in Prompt flow's snapshot: `../shared/polite.py` is `polite.py` beside main.py."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "polite.py").write_text(
        "from promptflow import tool\n\n\n@tool\ndef polite(x: str) -> str:\n"
        '    return f"please, {x}"\n'
    )
    flow = write_flow(
        tmp_path / "flow",
        """
        additional_includes: [../shared/polite.py]
        inputs: {x: {type: string}}
        outputs: {y: {type: string, reference: "${ask.output}"}}
        nodes:
        - name: ask
          type: python
          source: {type: code, path: polite.py}
          inputs: {x: "${inputs.x}"}
        """,
    )
    written = export_flow(flow, "agent-framework", tmp_path / "out")
    assert "polite.py" in written and not (flow / "polite.py").exists()
    done = run_program(tmp_path / "out", "x=sit down")
    assert (done.returncode, done.stdout) == (0, "please, sit down\n"), done.stderr


def test_flows_it_cannot_translate_are_refused_naming_the_node(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "flow",
        """
        inputs: {x: {type: string}}
        outputs: {y: {type: string, reference: "${pick.output}"}}
        nodes:
        - name: pick
          type: python
          source: {type: code, path: pick.py}
          inputs: {x: "${inputs.x}", when: 2026-12-03}
        """,
        {"pick.py": "from promptflow import tool\n\n@tool\ndef pick(x, when):\n    return x\n"},
    )
    with pytest.raises(InvalidRequest) as refused:
        export_flow(flow, "agent-framework", tmp_path / "out")
    assert "node 'pick': input 'when' is a date, not a JSON value" in refused.value.message
    assert not (tmp_path / "out").exists()  # nothing written
    # the command line says the same, with a usage error's exit code
    shown = lmfoundry("flow", "export", str(flow), "--to", "agent-framework", str(tmp_path / "o"))
    assert shown.returncode == 2
    assert "Cannot export this flow to Agent Framework: node 'pick'" in shown.stderr

    with pytest.raises(InvalidRequest) as unknown:
        export_flow(DATA / "export_branch", "langgraph", tmp_path / "out")
    assert "the targets are agent-framework" in unknown.value.message

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidRequest) as busy:
        export_flow(DATA / "export_branch", "agent-framework", tmp_path / "busy")
    assert "not an empty folder" in busy.value.message

    prompty = write_flow(
        tmp_path / "prompty",
        """
        inputs: {x: {type: string}}
        outputs: {y: {type: string, reference: "${ask.output}"}}
        nodes:
        - name: ask
          type: python
          source: {type: code, path: ask.py}
          inputs: {x: "${inputs.x}"}
        """,
        {
            "ask.py": "from promptflow import tool\nfrom promptflow.core import Prompty\n\n"
            "@tool\ndef ask(x):\n    return Prompty.load('a.prompty')(x=x)\n"
        },
    )
    with pytest.raises(InvalidRequest) as lacking:
        export_flow(prompty, "agent-framework", tmp_path / "out3")
    assert (
        "node 'ask': ask.py has `from promptflow.core import Prompty`, which the exported "
        "program does not provide" in lacking.value.message
    )

    taken = write_flow(
        tmp_path / "taken",
        """
        inputs: {x: {type: string}}
        outputs: {y: {type: string, reference: "${main.output}"}}
        nodes:
        - name: main
          type: python
          source: {type: code, path: main.py}
          inputs: {x: "${inputs.x}"}
        """,
        {"main.py": "from promptflow import tool\n\n@tool\ndef main(x):\n    return x\n"},
    )
    with pytest.raises(InvalidRequest) as clash:
        export_flow(taken, "agent-framework", tmp_path / "out2")
    assert "'main.py', a name the exported program uses" in clash.value.message


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # one line at a time, as the program is run below: llama.cpp batches concurrent requests,
    # and a batched greedy decode may pick other tokens than a lone one
    live = start_server(
        tmp_path_factory.mktemp("export-live") / "home", env={"LMFOUNDRY_FLOW_WORKERS": "1"}
    )
    yield live
    stop_server(live)


def test_an_llm_node_answers_the_same_through_the_same_deployment(
    server: LiveServer, tmp_path: Path
) -> None:
    """SmolLM2 on llama.cpp, greedy: lmfoundry's flow and the Agent Framework program send the
    same messages to the same deployment and must get the same answer."""
    with server.client() as api:
        # `lmfoundry up` deploys the bundled SmolLM2 in the default project
        deployments = api.get("/api/v1/projects/default/serverless-deployments").json()
        smol = next(d for d in deployments if d["model"] == "SmolLM2-135M-Instruct")
        target = smol["target_url"]
        keys = f"/api/v1/projects/default/serverless-deployments/{smol['name']}/keys"
        key = api.get(keys).json()
        connection = api.put(
            "/api/v1/projects/default/connections/model",
            json={
                "type": "lmfoundry",
                "configs": {"target_kind": "serverless", "target": smol["name"]},
                "secrets": {},
            },
        )
        assert connection.status_code in (200, 201), connection.text
        upload(api, DATA / "export_llm", "ask")  # type: ignore[arg-type]
        questions = ["What is the capital of France?", "Name a color."]
        expected = [run_once(api, "ask", question=q) for q in questions]  # type: ignore[arg-type]
        run = start_batch(api, "ask", [{"question": q} for q in questions])

    out = tmp_path / "exported"
    export_flow(DATA / "export_llm", "agent-framework", out)
    assert "MODEL_ENDPOINT, MODEL_KEY" in (out / "main.py").read_text()
    env = {"MODEL_ENDPOINT": target, "MODEL_KEY": key["primary_key"]}
    for question, theirs in zip(questions, expected, strict=True):
        assert theirs["status"] == "completed", theirs
        assert theirs["outputs"]["answer"].strip()  # the model said something
        done = run_program(out, "--json", f"question={question}", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["outputs"] == theirs["outputs"]
    data = tmp_path / "lines.jsonl"
    data.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    done = run_program(out, "--data", str(data), "--workers", "1", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = json.loads(done.stdout)["lines"]
    assert [line["outputs"] for line in lines] == [line["outputs"] for line in run["lines"]]

    # without the connection's variables it says which to set
    missing = run_program(out, "question=hi")
    assert missing.returncode == 1
    assert "export MODEL_ENDPOINT and MODEL_KEY" in missing.stdout + missing.stderr
