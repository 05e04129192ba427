"""Soak: 2,000 chat requests at concurrency 32 against a serverless deployment, quotas on (the
default 1,000 requests per minute, so some are refused). The deployment serves the `echo`
engine in its own instance process: this soaks the server (keys, quotas, routing to the
instance, metering), not a model, whose 2,000 answers would take this machine minutes. Every request
gets a well-formed answer or a 429; the server's memory comes back to within 10% of where it
was after warm-up; no file descriptor leaks; every request has exactly one usage record:
answered ones billed, refused ones marked refused."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import func, select

from lmfoundry.storage.db import Database
from lmfoundry.storage.models import UsageRecord
from tests.conftest import LiveServer, database_url_for, start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DEPLOYMENT = "soak"
REQUESTS = 2000
CONCURRENCY = 32


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live = start_server(tmp_path / "home")
    yield live
    stop_server(live)


async def blast(url: str, key: str, n: int, tally: Counter[str], ids: list[str]) -> None:
    """n requests, CONCURRENCY at a time; each response checked for its shape."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=CONCURRENCY)

    async def worker(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {
                "messages": [{"role": "user", "content": f"Count to three. ({i})"}],
                "max_tokens": 4,
                "temperature": 0,
            }
            response = await http.post(url, json=body, headers={"api-key": key})
            if response.status_code == 200:
                data = response.json()
                assert data["object"] == "chat.completion", data
                assert data["choices"][0]["message"]["role"] == "assistant", data
                assert data["choices"][0]["message"]["content"], data
                assert data["usage"]["completion_tokens"] <= 4, data
                ids.append(data["id"])
                tally["ok"] += 1
            else:
                assert response.status_code == 429, response.text
                error = response.json()["error"]
                assert error["code"] and error["message"], error
                assert int(response.headers["retry-after"]) >= 0
                tally["refused"] += 1

    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))


def usage_records(home: Path, refused: bool = False) -> int:
    """Records of answered requests, or (`refused`) of those refused at admission: the
    ledger keeps both, and bills only the first."""
    db = Database(database_url_for(home))
    try:
        with db.session() as s:
            query = select(func.count()).where(UsageRecord.refused.is_(refused))
            return int(s.scalar(query) or 0)
    finally:
        db.dispose()


def test_soak(server: LiveServer) -> None:
    with server.client() as http:
        created = http.post(
            "/api/v1/projects/default/serverless-deployments",
            json={"name": DEPLOYMENT, "model": "echo"},
        )
        assert created.status_code == 201, created.text
        base = f"/api/v1/projects/default/serverless-deployments/{DEPLOYMENT}"
        target = http.get(base).json()["target_url"]
        key = http.get(base + "/keys").json()["primary_key"]
    url = target + "chat/completions"
    process = psutil.Process(server.process.pid)

    warm: Counter[str] = Counter()
    asyncio.run(blast(url, key, 100, warm, []))
    time.sleep(2)
    memory_before, fds_before = process.memory_info().rss, process.num_fds()

    tally: Counter[str] = Counter()
    ids: list[str] = []
    started = time.monotonic()
    asyncio.run(blast(url, key, REQUESTS, tally, ids))
    elapsed = time.monotonic() - started
    assert tally["ok"] + tally["refused"] == REQUESTS, tally
    assert tally["ok"] > 0 and len(set(ids)) == len(ids), tally

    time.sleep(3)
    memory_after, fds_after = process.memory_info().rss, process.num_fds()
    print(
        f"\n{REQUESTS} requests in {elapsed:.1f} s: {tally['ok']} answered, "
        f"{tally['refused']} refused; RSS {memory_before / 2**20:.0f} -> "
        f"{memory_after / 2**20:.0f} MiB; fds {fds_before} -> {fds_after}"
    )
    assert memory_after <= 1.10 * memory_before, (memory_before, memory_after)
    assert fds_after <= fds_before + 2, (fds_before, fds_after)

    with server.client() as http:
        http.get("/api/v1/projects/default/usage")  # flushes the metering buffer
    assert usage_records(server.home) == warm["ok"] + tally["ok"]
    assert usage_records(server.home, refused=True) == warm["refused"] + tally["refused"]
