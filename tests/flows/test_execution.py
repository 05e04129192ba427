"""Running flows through `POST /flows/{name}/test` and `/flows/test`: node semantics, streaming,
aggregation, the flow process's isolation and its time limit."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from lmfoundry.config import Settings
from lmfoundry.flows.archive import pack
from tests.conftest import ADMIN_TOKEN, Api
from tests.flows.helpers import (
    DATA,
    FLOWS,
    cli,
    custom_connection,
    run_once,
    upload,
    write_flow,
)


def test_python_nodes_outputs_and_aggregation_of_one_line(api: Api) -> None:
    upload(api, DATA / "numbers", "numbers")
    result = run_once(api, "numbers", number="4")
    assert result["status"] == "completed", result
    assert result["outputs"] == {"square": 16, "parity": "even"}
    # `pf flow test` runs aggregation nodes over the one line too
    assert result["metrics"] == {"lines": 1, "sum_of_squares": 16}

    failed = run_once(api, "numbers", number=13)
    assert failed["status"] == "failed"
    assert failed["error"]["node"] == "square"
    assert "13 is unlucky" in failed["error"]["message"]
    assert "square.py" in failed["error"]["traceback"]

    bad = api.post(f"{FLOWS}/numbers/test", json={"inputs": {"number": "four"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "inputs.number"


def test_activate_bypasses_branches_as_prompt_flow_does(api: Api) -> None:
    upload(api, DATA / "router", "router")
    question = run_once(api, "router", text="Is it raining?")["outputs"]
    assert question == {
        "kind": "question",
        "question": "Q: Is it raining?",
        "statement": None,  # bypassed: activate condition not met
        "shout": "Q: IS IT RAINING?",
        "merged": "Q: Is it raining? | (no statement)",  # bypassed input, default used
    }
    statement = run_once(api, "router", text="It rains.")["outputs"]
    assert statement == {
        "kind": "statement",
        "question": None,
        "statement": "S: It rains.",
        "shout": None,  # every node it reads was bypassed, so it is too
        "merged": "None | S: It rains.",  # bypassed input without a default: None
    }


def stream(api: Api, path: str, **kwargs: object) -> list[dict]:
    headers = {**api.auth, "Accept": "text/event-stream"}
    with api.client.stream("POST", path, headers=headers, **kwargs) as response:  # type: ignore[arg-type]
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


def test_a_generator_chat_output_streams(api: Api) -> None:
    upload(api, DATA / "stream_chat", "talk")
    history = [{"inputs": {"question": "a"}, "outputs": {"answer": "b", "turn": 1}}]
    events = stream(
        api, f"{FLOWS}/talk/test", json={"inputs": {"question": "hi", "chat_history": history}}
    )
    assert events[0] == {"event": "outputs", "index": 0, "outputs": {"turn": 2}, "stream": "answer"}
    chunks = [e["text"] for e in events if e["event"] == "chunk"]
    assert chunks == ["turn ", "2: ", "you ", "said ", "hi "]
    assert events[-1]["event"] == "result"
    assert events[-1]["outputs"] == {"answer": "turn 2: you said hi ", "turn": 2}
    # without a stream the generator is joined
    assert run_once(api, "talk", question="hi")["outputs"]["answer"] == "turn 1: you said hi "


def test_a_folder_can_be_tested_without_uploading(api: Api) -> None:
    response = api.post(
        f"{FLOWS}/test",
        data={"inputs": json.dumps({"text": "What?"})},
        files={"file": ("flow.tar.gz", pack(DATA / "router"))},
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["kind"] == "question"
    assert api.get(FLOWS).json() == []
    bad = api.post(
        f"{FLOWS}/test", data={"inputs": "[1]"}, files={"file": ("f.tgz", pack(DATA / "router"))}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "inputs"


PROBE = """
import os, sys
from promptflow import tool

@tool
def probe(connection) -> dict:
    print("probe ran", flush=True)
    return {
        "env": sorted(os.environ),
        "home": os.environ["HOME"],
        "cwd": os.getcwd(),
        "path": sys.path[:2],
        "endpoint": connection.endpoint,
        "configs": connection.configs,
        "secret_names": sorted(connection.secrets),
        "repr": repr(connection),
    }
