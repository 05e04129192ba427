"""Batch runs on the server: column mapping, one failing line among successes, aggregation
metrics, evaluation runs over an earlier run, bad mappings, and resuming after a stop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from lmfoundry.config import Settings
from lmfoundry.storage.models import FlowRun, FlowRunLine
from tests.conftest import ADMIN_TOKEN, Api
from tests.flows.helpers import DATA, FLOWS, RUNS, upload, wait_run


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


ROWS = [{"n": n, "expected": n * n if n % 5 else -1} for n in range(1, 21)]


def start_run(api: Api, flow: str, mapping: dict, data: bytes | None = None, run: str = ""):  # type: ignore[no-untyped-def]
    form = {"column_mapping": json.dumps(mapping), **({"run": run} if run else {})}
    files = {"data": ("numbers.jsonl", data)} if data is not None else None
    return api.post(f"{FLOWS}/{flow}/runs", data=form, files=files)


def test_batch_run_with_a_failing_line_and_an_evaluation(api: Api) -> None:
    upload(api, DATA / "numbers", "numbers")
    created = start_run(api, "numbers", {"number": "${data.n}"}, jsonl(ROWS))
    assert created.status_code == 202, created.text
    assert created.json()["total_lines"] == 20 and created.json()["status"] == "queued"
    run = wait_run(api, created.json()["id"])

    assert run["status"] == "completed"
    assert (run["completed_lines"], run["failed_lines"]) == (19, 1)
    lines = run["lines"]
    assert [line["line_number"] for line in lines] == list(range(20))
    failed = [line for line in lines if line["status"] == "failed"]
    assert [line["line_number"] for line in failed] == [12]  # n == 13
    assert failed[0]["error"]["node"] == "square"
    assert "13 is unlucky" in failed[0]["error"]["message"]
    assert failed[0]["outputs"] is None
    for line in lines:
        n = line["line_number"] + 1
        assert line["inputs"] == {"number": n}
        if n != 13:
            assert line["outputs"] == {"square": n * n, "parity": "odd" if n % 2 else "even"}
    # the aggregation node saw the 19 completed lines
    squares = sum(n * n for n in range(1, 21) if n != 13)
    assert run["metrics"] == {"lines": 19, "sum_of_squares": squares}
    assert api.get(f"{FLOWS}/numbers/runs/{run['id']}").json()["id"] == run["id"]
    assert [r["id"] for r in api.get(f"{FLOWS}/numbers/runs").json()] == [run["id"]]

    # evaluate the run: its outputs against the data's expected column
    upload(api, DATA / "grade", "grade")
    mapping = {"prediction": "${run.outputs.square}", "expected": "${data.expected}"}
    evaluation = start_run(api, "grade", mapping, jsonl(ROWS), run=run["id"])
    assert evaluation.status_code == 202, evaluation.text
    graded = wait_run(api, evaluation.json()["id"])
    assert graded["status"] == "completed"
    assert graded["run"] == run["id"]
    assert graded["failed_lines"] == 1  # line 13 of the earlier run has no output
    assert "failed on that line" in graded["lines"][12]["error"]["message"]
    # n = 5, 10, 15, 20 expect -1: 15 of the 19 graded lines are right
    assert graded["metrics"] == {"accuracy": 15 / 19}

    # ${run.inputs.x} and the earlier run's data when no data is given
    again = start_run(
        api,
        "grade",
        {"prediction": "${run.inputs.number}", "expected": "${data.n}"},
        run=run["id"],
    )
    assert again.status_code == 202, again.text
    assert wait_run(api, again.json()["id"])["metrics"] == {"accuracy": 1.0}
    listed = api.get(RUNS).json()
    assert {r["flow"] for r in listed} == {"numbers", "grade"} and len(listed) == 3


def test_bad_runs_are_rejected_before_they_start(api: Api) -> None:
    upload(api, DATA / "numbers", "numbers")
    data = jsonl(ROWS)
    cases = [
        ({"numbr": "${data.n}"}, data, "", "not an input of the flow"),
        ({"number": "${data.m}"}, data, "", "has no column 'm' (columns: n, expected)"),
        ({}, data, "", "Input 'number' has no value"),
        ({"number": "${run.outputs.x}"}, data, "", "give it with --run"),
        ({"number": "${data.n}"}, b'{"n": 1}\nnot json\n', "", "line 2 is not valid JSON"),
        ({"number": "${data.n}"}, b"[1, 2]\n", "", "line 1 is not a JSON object"),
        ({"number": "${data.n}"}, None, "", "Give the data"),
        ({"number": "${data.n}"}, None, "no-such-run", "not found"),
    ]
    for mapping, body, run, words in cases:
        response = start_run(api, "numbers", mapping, body, run)
        assert 400 <= response.status_code < 500, (mapping, response.text)
        assert words in response.json()["error"]["message"], (words, response.text)
    assert api.get(RUNS).json() == []
    assert start_run(api, "nothing", {}, data).status_code == 404


def test_a_stopped_run_resumes_where_it_was(settings: Settings, api: Api) -> None:
    """Lines recorded before the server stopped are kept; the rest run on the next start."""
    upload(api, DATA / "numbers", "numbers")
    plat = api.client.app.state.platform  # type: ignore[attr-defined]
    root = plat.runs.root / "numbers-interrupted"
    shutil.copytree(plat.flows.folder("numbers", 1), root / "flow")
    (root / "data.jsonl").write_bytes(jsonl(ROWS))
    with plat.db.session() as s:
        s.add(
            FlowRun(
                id="numbers-interrupted",
                project_id=1,
                flow="numbers",
                flow_version=1,
                status="running",
                data_name="numbers.jsonl",
                column_mapping={"number": "${data.n}"},
                total_lines=20,
                completed_lines=5,
                failed_lines=0,
                metrics={},
            )
        )
        for index in range(5):  # as recorded by the server that stopped
            s.add(
                FlowRunLine(
                    run_id="numbers-interrupted",
                    line_number=index,
                    status="completed",
                    inputs={"number": index + 1},
                    outputs={"square": (index + 1) ** 2, "parity": "recorded before the stop"},
                    aggregation_inputs={"summary": {"squares": (index + 1) ** 2}},
                    duration_s=0.1,
                )
            )
    from lmfoundry.api.app import create_app

    with TestClient(create_app(settings)) as client:  # a new start resumes it
        run = wait_run(Api(client, ADMIN_TOKEN), "numbers-interrupted")
    assert run["status"] == "completed"
    assert (run["completed_lines"], run["failed_lines"]) == (19, 1)
    parities = [line["outputs"]["parity"] for line in run["lines"] if line["outputs"]]
    assert parities[:5] == ["recorded before the stop"] * 5
    assert parities[5] == "even"  # n = 6, run after the restart
    assert run["metrics"]["lines"] == 19


def test_cancel(api: Api, tmp_path: Path) -> None:
    from tests.flows.helpers import write_flow

    folder = write_flow(
        tmp_path,
        """
        inputs:
          n: {type: int}
        outputs:
          n: {type: int, reference: "${wait.output}"}
        nodes:
        - name: wait
          type: python
          source: {type: code, path: wait.py}
          inputs: {n: "${inputs.n}"}
        """,
        {
            "wait.py": "import time\nfrom promptflow import tool\n\n@tool\ndef wait(n: int) -> int:"
            "\n    time.sleep(30)\n    return n\n"
        },
    )
    upload(api, folder, "slow")
    created = start_run(api, "slow", {}, jsonl([{"n": i} for i in range(4)])).json()
    canceled = api.post(f"{RUNS}/{created['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert wait_run(api, created["id"], timeout=10)["status"] == "canceled"
