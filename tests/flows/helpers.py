"""Helpers for flow tests: write small flows, upload them, wait for runs."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from lmfoundry.config import reset_settings
from lmfoundry.flows.archive import pack
from tests.conftest import Api, LiveServer

DATA = Path(__file__).parent / "data"
FLOWS = "/api/v1/projects/default/flows"
RUNS = "/api/v1/projects/default/runs"
CONNECTIONS = "/api/v1/projects/default/connections"


def write_flow(folder: Path, dag: str, files: dict[str, str] | None = None) -> Path:
    """A flow folder from a flow.dag.yaml text and {file name: text}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flow.dag.yaml").write_text(dedent(dag))
    for name, text in (files or {}).items():
        (folder / name).write_text(dedent(text))
    return folder


def upload(api: Api, folder: Path, name: str) -> dict[str, Any]:
    response = api.post(FLOWS, data={"name": name}, files={"file": ("flow.tar.gz", pack(folder))})
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def run_once(api: Api, name: str, **inputs: Any) -> dict[str, Any]:
    """`POST /flows/{name}/test`: one line of an uploaded flow."""
    response = api.post(f"{FLOWS}/{name}/test", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_run(api: Api, run_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"{RUNS}/{run_id}").json()
        if run["status"] not in ("queued", "running"):
            return dict(run)
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish: {run}")


def custom_connection(api: Api, name: str, **values: str) -> None:
    """A custom connection: `key` (and anything named like a secret) as secrets."""
    secrets = {k: v for k, v in values.items() if k in ("key", "api_key", "token")}
    configs = {k: v for k, v in values.items() if k not in secrets}
    response = api.put(f"{CONNECTIONS}/{name}", json={"configs": configs, "secrets": secrets})
    assert response.status_code in (200, 201), response.text


def cli(server: LiveServer, *args: str, stdin: str = "", ok: bool = True) -> str:
    """`lmfoundry ARGS` in this process (a new interpreter per call costs ~3 s here): the same
    entry point, settings and output as a terminal gets; returns stdout + stderr."""
    from lmfoundry.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("LMFOUNDRY_")]:
            patch.delenv(name)
        patch.setenv("LMFOUNDRY_HOME", str(server.home))
        patch.setenv("COLUMNS", "200")
        patch.setattr(sys, "argv", ["lmfoundry", *args])
        patch.setattr(sys, "stdin", io.StringIO(stdin))
        reset_settings()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main()
        except SystemExit as exit_:
            code = exit_.code
        finally:
            reset_settings()
    output = out.getvalue() + err.getvalue()
    assert (code in (0, None)) == ok, output
    return output


def cli_process(server: LiveServer, *args: str) -> str:
    """`lmfoundry ARGS` as a separate process, exactly as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMFOUNDRY_")}
    env.update({"LMFOUNDRY_HOME": str(server.home), "COLUMNS": "200"})
    done = subprocess.run(
        [sys.executable, "-m", "lmfoundry", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr
