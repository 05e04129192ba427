"""Several gateway processes behind one address, sharing one database and one Redis, with
one supervisor owning the instances."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, free_port, start_server, stop_server

pytestmark = pytest.mark.slow


def test_gateways_share_instances_and_lose_no_usage_record(tmp_path: Path, redis_url: str) -> None:
    home = tmp_path / "home"
    port = free_port()
    env = {"LMFOUNDRY_REDIS_URL": redis_url}
    servers: list[LiveServer] = []
    try:
        supervisor = start_server(home, port=port, env=env, args=["--reuse-port"])
        servers.append(supervisor)
        with supervisor.client() as c:
            created = c.post(
                "/api/v1/projects/default/serverless-deployments",
                json={"name": "shared", "model": "echo", "requests_per_minute": 100_000},
            )
            assert created.status_code == 201
            key = c.get("/api/v1/projects/default/serverless-deployments/shared/keys").json()[
                "primary_key"
            ]
        gateways = [
            start_server(home, port=port, env=env, args=["--reuse-port", "--no-supervisor"])
            for _ in range(2)
        ]
        servers += gateways
        url = f"http://127.0.0.1:{port}/serverless/shared/chat/completions"

        received: list[str] = []
        failed: list[str] = []
        stop = threading.Event()

        def client(n: int) -> None:
            body = {"messages": [{"role": "user", "content": f"client {n}"}]}
            while not stop.is_set():
                # a new connection each time, so the kernel spreads them over the processes
                try:
                    response = httpx.post(url, json=body, headers={"api-key": key}, timeout=30)
                except httpx.TransportError as exc:  # the gateway killed mid-request
                    failed.append(str(exc))
                    continue
                if response.status_code == 200:
                    received.append(response.headers["x-request-id"])
                else:
                    failed.append(response.text)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(4)
        gateways[0].process.send_signal(signal.SIGKILL)
        gateways[0].process.wait()
        before_kill = len(received)
        time.sleep(4)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert len(received) > before_kill  # the others kept serving
        assert len(failed) <= 4  # at most the requests in flight in the killed gateway

        with gateways[1].client() as c:  # a gateway answers the management API too
            rows = c.get("/api/v1/projects/default/usage").json()
        recorded = next(r for r in rows if r["target"] == "shared")["requests"]
        assert recorded >= len(received)  # every answered request has its record
        assert recorded <= len(received) + len(failed)

        with supervisor.client() as c:
            instances = c.get("/api/v1/instances").json()
        assert len([i for i in instances if i["state"] == "ready"]) == 1  # shared, not copied
    finally:
        for server in servers:
            stop_server(server)
