"""No tenant starves another: per-project quotas on instances, jobs, flow runs and calls and
storage (409 for counts and bytes, 429 with Retry-After for rates, each naming the quota
and how to raise it), changed by admins only; and instance and job processes that never
see the server's secrets.

The instance, flow-score and environment checks drive the real server over loopback."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from lmfoundry.config import Settings
from lmfoundry.finetune import supervisor as job_runtime
from lmfoundry.flows.archive import pack
from tests.conftest import ADMIN_TOKEN, Api, LiveServer, start_server, stop_server
from tests.finetune.helpers import upload_example
from tests.flows.helpers import DATA, cli

QUOTAS = "/api/v1/projects/{}/quotas"
SECRETS = {
    "LMFOUNDRY_MASTER_KEY": Fernet.generate_key().decode(),
    "AWS_SECRET_ACCESS_KEY": "aws-secret-" + "s" * 30,
    "DATABASE_URL": "postgresql://app:hunter2-db-password@db.internal/prod",
    "HF_TOKEN": "hf_" + "x" * 34,
}


def error_of(response: httpx.Response) -> dict[str, object]:
    return dict(response.json()["error"])


def quota(view: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(q for q in view["quotas"] if q["name"] == name)


def set_quotas(http: Api | httpx.Client, project: str, **values: int | None) -> dict:  # type: ignore[type-arg]
    response = http.put(QUOTAS.format(project), json={"quotas": values})
    assert response.status_code == 200, response.text
    return dict(response.json())


def new_user(api: Api, name: str, project: str, role: str) -> dict[str, str]:
    created = api.post("/api/v1/users", json={"name": name})
    assert created.status_code == 201, created.text
    added = api.put(f"/api/v1/projects/{project}/members/{name}", json={"role": role})
    assert added.status_code == 200, added.text
    return {"Authorization": f"Bearer {created.json()['token']}"}


def enable_flows(http: Api | httpx.Client, project: str) -> None:
    response = http.patch(f"/api/v1/projects/{project}", json={"flows_enabled": True})
    assert response.status_code == 200, response.text


# -- limits, use and who changes them (in process) -------------------------------------------


def test_members_see_limits_and_only_admins_change_them(api: Api) -> None:
    view = api.get(QUOTAS.format("default")).json()
    names = [q["name"] for q in view["quotas"]]
    assert names == [
        "instances",
        "instance_threads",
        "finetune_jobs",
        "flow_runs_per_minute",
        "flow_calls_per_minute",
        "storage_bytes",
    ]
    assert quota(view, "instances")["limit"] == Settings().project_instances
    assert quota(view, "instances")["used"] == 0
    assert not quota(view, "instances")["custom"]

    api.deploy("echo-a")
    assert quota(api.get(QUOTAS.format("default")).json(), "instances")["used"] == 1

    owner = new_user(api, "olga", "default", "owner")
    seen = api.client.get(QUOTAS.format("default"), headers=owner)
    assert seen.status_code == 200
    refused = api.client.put(
        QUOTAS.format("default"), json={"quotas": {"instances": 999}}, headers=owner
    )
    assert refused.status_code == 403
    assert "admin" in error_of(refused)["message"]
    assert quota(api.get(QUOTAS.format("default")).json(), "instances")["limit"] != 999

    bad = api.put(QUOTAS.format("default"), json={"quotas": {"gpus": 1}})
    assert bad.status_code == 400
    assert "instances" in error_of(bad)["message"]  # names the quotas there are
    negative = api.put(QUOTAS.format("default"), json={"quotas": {"instances": -1}})
    assert negative.status_code == 400

    changed = set_quotas(api, "default", instances=5, storage_bytes=10_000)
    assert (quota(changed, "instances")["limit"], quota(changed, "instances")["custom"]) == (
        5,
        True,
    )
    back = set_quotas(api, "default", instances=None)
    assert quota(back, "instances")["limit"] == Settings().project_instances
    assert quota(back, "storage_bytes")["limit"] == 10_000
    events = [
        e
        for e in api.get("/api/v1/projects/default/audit").json()
        if e["action"].startswith("project.quota")
    ]
    assert [e["detail"]["after"] for e in events] == [
        {"storage_bytes": 10_000},
        {"instances": 5, "storage_bytes": 10_000},
    ]
    assert all(e["actor"] == "admin" for e in events)


def test_storage_over_quota_upload_is_409_and_nothing_is_written(api: Api, home: Path) -> None:
    rows = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": "a"},
                ]
            }
        )
        for i in range(40)
    ]
    data = ("\n".join(rows) + "\n").encode()
    set_quotas(api, "default", storage_bytes=len(data) - 1)

    refused = api.post(
        "/api/v1/projects/default/datasets",
        data={"name": "chat"},
        files={"file": ("chat.jsonl", data)},
    )
    assert refused.status_code == 409, refused.text
    error = error_of(refused)
    assert error["param"] == "storage_bytes"
    assert "--set storage_bytes=" in str(error["message"])
    assert "Nothing was stored" in str(error["message"])
    assert api.get("/api/v1/projects/default/datasets").json() == []
    datasets = home / "artifacts" / "datasets"
    assert [p for p in datasets.rglob("*") if p.is_file()] == []  # no temporary file either

    set_quotas(api, "default", storage_bytes=10)  # smaller than any flow folder
    flow = api.post(
        "/api/v1/projects/default/flows",
        data={"name": "numbers"},
        files={"file": ("flow.tar.gz", pack(DATA / "numbers"))},
    )
    assert flow.status_code == 409, flow.text
    assert error_of(flow)["param"] == "storage_bytes"
    assert api.get("/api/v1/projects/default/flows").json() == []
    assert not (home / "artifacts" / "flows" / "numbers").exists()

    set_quotas(api, "default", storage_bytes=len(data) * 100)
    stored = api.post(
        "/api/v1/projects/default/datasets",
        data={"name": "chat"},
        files={"file": ("chat.jsonl", data)},
    )
    assert stored.status_code == 201, stored.text
    used = quota(api.get(QUOTAS.format("default")).json(), "storage_bytes")["used"]
    assert used == len(data)


@pytest.fixture
def queued_api(home: Path) -> Iterator[Api]:
    """The app without a supervisor: jobs stay queued (counted here, never trained)."""
    from fastapi.testclient import TestClient

    from lmfoundry.api.app import create_app

    settings = Settings(home=home, admin_token=ADMIN_TOKEN, supervisor=False)
    with TestClient(create_app(settings)) as client:
        yield Api(client, ADMIN_TOKEN)


def test_finetune_jobs_beyond_quota_are_409(queued_api: Api) -> None:
    api = queued_api
    train, _ = upload_example(api)
    set_quotas(api, "default", finetune_jobs=1)
    body = {"model": "SmolLM2-135M-Instruct", "training_data": train}
    jobs = "/api/v1/projects/default/fine-tuning-jobs"
    first = api.post(jobs, json=body)
    assert first.status_code == 201, first.text
    refused = api.post(jobs, json=body)
    assert refused.status_code == 409
    assert error_of(refused)["param"] == "finetune_jobs"
    assert "--set finetune_jobs=2" in str(error_of(refused)["message"])
    assert len(api.get(jobs).json()) == 1  # nothing queued by the refused request

    api.post(f"{jobs}/{first.json()['id']}/cancel")
    assert api.post(jobs, json=body).status_code == 201


def test_flow_runs_beyond_the_minute_get_429(api: Api, home: Path) -> None:
    enable_flows(api, "default")
    flows = "/api/v1/projects/default/flows"
    uploaded = api.post(
        flows, data={"name": "numbers"}, files={"file": ("f.tar.gz", pack(DATA / "numbers"))}
    )
    assert uploaded.status_code in (200, 201), uploaded.text
    set_quotas(api, "default", flow_runs_per_minute=1)
    form = {"column_mapping": json.dumps({"number": "${data.n}"})}
    data = {"data": ("data.jsonl", b'{"n": 2}\n{"n": 3}\n')}
    first = api.post(f"{flows}/numbers/runs", data=form, files=data)
    assert first.status_code == 202, first.text
    refused = api.post(f"{flows}/numbers/runs", data=form, files=data)
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert error_of(refused)["param"] == "flow_runs_per_minute"
    assert "--set flow_runs_per_minute=" in str(error_of(refused)["message"])
    assert [r["id"] for r in api.get("/api/v1/projects/default/runs").json()] == [
        first.json()["id"]
    ]
    assert [p.name for p in (home / "artifacts" / "runs").iterdir()] == [first.json()["id"]]


# -- the real server over loopback -----------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("quotas") / "home"
    live = start_server(home, env=SECRETS)
    yield live
    stop_server(live)


def test_over_quota_instance_create_is_409_until_an_admin_raises_it(server: LiveServer) -> None:
    with server.client() as c:
        assert c.post("/api/v1/projects", json={"name": "team-a"}).status_code == 201
        set_quotas(c, "team-a", instances=1)
        deployments = "/api/v1/projects/team-a/serverless-deployments"
        assert c.post(deployments, json={"name": "a-echo", "model": "echo"}).status_code == 201

        refused = c.post(deployments, json={"name": "a-smol", "model": "SmolLM2-135M-Instruct"})
        assert refused.status_code == 409, refused.text
        message = str(error_of(refused)["message"])
        assert error_of(refused)["param"] == "instances"
        assert "instances is 1" in message
        assert "lmfoundry projects quota -p team-a --set instances=2" in message

        endpoints = "/api/v1/projects/team-a/online-endpoints"
        made = c.post(endpoints, json={"name": "a-ep", "auth_mode": "key"})
        assert made.status_code == 201, made.text
        endpoint = f"{endpoints}/a-ep"
        too_many = c.put(
            f"{endpoint}/deployments/blue", json={"model": "echo", "instance_count": 2}
        )
        assert too_many.status_code == 409
        assert error_of(too_many)["param"] == "instances"

        # another project is not held back by team-a's quota
        assert c.post("/api/v1/projects", json={"name": "team-b"}).status_code == 201
        other = c.post(
            "/api/v1/projects/team-b/serverless-deployments",
            json={"name": "b-smol", "model": "SmolLM2-135M-Instruct"},
        )
        assert other.status_code == 201, other.text

    output = cli(server, "projects", "quota", "-p", "team-a", "--set", "instances=4")
    assert "instances" in output
    with server.client() as c:
        created = c.post(deployments, json={"name": "a-smol", "model": "SmolLM2-135M-Instruct"})
        assert created.status_code == 201, created.text
        view = c.get(QUOTAS.format("team-a")).json()
        assert (quota(view, "instances")["limit"], quota(view, "instances")["used"]) == (4, 2)
        audit = c.get("/api/v1/projects/team-a/audit").json()
        assert next(e["detail"]["after"] for e in audit if e["action"] == "project.quota.set") == {
            "instances": 4
        }


def test_flow_score_calls_beyond_the_minute_get_429(server: LiveServer) -> None:
    with server.client() as c:
        assert c.post("/api/v1/projects", json={"name": "flows-a"}).status_code == 201
        enable_flows(c, "flows-a")
        flows = "/api/v1/projects/flows-a/flows"
        uploaded = c.post(
            flows, data={"name": "qa-numbers"}, files={"file": ("f.tar.gz", pack(DATA / "numbers"))}
        )
        assert uploaded.status_code in (200, 201), uploaded.text
        assert c.post(f"{flows}/qa-numbers/deploy").status_code == 200
        key = c.get(f"{flows}/qa-numbers/keys").json()["primary_key"]
        set_quotas(c, "flows-a", flow_calls_per_minute=2)

    score = f"{server.url}/flows/qa-numbers/score"
    headers = {"Authorization": f"Bearer {key}"}
    # a test call counts against the same quota as a score
    with server.client() as c:
        tested = c.post(
            "/api/v1/projects/flows-a/flows/qa-numbers/test", json={"inputs": {"number": 2}}
        )
        assert tested.status_code == 200, tested.text
    ok = httpx.post(score, json={"number": 3}, headers=headers, timeout=60)
    assert ok.status_code == 200, ok.text
    assert ok.json()["square"] == 9
    refused = httpx.post(score, json={"number": 3}, headers=headers, timeout=60)
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    message = str(error_of(refused)["message"])
    assert "flow_calls_per_minute is 2" in message
    assert "--set flow_calls_per_minute=" in message
    # a bad key is refused as before, and is not counted
    assert httpx.post(score, json={"number": 3}, headers={"api-key": "f" * 64}).status_code == 401

    with server.client() as c:
        view = c.get(QUOTAS.format("flows-a")).json()
        assert quota(view, "flow_calls_per_minute")["used"] == 2
        set_quotas(c, "flows-a", flow_calls_per_minute=10)
    again = httpx.post(score, json={"number": 4}, headers=headers, timeout=60)
    assert again.status_code == 200, again.text


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _assert_scrubbed(env: dict[str, str], home: Path) -> None:
    for name, value in SECRETS.items():
        assert name not in env
        assert all(value not in v for v in env.values()), name
    assert ADMIN_TOKEN not in "".join(env.values())
    assert not [k for k in env if k.startswith("LMFOUNDRY_") and k != "LMFOUNDRY_LLAMA_SERVER"]
    assert Path(env["HOME"]).is_relative_to(home)
    assert Path(env["TMPDIR"]).is_relative_to(home)
    assert env["PATH"] == os.environ["PATH"]


def test_instance_processes_get_a_scrubbed_environment(server: LiveServer) -> None:
    target, key = server.deploy("env-team", "env-smol")  # llama-server itself
    echo_target, echo_key = server.deploy("env-team-2", "env-echo", model="echo")  # a worker
    for url, secret in ((target, key), (echo_target, echo_key)):
        answer = httpx.post(
            url + "chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            headers={"api-key": secret},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
    with server.client() as c:
        instances = [i for i in c.get("/api/v1/instances").json() if i["state"] == "ready"]
    assert len(instances) >= 2
    for instance in instances:
        _assert_scrubbed(_environ(instance["pid"]), server.home / "run" / "instances")


def test_job_processes_get_a_scrubbed_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LMFOUNDRY_ADMIN_TOKEN", ADMIN_TOKEN)
    # The launcher's own command line and environment, with a stand-in for the training
    # module that waits (a real job would exit on an unknown id before we read it).
    monkeypatch.setattr(job_runtime, "JOB_MODULE", "tests.security.sleeper")
    work = tmp_path / "ftjob-1"
    work.mkdir()
    database_url = "postgresql://lmf:job-db-password@db/lmf"
    process = job_runtime.LocalLauncher().spawn(
        "ftjob-1", work, {"LMFOUNDRY_DATABASE_URL": database_url, "OMP_NUM_THREADS": "1"}
    )
    try:
        deadline = time.monotonic() + 30
        while not (work / "started").exists() and time.monotonic() < deadline:
            assert process.poll() is None, (work / "job.log").read_text()
            time.sleep(0.05)
        env = _environ(process.process.pid)
        argv = Path(f"/proc/{process.process.pid}/cmdline").read_bytes().split(b"\0")
    finally:
        process.process.kill()
        process.process.wait()
    _assert_scrubbed(env, work)
    assert database_url not in "".join(env.values())
    assert env["OMP_NUM_THREADS"] == "1"
    # the job still gets its database, through a file only the server's user reads
    secrets = work / "job.env"
    assert secrets.read_text() == f"LMFOUNDRY_DATABASE_URL={database_url}\n"
    assert secrets.stat().st_mode & 0o777 == 0o600
    assert argv[argv.index(b"--env-file") + 1] == str(secrets).encode()


def test_the_studio_usage_page_shows_limits_and_use(api: Api) -> None:
    api.deploy("echo-a")
    set_quotas(api, "default", instances=3)
    page = api.get("/projects/default/usage")
    assert page.status_code == 200, page.text
    row = page.text.split('data-quota="instances"', 1)[1].split("</tr>", 1)[0]
    cells = [c.split("</td>", 1)[0].strip() for c in row.split('<td class="num">')[1:]]
    assert cells[0] == "1"  # used
    assert cells[1].startswith("3")  # the project's own limit, not marked default
    assert "(default)" not in cells[1]
    assert 'data-quota="storage_bytes"' in page.text
    assert "lmfoundry projects quota -p default --set NAME=VALUE" in page.text
