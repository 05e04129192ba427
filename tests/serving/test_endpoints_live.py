"""Online endpoints on a real server with the bundled model: an instance killed under load,
and a rollout of a new version under load, with no failed request."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from lmfoundry.catalog.bundled import smollm2_path
from tests.conftest import LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow

E = "/api/v1/projects/default/online-endpoints"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("endpoints") / "home")
    with live.client() as c:
        for _ in range(2):  # two versions of a model (two copies of the same weights)
            registered = c.post(
                "/api/v1/projects/default/models",
                json={"name": "smol", "path": str(smollm2_path())},
            )
            assert registered.status_code == 201, registered.text
    yield live
    stop_server(live)


def wait_ready(
    c: httpx.Client, endpoint: str, deployment: str, generation: int = 1, timeout: float = 120
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = c.get(f"{E}/{endpoint}/deployments/{deployment}").json()
        if state["provisioning_state"] == "succeeded" and state["generation"] == generation:
            return state
        assert state["provisioning_state"] != "failed", state
        time.sleep(0.2)
    raise AssertionError(f"{endpoint}/{deployment} not ready")


class Load:
    """Threads sending /score requests back to back until stopped."""

    def __init__(self, url: str, key: str, threads: int = 4) -> None:
        self.url, self.key = url, key
        self.ok = 0
        self.done_at: list[float] = []
        self.failures: list[str] = []
        self.served: set[str] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def _run(self, n: int) -> None:
        body = {
            "input_data": {
                "input_string": [{"role": "user", "content": f"Say hi {n}"}],
                "parameters": {"max_new_tokens": 12, "temperature": 0.0},
            }
        }
        with httpx.Client(timeout=120) as http:
            while not self._stop.is_set():
                response = http.post(
                    self.url, json=body, headers={"Authorization": f"Bearer {self.key}"}
                )
                if response.status_code == 200 and response.json().get("output") is not None:
                    self.ok += 1
                    self.done_at.append(time.monotonic())
                    self.served.add(response.headers["azureml-model-deployment"])
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)


def make_endpoint(c: httpx.Client, name: str, model: str, instances: int) -> tuple[str, str]:
    assert c.post(E, json={"name": name}).status_code == 201
    put = c.put(f"{E}/{name}/deployments/blue", json={"model": model, "instance_count": instances})
    assert put.status_code == 200, put.text
    wait_ready(c, name, "blue")
    assert c.put(f"{E}/{name}/traffic", json={"blue": 100}).status_code == 200
    endpoint = c.get(f"{E}/{name}").json()
    return endpoint["scoring_uri"], c.get(f"{E}/{name}/keys").json()["primary_key"]


def instance_pids(c: httpx.Client, group_prefix: str = "ep-") -> list[int]:
    return [
        i["pid"]
        for i in c.get("/api/v1/instances").json()
        if i["id"].startswith(group_prefix) and i["state"] == "ready" and i["pid"]
    ]


def test_killing_one_of_two_instances_loses_no_request(server: LiveServer) -> None:
    with server.client() as c:
        url, key = make_endpoint(c, "survivor", "smol:1", instances=2)
        pids = instance_pids(c)
        assert len(pids) == 2
        with Load(url, key) as load:
            time.sleep(3)
            killed_at = time.monotonic()
            os.kill(pids[0], signal.SIGKILL)
            time.sleep(8)
        assert load.failures == []
        assert any(t > killed_at for t in load.done_at)  # and it kept answering
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(instance_pids(c)) < 2:
            time.sleep(0.5)
        now = instance_pids(c)
        assert len(now) == 2 and pids[0] not in now and pids[1] in now  # it came back
        c.delete(f"{E}/survivor")


def test_rollout_of_a_new_version_under_load(server: LiveServer) -> None:
    with server.client() as c:
        url, key = make_endpoint(c, "rolling", "smol:1", instances=1)
        before = set(instance_pids(c))
        with Load(url, key) as load:
            time.sleep(2)
            put = c.put(f"{E}/rolling/deployments/blue", json={"model": "smol:2"})
            assert put.status_code == 200 and put.json()["generation"] == 2
            wait_ready(c, "rolling", "blue", generation=2)
            switched_at = time.monotonic()
            time.sleep(5)
        assert load.failures == []
        assert any(t > switched_at for t in load.done_at)
        assert c.get(f"{E}/rolling/deployments/blue").json()["model"] == "smol:2"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and set(instance_pids(c)) & before:
            time.sleep(0.5)
        assert not set(instance_pids(c)) & before  # the old instance stopped after draining
        assert c.delete("/api/v1/projects/default/models/smol:1").status_code == 204
