"""SIGKILL of the server in the middle of a batch flow run: after a restart the run finishes,
the lines done before the kill are kept (not run again), every line is recorded once, and the
run says how many lines it completed."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from lmfoundry.flows.archive import pack
from tests.conftest import start_server, stop_server
from tests.flows.helpers import FLOWS, RUNS, write_flow

pytestmark = pytest.mark.slow

LINES = 12


def test_a_run_survives_a_killed_server(tmp_path: Path) -> None:
    folder = write_flow(
        tmp_path / "flow",
        """
        inputs:
          n: {type: int}
        outputs:
          n: {type: int, reference: "${step.output.n}"}
          execution: {type: string, reference: "${step.output.execution}"}
        nodes:
        - name: step
          type: python
          source: {type: code, path: step.py}
          inputs: {n: "${inputs.n}"}
        """,
        {
            # Each execution of the node answers a fresh id: a line run again after the
            # restart would be recorded with another one. (The sandboxed flow cannot write
            # a file of the host to count executions.)
            "step.py": "import time\nimport uuid\nfrom promptflow import tool\n\n@tool\n"
            "def step(n: int) -> dict:\n    time.sleep(0.4)\n"
            "    return {'n': n * 10, 'execution': uuid.uuid4().hex}\n"
        },
    )
    home = tmp_path / "home"
    server = start_server(home)
    try:
        with server.client() as http:
            uploaded = http.post(
                FLOWS, data={"name": "slow"}, files={"file": ("flow.tar.gz", pack(folder))}
            )
            assert uploaded.status_code in (200, 201), uploaded.text
            rows = [{"n": i} for i in range(LINES)]
            data = "".join(json.dumps(row) + "\n" for row in rows).encode()
            created = http.post(
                f"{FLOWS}/slow/runs",
                data={"column_mapping": json.dumps({"n": "${data.n}"})},
                files={"data": ("data.jsonl", data)},
            )
            assert created.status_code == 202, created.text
            run_id = created.json()["id"]
            deadline = time.monotonic() + 60
            while http.get(f"{RUNS}/{run_id}").json()["completed_lines"] < 3:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            done_before = {
                line["line_number"]: line["outputs"]["execution"]
                for line in http.get(f"{RUNS}/{run_id}").json()["lines"]
                if line["outputs"]
            }
    finally:
        assert stop_server(server, signal.SIGKILL) != 0  # killed, no shutdown

    server = start_server(home)
    try:
        with server.client() as http:
            deadline = time.monotonic() + 120
            while (run := http.get(f"{RUNS}/{run_id}").json())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline, run
                time.sleep(0.2)
    finally:
        stop_server(server)
    assert run["status"] == "completed", run
    assert (run["completed_lines"], run["failed_lines"], run["total_lines"]) == (LINES, 0, LINES)
    numbers = sorted(line["line_number"] for line in run["lines"])
    assert numbers == list(range(LINES))  # each line recorded once
    after = {line["line_number"]: line["outputs"]["execution"] for line in run["lines"]}
    assert done_before and all(after[n] == done_before[n] for n in done_before), (
        done_before,
        after,
    )
    assert [
        line["outputs"]["n"] for line in sorted(run["lines"], key=lambda x: x["line_number"])
    ] == [10 * i for i in range(LINES)]
