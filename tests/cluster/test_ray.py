"""lmfoundry on a real local Ray cluster (`ray start --head`), inside a loopback-only network
namespace: an online endpoint whose deployments are Ray Serve applications, 200 requests
through our gateway with the traffic split honoured, resizing that leaves untouched replicas
running, and a fine-tuning job run as a Ray Job.

`tests/cluster/test_namespace.py` runs this file in a fresh namespace; run it directly with
`scripts/in-netns .venv/bin/pytest tests/cluster/test_ray.py`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmfoundry.catalog.bundled import smollm2_path
from tests.cluster.namespace import ancestors, kill_namespace_processes, loopback_only
from tests.conftest import LiveServer, free_port, start_server, stop_server
from tests.finetune.helpers import (
    JOBS,
    create_job,
    events,
    finished,
    import_tiny,
    output_folder,
    steps,
    wait_for,
)

pytest.importorskip("ray.serve", reason="Ray is not installed: pip install 'lmfoundry[ray]'")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not loopback_only(),
        reason="Ray binds every interface: these tests run only inside a loopback-only "
        "network namespace (tests/cluster/test_namespace.py starts one)",
    ),
]

E = "/api/v1/projects/default/online-endpoints"
BIN = Path(sys.executable).parent


class Cluster:
    def __init__(self, address: str, dashboard: str) -> None:
        self.address = address
        self.dashboard = dashboard

    def applications(self) -> dict:
        return httpx.get(f"{self.dashboard}/api/serve/applications/", timeout=10).json()[
            "applications"
        ]

    def replica_pids(self, app: str) -> set[int]:
        deployment = self.applications()[app]["deployments"]["Instance"]
        return {r["pid"] for r in deployment["replicas"] if r["state"] == "RUNNING"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    port, dashboard = free_port(), free_port()
    temp = Path(f"/tmp/lmfray-{os.getpid()}")  # Ray's socket paths must stay short
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",  # job entry points run this `python`
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    started = subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--num-cpus=2",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield Cluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}")
    finally:
        kill_namespace_processes(keep=ancestors())
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def server(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(
        tmp_path_factory.mktemp("ray") / "home",
        env={
            "LMFOUNDRY_RAY_ADDRESS": cluster.address,
            "LMFOUNDRY_ENGINE_THREADS": "1",  # three replicas share two cores
            "LMFOUNDRY_JOB_THREADS": "1",
        },
        timeout=120,
    )
    yield live
    stop_server(live)


def wait_ready(c: httpx.Client, endpoint: str, deployment: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = c.get(f"{E}/{endpoint}/deployments/{deployment}").json()
        if state["provisioning_state"] == "succeeded":
            return
        assert state["provisioning_state"] != "failed", state
        time.sleep(0.5)
    raise AssertionError(f"{endpoint}/{deployment} not ready: {state}")


def ray_instances(c: httpx.Client) -> dict[str, set[int]]:
    """Serve application -> pids of its ready replicas, as lmfoundry lists them."""
    apps: dict[str, set[int]] = {}
    for i in c.get("/api/v1/instances").json():
        if i["state"] == "ready":
            apps.setdefault(i["id"].split("#")[0], set()).add(i["pid"])
    return apps


def test_an_endpoint_on_ray_serve_honours_the_split(cluster: Cluster, server: LiveServer) -> None:
    with server.client() as c:
        for _ in range(2):  # smol:1 and smol:2, two copies of the bundled weights
            smol = {"name": "smol", "path": str(smollm2_path())}
            registered = c.post("/api/v1/projects/default/models", json=smol)
            assert registered.status_code == 201, registered.text
        assert c.post(E, json={"name": "rayep"}).status_code == 201
        for name, model, count in (("blue", "smol:1", 2), ("green", "smol:2", 1)):
            put = c.put(
                f"{E}/rayep/deployments/{name}", json={"model": model, "instance_count": count}
            )
            assert put.status_code == 200, put.text
        wait_ready(c, "rayep", "blue")
        wait_ready(c, "rayep", "green")
        assert c.put(f"{E}/rayep/traffic", json={"blue": 70, "green": 30}).status_code == 200
        endpoint = c.get(f"{E}/rayep").json()
        url, key = endpoint["scoring_uri"], c.get(f"{E}/rayep/keys").json()["primary_key"]

        # Each deployment is a Ray Serve application with instance_count replicas.
        listed = ray_instances(c)
        assert sorted(len(p) for p in listed.values()) == [1, 2], listed
        for app, pids in listed.items():
            assert cluster.replica_pids(app) == pids  # what Ray itself says
        blue_app = next(a for a, p in listed.items() if len(p) == 2)
        green_app = next(a for a, p in listed.items() if len(p) == 1)

    def score(n: int) -> tuple[int, str, str]:
        body = {
            "input_data": {
                "input_string": [{"role": "user", "content": f"Say hello to number {n}."}],
                "parameters": {"max_new_tokens": 4, "temperature": 0.0},
            }
        }
        response = httpx.post(
            url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )
        ok = response.status_code == 200
        output = str(response.json().get("output", "")) if ok else response.text
        return response.status_code, response.headers.get("azureml-model-deployment", ""), output

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(score, range(200)))
    failures = [r for r in results if r[0] != 200]
    assert failures == [], failures[:5]
    served = Counter(deployment for _, deployment, _ in results)
    assert served["blue"] + served["green"] == 200
    # 70/30 over 200 requests: three standard deviations are about 10 points
    assert 120 <= served["blue"] <= 160, served
    assert all(output.strip() for _, _, output in results)  # the model answered each

    with server.client() as c:
        rows = c.get("/api/v1/projects/default/usage").json()
        metered = sum(r["requests"] for r in rows if "rayep" in (r.get("target") or ""))
        assert metered == 200, rows  # one usage record per answered request

        # A new split and a resize of green: Serve keeps blue's replicas (same pids), and
        # green keeps the one it had while it gains a second.
        assert c.put(f"{E}/rayep/traffic", json={"blue": 50, "green": 50}).status_code == 200
        put = c.put(f"{E}/rayep/deployments/green", json={"model": "smol:2", "instance_count": 2})
        assert put.status_code == 200, put.text
        deadline = time.monotonic() + 180
        while len(cluster.replica_pids(green_app)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cluster.replica_pids(blue_app) == listed[blue_app]
        grown = cluster.replica_pids(green_app)
        assert len(grown) == 2 and listed[green_app] <= grown, (listed, grown)

        # Deleting the endpoint removes its Serve applications.
        assert c.delete(f"{E}/rayep").status_code in (200, 202, 204)
        deadline = time.monotonic() + 60
        while {blue_app, green_app} & set(cluster.applications()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not {blue_app, green_app} & set(cluster.applications())


def submissions(client: Any, job_id: str) -> list[Any]:
    """The Ray Jobs submitted for one of our fine-tuning jobs."""
    return [j for j in client.list_jobs() if (j.metadata or {}).get("lmfoundry_job") == job_id]


def test_a_fine_tuning_job_runs_as_a_ray_job(
    cluster: Cluster, server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from ray.job_submission import JobSubmissionClient

    pytest.importorskip("peft")
    from tests.finetune.tiny import build_tiny_phi3

    tiny = build_tiny_phi3(tmp_path_factory.mktemp("models") / "tiny-phi3")
    with server.client() as c:
        import_tiny(c, tiny)
        job = create_job(c, "tiny-phi3", max_steps=6, checkpoint_steps=3)
        done = finished(c, job["id"], timeout=300)
        assert done["status"] == "completed", done
        listed = events(c, job["id"])
        assert steps(listed, "metrics") == list(range(1, 7))
        assert (output_folder(server.home, done["id"]) / "MLmodel").exists()

    # Ray ran it: one submission of this job, succeeded; its log comes back as the job's log.
    client = JobSubmissionClient(cluster.dashboard)
    deadline = time.monotonic() + 60
    while True:
        mine = submissions(client, job["id"])
        if [j.status.value for j in mine] == ["SUCCEEDED"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [j.status.value for j in mine] == ["SUCCEEDED"], mine
    assert "LMFOUNDRY_DATABASE_URL" not in str(mine[0].runtime_env)  # secrets stay off listings
    ray_log = client.get_job_logs(mine[0].submission_id)
    assert f"job {job['id']} completed after 6 steps" in ray_log, ray_log[-2000:]
    log = Path(server.home, "jobs", job["id"], "job.log")
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text() == ray_log) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert log.read_text() == ray_log

    # A cancel stops the Ray Job within seconds, and the next queued job gets the slot.
    with server.client() as c:
        long = create_job(c, "tiny-phi3", max_steps=5000)
        wait_for(c, long["id"], lambda j: j["step"] >= 2)
        started = time.monotonic()
        canceled = c.post(f"{JOBS}/{long['id']}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert time.monotonic() - started < 20
    stopped = submissions(client, long["id"])
    assert [j.status.value for j in stopped] == ["STOPPED"], stopped


def test_a_gateway_without_supervisor_serves_through_ray(
    cluster: Cluster, server: LiveServer
) -> None:
    """A second gateway (`--no-supervisor`) on the same database: its first request to a
    serverless deployment nobody runs yet asks the supervisor, which deploys it on Ray; both
    gateways then answer from the same replica."""
    with server.client() as c:
        created = c.post(
            "/api/v1/projects/default/serverless-deployments",
            json={"name": "echoer", "model": "echo"},
        )
        assert created.status_code == 201, created.text
        key = c.get("/api/v1/projects/default/serverless-deployments/echoer/keys").json()[
            "primary_key"
        ]
    before = set(cluster.applications())
    gateway = start_server(
        server.home,
        env={"LMFOUNDRY_RAY_ADDRESS": cluster.address},
        args=["--no-supervisor"],
        timeout=120,
    )
    try:
        body = {"messages": [{"role": "user", "content": "hello from the second gateway"}]}
        for live in (gateway, server):
            response = httpx.post(
                f"{live.url}/serverless/echoer/chat/completions",
                json=body,
                headers={"api-key": key},
                timeout=180,
            )
            assert response.status_code == 200, response.text
            answer = response.json()["choices"][0]["message"]["content"]
            assert answer == "hello from the second gateway"  # the echo engine, on a replica
        added = set(cluster.applications()) - before
        assert len(added) == 1, added  # one Serve application, shared by both gateways
        assert len(cluster.replica_pids(added.pop())) == 1
    finally:
        stop_server(gateway)
