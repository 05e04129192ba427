"""Quotas under load, through real server processes: one server with in-process quotas, and
two servers sharing one Redis and one database, each hammered by eight clients for two
minutes at the same time."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from lmfoundry.storage.db import Database
from lmfoundry.storage.models import UsageRecord
from tests.conftest import LiveServer, database_url_for, start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.side]

QUOTA = 3000  # tokens per minute
DURATION = 120.0  # seconds of load
CLIENTS = 8
TOLERANCE = 0.02  # seconds between the quota's clock and the recorded admission time


@dataclass
class Tally:
    ok: int = 0
    refused: int = 0
    retries_refused: list[str] = field(default_factory=list)
    missing_retry_after: int = 0
    tokens: int = 0


def hammer(
    urls: list[str], key: str, client_id: int, stop: float, tally: Tally, lock: threading.Lock
) -> None:
    """Send requests back to back; after a 429 wait exactly Retry-After, then retry."""
    body = {
        "messages": [{"role": "user", "content": f"client {client_id} says hello there"}],
        "max_tokens": 40,
    }
    url = urls[client_id % len(urls)]
    with httpx.Client(timeout=30) as http:
        retrying = False
        while time.monotonic() < stop:
            response = http.post(url, json=body, headers={"api-key": key})
            with lock:
                if response.status_code == 200:
                    tally.ok += 1
                    tally.tokens += response.json()["usage"]["total_tokens"]
                    retrying = False
                    continue
                assert response.status_code == 429, response.text
                tally.refused += 1
                if retrying:
                    tally.retries_refused.append(response.text)
                if "retry-after" not in response.headers:
                    tally.missing_retry_after += 1
                    return
            retrying = True
            time.sleep(int(response.headers["retry-after"]))


def admissions(home: Path, deployment: str) -> list[tuple[float, int]]:
    """(admission time, tokens) of every admitted request, from the usage records."""
    db = Database(database_url_for(home))
    try:
        with db.session() as s:
            rows = s.execute(
                select(UsageRecord.at, UsageRecord.prompt_tokens + UsageRecord.completion_tokens)
                .where(UsageRecord.target == deployment, UsageRecord.status_code == 200)
                .order_by(UsageRecord.at)
            ).all()
    finally:
        db.dispose()
    return [(at.timestamp(), tokens) for at, tokens in rows]


def worst_window(times: list[tuple[float, int]]) -> int:
    worst = 0
    for start, _ in times:
        worst = max(worst, sum(t for at, t in times if start <= at < start + 60 - TOLERANCE))
    return worst


def deploy(server: LiveServer, name: str) -> tuple[str, str]:
    with server.client() as c:
        created = c.post(
            "/api/v1/projects/default/serverless-deployments",
            json={"name": name, "model": "echo", "tokens_per_minute": QUOTA},
        )
        assert created.status_code == 201, created.text
        key = c.get(f"/api/v1/projects/default/serverless-deployments/{name}/keys").json()
    return created.json()["target_url"] + "chat/completions", key["primary_key"]


def test_quota_holds_under_load_in_process_and_through_redis(
    tmp_path: Path, redis_url: str
) -> None:
    single = start_server(tmp_path / "single")
    shared_home = tmp_path / "shared"
    redis = {"LMFOUNDRY_REDIS_URL": redis_url}
    first = start_server(shared_home, env=redis)
    second = start_server(shared_home, env=redis)
    try:
        single_url, single_key = deploy(single, "load-single")
        shared_url, shared_key = deploy(first, "load-shared")
        second_url = shared_url.replace(first.url, second.url)
        stop = time.monotonic() + DURATION
        lock = threading.Lock()
        tallies = {"single": Tally(), "shared": Tally()}
        threads = [
            threading.Thread(
                target=hammer, args=([single_url], single_key, n, stop, tallies["single"], lock)
            )
            for n in range(CLIENTS)
        ] + [
            threading.Thread(
                target=hammer,
                args=([shared_url, second_url], shared_key, n, stop, tallies["shared"], lock),
            )
            for n in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DURATION + 60)
        with first.client() as c:
            c.get("/api/v1/projects/default/usage")  # flushes that process's records
        with second.client() as c:
            c.get("/api/v1/projects/default/usage")
        with single.client() as c:
            c.get("/api/v1/projects/default/usage")
    finally:
        for server in (single, first, second):
            stop_server(server)

    for name, home, deployment in (
        ("single", tmp_path / "single", "load-single"),
        ("shared", shared_home, "load-shared"),
    ):
        tally = tallies[name]
        assert tally.missing_retry_after == 0, name
        assert tally.retries_refused == [], (name, tally.retries_refused[:3])
        assert tally.refused > 0, f"{name}: the load never reached the quota"
        times = admissions(home, deployment)
        assert sum(t for _, t in times) == tally.tokens  # every admitted request recorded
        assert worst_window(times) <= QUOTA, name
        # Two minutes of load admit at least 90% of two minutes of quota.
        assert tally.tokens >= 0.9 * QUOTA * DURATION / 60, (name, tally.tokens)
