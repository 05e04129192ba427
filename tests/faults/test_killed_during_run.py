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
          log: {type: string}
        outputs:
          n: {type: int, reference: "${step.output}"}
        nodes:
        - name: step
          type: python
          source: {type: code, path: step.py}
          inputs: {n: "${inputs.n}", log: "${inputs.log}"}
        """,
        {
            "step.py": "import time\nfrom promptflow import tool\n\n@tool\n"
            "def step(n: int, log: str) -> int:\n    with open(log, 'a') as f:\n"
            "        f.write(f'{n}\\n')\n    time.sleep(0.4)\n    return n * 10\n"
        },
    )
    home = tmp_path / "home"
    log = tmp_path / "executed.txt"  # each execution of the node appends its line
    server = start_server(home)
    try:
        with server.client() as http:
            uploaded = http.post(
                FLOWS, data={"name": "slow"}, files={"file": ("flow.tar.gz", pack(folder))}
            )
            assert uploaded.status_code in (200, 201), uploaded.text
            rows = [{"n": i, "log": str(log)} for i in range(LINES)]
            data = "".join(json.dumps(row) + "\n" for row in rows).encode()
            created = http.post(
                f"{FLOWS}/slow/runs",
                data={"column_mapping": json.dumps({"n": "${data.n}", "log": "${data.log}"})},
                files={"data": ("data.jsonl", data)},
            )
            assert created.status_code == 202, created.text
            run_id = created.json()["id"]
            deadline = time.monotonic() + 60
            while http.get(f"{RUNS}/{run_id}").json()["completed_lines"] < 3:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            done_before = {
                line["line_number"] for line in http.get(f"{RUNS}/{run_id}").json()["lines"]
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
    executed = [int(n) for n in log.read_text().split()]
    assert done_before and all(executed.count(n) == 1 for n in done_before), executed
    assert [
        line["outputs"]["n"] for line in sorted(run["lines"], key=lambda x: x["line_number"])
    ] == [10 * i for i in range(LINES)]
