"""The database locked by another writer (SQLite): a request waits for the lock up to
LMFOUNDRY_DATABASE_BUSY_SECONDS and then succeeds; held longer, it gets a 503 that says what
happened, with Retry-After, and nothing changes; once the lock is gone the server works on."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow

PROJECTS = "/api/v1/projects"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    if os.environ.get("LMFOUNDRY_TEST_DATABASE_URL"):
        pytest.skip("SQLite's writer lock; PostgreSQL locks rows, not the database")
    live = start_server(tmp_path / "home", env={"LMFOUNDRY_DATABASE_BUSY_SECONDS": "2"})
    yield live
    stop_server(live)


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another writer: BEGIN IMMEDIATE on the database file, held for `seconds`."""
    ready = threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        ready.set()
        time.sleep(seconds)
        connection.execute("ROLLBACK")
        connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait()
    return thread


def test_a_locked_database_makes_requests_wait_then_answers_503(server: LiveServer) -> None:
    db = server.home / "lmfoundry.db"
    with server.client() as http:
        holder = hold_write_lock(db, 1.0)  # shorter than the busy timeout: the request waits
        started = time.monotonic()
        created = http.post(PROJECTS, json={"name": "waited"})
        assert created.status_code == 201, created.text
        assert time.monotonic() - started >= 0.5
        holder.join()

        holder = hold_write_lock(db, 5.0)  # longer: 503, and nothing is created
        refused = http.post(PROJECTS, json={"name": "refused"})
        holder.join()
        assert refused.status_code == 503, refused.text
        assert "locked by another writer" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"] == "1"
        names = {p["name"] for p in http.get(PROJECTS).json()}
        assert "waited" in names and "refused" not in names

        again = http.post(PROJECTS, json={"name": "refused"})  # the retry succeeds
        assert again.status_code == 201, again.text
