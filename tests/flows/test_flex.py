"""Flex flows (`flow.flex.yaml`): function and class entries, inputs from the signature, init
arguments, outputs serialised as Prompt flow does, `__aggregate__` metrics in batch runs, and
the same outputs as real Prompt flow 1.18 gives on the same flow."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows.dag import load_dag
from lmfoundry.flows.flex import FlexFlow
from tests.conftest import Api
from tests.flows.helpers import DATA, FLOWS, custom_connection, run_once, upload, wait_run

PF_PYTHON = Path(__file__).resolve().parents[2] / ".venv-promptflow" / "bin" / "python"


def test_a_function_entry_reads_its_inputs_from_the_signature(api: Api) -> None:
    view = upload(api, DATA / "flex_function", "greeter")
    assert view["kind"] == "flex"
    assert view["inputs"]["who"]["type"] == "string"
    assert view["inputs"]["times"] == {
        "type": "int",
        "default": 2,
        "is_chat_input": False,
        "is_chat_history": False,
    }
    assert view["nodes"] == [{"name": "greet", "type": "flex", "aggregation": False}]

    # a dataclass becomes its fields; its generator field is joined; "3" becomes an int
    result = run_once(api, "greeter", who="ann", times="3")
    assert result["status"] == "completed", result
    assert result["outputs"] == {"text": "hello ann. hello ann. hello ann. ", "words": 6}
    # no inputs at all: sample.inputs, then the code's defaults
    assert run_once(api, "greeter")["outputs"]["text"] == "hello sample. hello sample. "

    failed = run_once(api, "greeter", who="crash")
    assert failed["status"] == "failed"
    assert failed["error"]["message"] == (
        "Execution failure in 'greet': (ValueError) no greeting for crash"
    )
    assert "greet.py" in failed["error"]["traceback"]
    assert "lmfoundry" not in failed["error"]["traceback"]

    bad = api.post(f"{FLOWS}/greeter/test", json={"inputs": {"who": "a", "times": "many"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "inputs.times"
    unknown = api.post(f"{FLOWS}/greeter/test", json={"inputs": {"woh": "a"}})
    assert unknown.status_code == 400 and "woh" in unknown.json()["error"]["message"]
    given_init = api.post(f"{FLOWS}/greeter/test", json={"inputs": {}, "init": {"x": 1}})
    assert (
        given_init.status_code == 400 and "is a function" in given_init.json()["error"]["message"]
    )


def test_a_class_entry_takes_init_arguments_and_a_connection(api: Api) -> None:
    custom_connection(api, "regional", region="eu-west")
    upload(api, DATA / "flex_class", "scorer")
    init = {"unit": "pts", "conn": "regional"}
    response = api.post(f"{FLOWS}/scorer/test", json={"inputs": {"word": "abc"}, "init": init})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "completed", result
    # an async __call__ returning a TypedDict; bonus falls back to the YAML's default
    assert result["outputs"] == {"word": "abc pts", "score": 3, "region": "eu-west"}

    with_bonus = {**init, "bonus": "10"}
    response = api.post(f"{FLOWS}/scorer/test", json={"inputs": {"word": "ab"}, "init": with_bonus})
    assert response.json()["outputs"]["score"] == 12

    missing = api.post(f"{FLOWS}/scorer/test", json={"inputs": {"word": "a"}, "init": {}})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "init.unit"
    assert "--init unit=VALUE" in missing.json()["error"]["message"]
    unknown = api.post(
        f"{FLOWS}/scorer/test", json={"inputs": {"word": "a"}, "init": {**init, "colour": "red"}}
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "init.colour"
    no_such = api.post(
        f"{FLOWS}/scorer/test", json={"inputs": {"word": "a"}, "init": {**init, "conn": "nope"}}
    )
    assert no_such.status_code == 400 and "nope" in no_such.json()["error"]["message"]


def test_a_key_in_a_model_configuration_is_refused(tmp_path: Path) -> None:
    flow = load_dag(DATA / "flex_prompty")
    assert isinstance(flow, FlexFlow)
    config = {"azure_deployment": "d", "azure_endpoint": "http://x", "api_key": "k-123"}
    with pytest.raises(InvalidRequest, match="keys go into a connection") as refused:
        flow.with_init({"model_config": config})
    assert "k-123" not in refused.value.message
    named = flow.with_init({"model_config": '{"connection": "smol", "azure_deployment": "d"}'})
    assert named.connection_names == ["smol"]


def test_aggregate_turns_a_batch_run_into_metrics(api: Api, tmp_path: Path) -> None:
    folder = shutil.copytree(DATA / "flex_class", tmp_path / "scorer")
    with open(folder / "flow.flex.yaml", "a") as file:  # runs take sample.init
        file.write("sample:\n  init:\n    unit: pts\n    conn: regional\n")
    custom_connection(api, "regional", region="eu-west")
    upload(api, folder, "batch-scorer")
    data = b'{"word": "a"}\n{"word": "abcd"}\n{"word": "xyz"}\n'
    form = {"column_mapping": json.dumps({"word": "${data.word}"})}
    created = api.post(f"{FLOWS}/batch-scorer/runs", data=form, files={"data": ("d.jsonl", data)})
    assert created.status_code == 202, created.text
    run = wait_run(api, created.json()["id"])
    assert run["status"] == "completed", run
    assert run["metrics"] == {"lines": 3, "total": 8}


def test_validation_names_the_problem(tmp_path: Path) -> None:
    folder = tmp_path / "flow"
    folder.mkdir()
    (folder / "flow.flex.yaml").write_text("entry: missing:run\n")
    with pytest.raises(InvalidRequest, match="not in the flow folder"):
        load_dag(folder)
    (folder / "missing.py").write_text("def other():\n    pass\n")
    with pytest.raises(InvalidRequest, match="defines no function or class 'run'"):
        load_dag(folder)
    (folder / "missing.py").write_text("class run:\n    def __init__(self):\n        pass\n")
    with pytest.raises(InvalidRequest, match="no __call__ method"):
        load_dag(folder)
    (folder / "flow.flex.yaml").write_text("entry: missing\n")
    with pytest.raises(InvalidRequest, match="module:function"):
        load_dag(folder)
    (folder / "flow.dag.yaml").write_text("nodes: []\n")
    with pytest.raises(InvalidRequest, match=r"both flow\.dag\.yaml and flow\.flex\.yaml"):
        load_dag(folder)
    flow = load_dag(DATA / "flex_class")
    assert (
        isinstance(flow, FlexFlow) and flow.is_class and set(flow.init) == {"unit", "conn", "bonus"}
    )


# Runs in .venv-promptflow: a flex flow's lines through Prompt flow's own executor, outputs
# as Prompt flow records them (a dataclass as its fields, anything else as `output`).
PF_SCRIPT = """
import json, sys
from pathlib import Path
from promptflow._utils.dataclass_serializer import convert_eager_flow_output_to_dict
from promptflow.executor import FlowExecutor

