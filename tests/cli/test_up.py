"""The README's first command: `lmfoundry up` on a fresh home prints a curl command that
returns a real completion from the bundled model."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import start_server, stop_server

pytestmark = pytest.mark.slow


def test_fresh_up_prints_token_and_a_working_curl(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home, token=None)
    try:
        output = server.output()
        credentials = home / "credentials"
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        token = json.loads(credentials.read_text())["token"]
        assert token.startswith("lmf_pat_") and token in output
        curl = next(
            line.strip() for line in output.splitlines() if line.strip().startswith("curl ")
        )
        reply = subprocess.run(
            curl, shell=True, capture_output=True, text=True, timeout=120, check=True
        )
        body = json.loads(reply.stdout)
        assert body["model"] == "SmolLM2-135M-Instruct"
        assert "Paris" in body["choices"][0]["message"]["content"]  # a good first answer
        assert body["usage"]["completion_tokens"] > 0
        assert re.search(
            r"target URL: http://127\.0\.0\.1:\d+/serverless/smollm2-135m-instruct/", output
        )
    finally:
        stop_server(server)

    again = start_server(home, token=None)
    try:
        second = again.output()
        # The token and the key are printed once: a restart shows neither.
        assert "lmf_pat_" not in second
        assert "Created serverless deployment" not in second
        assert "curl " in second and "$KEY" in second
    finally:
        stop_server(again)