"""


def test_flow_code_runs_isolated_with_only_its_connections(
    api: Api, tmp_path: Path, settings: Settings
) -> None:
    custom_connection(api, "mine", endpoint="http://mine", key="k-mine-123456")
    custom_connection(api, "other", endpoint="http://other", key="k-other-123456")
    folder = write_flow(
        tmp_path / "probe",
        """
        outputs:
          seen: {type: object, reference: "${probe.output}"}
        environment_variables:
          GREETING: hello
        nodes:
        - name: probe
          type: python
          source: {type: code, path: probe.py}
          inputs: {connection: mine}
        """,
        {"probe.py": PROBE},
    )
    upload(api, folder, "probe")
    seen = run_once(api, "probe")["outputs"]["seen"]
    assert not [name for name in seen["env"] if name.startswith("LMFOUNDRY")]
    assert "GREETING" in seen["env"]
    assert (
        seen["home"] != str(Path.home()) and Path(seen["home"]).parent == Path(seen["cwd"]).parent
    )
    assert not Path(seen["cwd"]).is_relative_to(settings.home)  # a copy, not the stored flow
    assert not Path(seen["cwd"]).exists()  # removed afterwards
    assert seen["path"][1].endswith("flows/compat")
    assert seen["endpoint"] == "http://mine" and seen["secret_names"] == ["key"]
    assert "k-mine-123456" not in seen["repr"]
    # the compatibility package exists only inside flow processes
    assert importlib.util.find_spec("promptflow") is None
    assert "promptflow" not in sys.modules
    log = (settings.home / "logs" / "flows" / "default" / "probe.log").read_text()
    assert "probe ran" in log


def test_a_missing_connection_is_named_before_anything_runs(api: Api) -> None:
    upload(api, DATA / "score_client", "tutorial")
    response = api.post(f"{FLOWS}/tutorial/test", json={"inputs": {}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (
        "Node 'ask_endpoint' input 'connection' names connection 'connection'" in (error["message"])
    )
    assert error["param"] == "nodes.ask_endpoint.inputs.connection"


def test_an_import_error_names_the_node(api: Api, tmp_path: Path) -> None:
    folder = write_flow(
        tmp_path,
        """
        outputs:
          out: {type: string, reference: "${a.output}"}
        nodes:
        - name: a
          type: python
          source: {type: code, path: a.py}
        """,
        {
            "a.py": "import not_a_module_anywhere\nfrom promptflow import tool\n\n"
            "@tool\ndef a():\n    return 1\n"
        },
    )
    upload(api, folder, "broken")
    response = api.post(f"{FLOWS}/broken/test", json={"inputs": {}})
    assert response.status_code == 400
    assert "Node 'a' failed: ModuleNotFoundError" in response.json()["error"]["message"]


@pytest.fixture
def quick_api(settings: Settings) -> Iterator[Api]:
    """The app with a 2-second limit per flow line."""
    from lmfoundry.api.app import create_app

    settings.flow_line_timeout = 2.0
    with TestClient(create_app(settings)) as client:
        yield Api(client, ADMIN_TOKEN)


SLEEPY = """
import time
from promptflow import tool