request = json.loads(sys.stdin.read())
folder = Path(request["flow"])
executor = FlowExecutor.create(
    folder / "flow.flex.yaml", {}, working_dir=folder, init_kwargs=request.get("init")
)
lines, completed = [], []
for index, inputs in enumerate(request["lines"]):
    result = executor.exec_line(inputs, index=index)
    if result.run_info.status.value != "Completed":
        lines.append({"error": result.run_info.error["message"]})
        continue
    outputs = convert_eager_flow_output_to_dict(result.output)
    lines.append({k: v for k, v in (outputs or {}).items() if k != "line_number"})
    completed.append(result.output)
if not request.get("aggregate"):
    print(json.dumps(lines))
    raise SystemExit
# the batch engine's rule: each completed line's output, a dict with attribute access
from promptflow.contracts.types import AttrDict
results = [AttrDict(o) if isinstance(o, dict) else o for o in completed]
print(json.dumps({"lines": lines, "metrics": executor.exec_aggregation({}, results).metrics}))
"""


def run_promptflow(script: str, request: dict, tmp_path: Path) -> object:
    """`script` run by real Prompt flow's Python, with `request` on stdin: its last line."""
    done = subprocess.run(
        [str(PF_PYTHON), "-c", script],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={
            "HOME": str(tmp_path),
            "PATH": "/usr/bin:/bin",
            "PF_DISABLE_TRACING": "true",
            "PROMPTFLOW_DISABLE_TELEMETRY": "true",
            "PF_LOGGING_LEVEL": "CRITICAL",
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


needs_promptflow = pytest.mark.skipif(
    not any(PF_PYTHON.parents[1].glob("lib/python*/site-packages/promptflow/core")),
    reason="real Prompt flow is not installed (scripts/promptflow-venv creates .venv-promptflow)",
)


@needs_promptflow
def test_prompt_flow_gives_the_same_outputs(api: Api, tmp_path: Path) -> None:
    lines = [{"who": "ann", "times": 3}, {"who": "bo", "loud": True}, {"who": "cy", "times": 0}]
    folder = shutil.copytree(DATA / "flex_function", tmp_path / "flow")
    expected = run_promptflow(PF_SCRIPT, {"flow": str(folder), "lines": lines}, tmp_path)
    upload(api, DATA / "flex_function", "greeter")
    assert [run_once(api, "greeter", **inputs)["outputs"] for inputs in lines] == expected


def test_runs_and_deployments_keep_their_init_arguments(api: Api) -> None:
    custom_connection(api, "regional", region="eu-west")
    upload(api, DATA / "flex_class", "scorer")
    init = {"unit": "pts", "conn": "regional", "bonus": 1}
    data = b'{"word": "a"}\n{"word": "abc"}\n'
    form = {"column_mapping": json.dumps({"word": "${data.word}"}), "init": json.dumps(init)}
    created = api.post(f"{FLOWS}/scorer/runs", data=form, files={"data": ("d.jsonl", data)})
    assert created.status_code == 202, created.text
    run = wait_run(api, created.json()["id"])
    assert run["status"] == "completed", run
    assert run["metrics"] == {"lines": 2, "total": 6}
    assert [line["outputs"] for line in run["lines"]] == [
        {"word": "a pts", "score": 2, "region": "eu-west"},
        {"word": "abc pts", "score": 4, "region": "eu-west"},
    ]
    form["init"] = json.dumps({"unit": "pts"})
    refused = api.post(f"{FLOWS}/scorer/runs", data=form, files={"data": ("d.jsonl", data)})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "init.conn"

    deployed = api.post(f"{FLOWS}/scorer/deploy", json={"init": init})
    assert deployed.status_code == 200, deployed.text
    key = api.get(f"{FLOWS}/scorer/keys").json()["primary_key"]
    scored = api.client.post("/flows/scorer/score", json={"word": "hey"}, headers={"api-key": key})
    assert scored.status_code == 200, scored.text
    assert scored.json() == {"word": "hey pts", "score": 4, "region": "eu-west"}


def test_a_generator_entry_streams_and_is_joined_otherwise(api: Api, tmp_path: Path) -> None:
    from tests.flows.test_execution import stream

    folder = tmp_path / "words"
    folder.mkdir()
    (folder / "flow.flex.yaml").write_text("entry: words:say\n")
    (folder / "words.py").write_text(
        "async def say(text: str):\n"
        "    for word in text.split():\n"
        "        yield word.upper() + ' '\n"
    )
    upload(api, folder, "words")
    assert run_once(api, "words", text="a bc d")["outputs"] == {"output": "A BC D "}
    events = stream(api, f"{FLOWS}/words/test", json={"inputs": {"text": "a bc"}})
    assert events[0] == {"event": "outputs", "index": 0, "outputs": {}, "stream": "output"}
    assert [e["text"] for e in events if e["event"] == "chunk"] == ["A ", "BC "]
    assert events[-1]["outputs"] == {"output": "A BC "}


JUDGE = """
class Judge:
    def __init__(self, unit: str, bonus: int = 1):
        self.unit, self.bonus = unit, bonus

    async def __call__(self, word: str) -> dict:
        if word == "bad":
            raise ValueError("bad word")
        return {"word": f"{word} {self.unit}", "score": len(word) + self.bonus}

    def __aggregate__(self, results: list) -> dict:
        total = sum(r.score for r in results)
        return {"lines": len(results), "total": total, "first": results[0]["word"]}
"""


@needs_promptflow
def test_prompt_flow_gives_the_same_class_outputs_and_metrics(api: Api, tmp_path: Path) -> None:
    folder = tmp_path / "judge"
    folder.mkdir()
    (folder / "flow.flex.yaml").write_text("entry: judge:Judge\n")
    (folder / "judge.py").write_text(JUDGE)
    lines = [{"word": "ab"}, {"word": "bad"}, {"word": "xyz"}]
    init = {"unit": "pts", "bonus": 2}
    request = {"flow": str(folder), "lines": lines, "init": init, "aggregate": True}
    expected = run_promptflow(PF_SCRIPT, request, tmp_path)
    upload(api, folder, "judge")
    form = {"column_mapping": json.dumps({"word": "${data.word}"}), "init": json.dumps(init)}
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    created = api.post(f"{FLOWS}/judge/runs", data=form, files={"data": ("d.jsonl", data)})
    run = wait_run(api, created.json()["id"])
    ours = [line["outputs"] or {"error": line["error"]["message"]} for line in run["lines"]]
    assert ours == expected["lines"]  # the failed line's message too
    assert run["metrics"] == expected["metrics"]


def test_flow_test_local_takes_init_arguments(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tests.flows.helpers import cli

    local = SimpleNamespace(home=tmp_path / "home")  # no server: only a home for the logs
    folder = tmp_path / "judge"
    folder.mkdir()
    (folder / "flow.flex.yaml").write_text("entry: judge:Judge\n")
    (folder / "judge.py").write_text(JUDGE)
    args = ["flow", "test", str(folder), "--local", "word=abc", "--json"]
    output = cli(local, *args, "--init", "unit=pts", "--init", "bonus=5")  # type: ignore[arg-type]
    result = json.loads(output[output.index("{") :])
    assert result["outputs"] == {"word": "abc pts", "score": 8}, result
    refused = cli(local, *args, "--init", "colour=red", ok=False)  # type: ignore[arg-type]
    assert "has no parameter 'colour'" in refused
