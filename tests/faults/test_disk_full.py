"""A full disk while a dataset uploads: simulated with a file size limit (RLIMIT_FSIZE) on the
running server, so any file it writes past 1 MiB fails as on a full disk. The upload is
refused with 507 and a message saying what happened; nothing half-written stays behind; once
space is back, the same upload succeeds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow

DATASETS = "/api/v1/projects/default/datasets"
LIMIT = 1024 * 1024


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live = start_server(tmp_path / "home")
    yield live
    stop_server(live)


def chats(n: int) -> bytes:
    line = {
        "messages": [
            {"role": "user", "content": "Tell me about the weather " * 8},
            {"role": "assistant", "content": "It is sunny and warm today. " * 8},
        ]
    }
    return ("\n".join(json.dumps(line) for _ in range(n)) + "\n").encode()


def leftovers(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file() and p.name.startswith(".upload-")]


def test_a_full_disk_during_an_upload_stores_nothing_and_says_so(server: LiveServer) -> None:
    body = chats(5000)  # about 2.6 MB
    assert len(body) > 2 * LIMIT
    process = psutil.Process(server.process.pid)
    unlimited = process.rlimit(psutil.RLIMIT_FSIZE)
    process.rlimit(psutil.RLIMIT_FSIZE, (LIMIT, unlimited[1]))  # the soft limit
    try:
        with server.client() as http:
            refused = http.post(DATASETS, files={"file": ("big.jsonl", body)}, data={"name": "big"})
            assert refused.status_code == 507, refused.text
            error = refused.json()["error"]
            assert error["code"] == "insufficient_storage"
            assert "disk space" in error["message"] and "retry" in error["message"]
            assert http.get(DATASETS).json() == []
            assert http.get("/healthz").status_code == 200  # the server is still up
    finally:
        process.rlimit(psutil.RLIMIT_FSIZE, unlimited)
    assert leftovers(server.home) == []

    with server.client() as http:
        stored = http.post(DATASETS, files={"file": ("big.jsonl", body)}, data={"name": "big"})
        assert stored.status_code == 201, stored.text
        assert stored.json()["rows"] == 5000
        assert [d["name"] for d in http.get(DATASETS).json()] == ["big"]