@tool
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
"""


def test_a_line_over_the_time_limit_is_stopped(quick_api: Api, tmp_path: Path) -> None:
    folder = write_flow(
        tmp_path,
        """
        inputs:
          seconds: {type: double}
        outputs:
          slept: {type: double, reference: "${nap.output}"}
        nodes:
        - name: nap
          type: python
          source: {type: code, path: nap.py}
          inputs: {seconds: "${inputs.seconds}"}
        """,
        {"nap.py": SLEEPY},
    )
    upload(quick_api, folder, "nap")
    result = run_once(quick_api, "nap", seconds=60)
    assert result["status"] == "failed"
    assert result["error"]["type"] == "Timeout"
    assert "longer than 2 s" in result["error"]["message"]
    assert result["duration_s"] < 10
    assert run_once(quick_api, "nap", seconds=0)["outputs"] == {"slept": 0.0}


WAITERS = {
    "sync_wait.py": """
    import time
    from promptflow import tool

    @tool
    def sync_wait(text: str, seconds: float) -> str:
        time.sleep(seconds)
        if text == "fail":
            raise ValueError("asked to fail")
        return "sync " + text
    """,
    "async_wait.py": """
    import asyncio
    from promptflow import tool

    @tool
    async def async_wait(text: str, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "async " + text
    """,
}


def test_nodes_that_can_run_at_once_do(api: Api, tmp_path: Path) -> None:
    """As in Prompt flow's schedulers: siblings run together, async and sync tools alike, so
    three 1.5-second nodes after a common one take about 1.5 s, not 4.5."""
    folder = write_flow(
        tmp_path,
        """
        inputs:
          text: {type: string}
        outputs:
          a: {type: string, reference: "${a.output}"}
          b: {type: string, reference: "${b.output}"}
          c: {type: string, reference: "${c.output}"}
          joined: {type: string, reference: "${join.output}"}
        nodes:
        - name: first
          type: python
          source: {type: code, path: async_wait.py}
          inputs: {text: "${inputs.text}", seconds: 0}
        - name: a
          type: python
          source: {type: code, path: async_wait.py}
          inputs: {text: "${first.output}", seconds: 1.5}
        - name: b
          type: python
          source: {type: code, path: async_wait.py}
          inputs: {text: "${first.output}", seconds: 1.5}
        - name: c
          type: python
          source: {type: code, path: sync_wait.py}
          inputs: {text: "${inputs.text}", seconds: 1.5}
        - name: join
          type: python
          source: {type: code, path: sync_wait.py}
          inputs: {text: "${a.output}", seconds: 0}
        """,
        WAITERS,
    )
    upload(api, folder, "siblings")
    result = run_once(api, "siblings", text="x")
    assert result["status"] == "completed", result
    assert result["outputs"] == {
        "a": "async async x",
        "b": "async async x",
        "c": "sync x",
        "joined": "sync async async x",
    }
    assert result["duration_s"] < 3.5, result["duration_s"]  # sequential: 4.5 s and more

    failing = run_once(api, "siblings", text="fail")
    assert failing["status"] == "failed"
    assert failing["error"]["node"] == "c"  # its siblings finished; the line fails at c
    assert "asked to fail" in failing["error"]["message"]


def test_additional_includes_travel_with_an_upload_and_a_local_run(
    api: Api, tmp_path: Path
) -> None:
    """`../shared/polite.py` and `../shared/words/` are `polite.py` and `words/` in the flow,
    as in Prompt flow's snapshot: packed with the upload, and beside a --local run."""
    shared = tmp_path / "shared"
    (shared / "words").mkdir(parents=True)
    (shared / "words" / "please.txt").write_text("please")
    (shared / "polite.py").write_text(
        "from pathlib import Path\n\nfrom promptflow import tool\n\n\n@tool\n"
        "def polite(x: str) -> str:\n"
        "    return Path('words/please.txt').read_text() + ', ' + x\n"
    )
    flow = write_flow(
        tmp_path / "flow",
        """
        additional_includes: [../shared/polite.py, ../shared/words]
        inputs: {x: {type: string}}
        outputs: {y: {type: string, reference: "${ask.output}"}}
        nodes:
        - name: ask
          type: python
          source: {type: code, path: polite.py}
          inputs: {x: "${inputs.x}"}
        """,
    )
    upload(api, flow, "polite")
    assert run_once(api, "polite", x="sit")["outputs"] == {"y": "please, sit"}
    local = SimpleNamespace(home=tmp_path / "home")  # no server: only a home for the logs
    output = cli(local, "flow", "test", str(flow), "--local", "x=stand", "--json")  # type: ignore[arg-type]
    assert json.loads(output[output.index("{") :])["outputs"] == {"y": "please, stand"}
    assert not (flow / "polite.py").exists()  # the user's folder is left as it was
