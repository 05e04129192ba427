"""`lmfoundry catalog` adds local models to the catalog and removes them (`import`,
`build-onnx`, `remove`); `lmfoundry models` is the model registry's, and has none of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lmfoundry.catalog.bundled import smollm2_path
from tests.conftest import LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("cli-catalog") / "home")
    yield live
    stop_server(live)


def lmfoundry(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LMFOUNDRY_HOME": str(server.home),
        "LMFOUNDRY_URL": server.url,
        "LMFOUNDRY_TOKEN": server.token,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "lmfoundry", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_local_model_goes_into_the_catalog_and_out_again(server: LiveServer) -> None:
    gguf = smollm2_path()
    assert gguf is not None
    imported = lmfoundry(server, "catalog", "import", str(gguf), "--id", "smol-copy")
    assert imported.returncode == 0, imported.stderr
    assert "Imported smol-copy (llamacpp, context" in imported.stdout
    listed = lmfoundry(server, "catalog", "list", "--json")
    card = next(c for c in json.loads(listed.stdout) if c["id"] == "smol-copy")
    assert (card["format"], card["weights_present"], card["tags"]) == ("gguf", True, ["imported"])
    shown = lmfoundry(server, "catalog", "show", "smol-copy")
    assert shown.returncode == 0, shown.stderr
    assert "kind=local" in shown.stdout and "chat template" not in shown.stdout
    removed = lmfoundry(server, "catalog", "remove", "smol-copy")
    assert removed.returncode == 0, removed.stderr
    gone = lmfoundry(server, "catalog", "show", "smol-copy")
    assert gone.returncode == 2 and "not in the catalog" in gone.stderr


@pytest.mark.parametrize("command", ["import", "build-onnx", "remove"])
def test_models_is_the_registry_only(server: LiveServer, command: str) -> None:
    moved = lmfoundry(server, "models", command, "--help")
    assert moved.returncode == 2 and "No such command" in moved.stderr
    assert lmfoundry(server, "catalog", command, "--help").returncode == 0
