"""GET /metrics and /readyz: who may read them, and that the counts are the ones callers saw
and the usage report holds, against a real `lmfoundry up` and the bundled model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from lmfoundry.observability.health import Health
from lmfoundry.quotas.redis_store import RedisQuotaStore
from lmfoundry.storage.models import FineTuningJob, FlowRun, Project
from tests.conftest import Api, LiveServer, free_port, start_redis, start_server, stop_server

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "Name a colour. One word."}]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page: (name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(
    page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **want: str
) -> float:
    """The sum of `name`'s samples whose labels include `want`."""
    return sum(
        value for (n, labels), value in page.items() if n == name and set(want.items()) <= labels
    )


# -- who may read /metrics (in-process, the echo engine) --------------------------------------


def test_metrics_need_an_admin_or_a_metrics_token(api: Api) -> None:
    assert api.client.get("/metrics").status_code == 401
    created = api.post("/api/v1/users", json={"name": "alice"})
    assert created.status_code == 201, created.text
    alice = {"Authorization": f"Bearer {created.json()['token']}"}
    refused = api.client.get("/metrics", headers=alice)
    assert refused.status_code == 403
    assert "metrics token" in refused.text
    # an ordinary user may not make a token that reads every project's metrics
    own = api.client.post("/api/v1/tokens", json={"name": "m", "scope": "metrics"}, headers=alice)
    assert own.status_code == 403

    page = api.get("/metrics")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    assert "# TYPE lmfoundry_instances gauge" in page.text

    made = api.post("/api/v1/tokens", json={"name": "scraper", "scope": "metrics"})
    assert made.status_code == 201, made.text
    assert made.json()["scope"] == "metrics"
    scraper = {"Authorization": f"Bearer {made.json()['token']}"}
    assert api.client.get("/metrics", headers=scraper).status_code == 200
    # ... and nothing else: not the management API, not the studio
    elsewhere = api.client.get("/api/v1/projects", headers=scraper)
    assert elsewhere.status_code == 403
    assert "metrics-only token" in elsewhere.text
    listed = {t["name"]: t["scope"] for t in api.get("/api/v1/tokens").json()}
    assert listed == {"LMFOUNDRY_ADMIN_TOKEN": "all", "scraper": "metrics"}


def test_refusals_are_counted_once_with_their_limit_and_no_key_in_a_label(api: Api) -> None:
    deployment = api.deploy("echoes", requests_per_minute=2)
    url = "/serverless/echoes/chat/completions"
    key = {"api-key": deployment["primary_key"]}
    body = {"messages": QUESTION, "max_tokens": 4}
    statuses = [api.client.post(url, json=body, headers=key).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    text = api.get("/metrics").text
    page = samples(text)
    mine = {"project": "default", "target_kind": "serverless", "target": "echoes"}
    assert total(page, "lmfoundry_requests_total", status="200", **mine) == 2
    assert total(page, "lmfoundry_requests_total", status="429", **mine) == 2
    assert total(page, "lmfoundry_quota_rejections_total", limit="requests", **mine) == 2
    assert total(page, "lmfoundry_quota_rejections_total", limit="tokens", **mine) == 0
    assert total(page, "lmfoundry_request_duration_seconds_count", **mine) == 4
    assert total(page, "lmfoundry_quota_remaining", limit="requests", **mine) == 0
    for secret in (deployment["primary_key"], deployment["secondary_key"], api.token):
        assert secret not in text


def test_running_jobs_and_flow_runs_are_reported_at_scrape_time(api: Api) -> None:
    example = Path(__file__).parents[2] / "examples" / "finetune" / "data" / "chat.jsonl"
    dataset = api.post(
        "/api/v1/projects/default/datasets",
        files={"file": ("chat.jsonl", example.read_bytes())},
        data={"name": "chat"},
    )
    assert dataset.status_code == 201, dataset.text
    platform = api.client.app.state.platform  # type: ignore[attr-defined]
    with platform.db.session() as s:
        project = s.scalar(select(Project.id).where(Project.name == "default"))
        s.add(
            FineTuningJob(
                id="ftjob-metrics",
                project_id=project,
                model=MODEL,
                training_dataset_id=dataset.json()["id"],
                hyperparameters={},
                spec={},
                status="running",
                step=7,
                total_steps=20,
                metrics={"train_loss": 1.25, "validation_loss": 1.5},
            )
        )
        s.add(
            FlowRun(
                id="run-metrics",
                project_id=project,
                flow="chat-flow",
                flow_version=1,
                status="running",
                data_name="lines.jsonl",
                column_mapping={},
                total_lines=10,
                completed_lines=4,
                failed_lines=1,
                metrics={},
            )
        )
    page = samples(api.get("/metrics").text)
    job = {"project": "default", "job": "ftjob-metrics", "model": MODEL}
    assert total(page, "lmfoundry_finetune_job_step", **job) == 7
    assert total(page, "lmfoundry_finetune_job_total_steps", **job) == 20
    assert total(page, "lmfoundry_finetune_train_loss", **job) == 1.25
    assert total(page, "lmfoundry_finetune_validation_loss", **job) == 1.5
    run = {"project": "default", "flow": "chat-flow", "run": "run-metrics"}
    assert total(page, "lmfoundry_flow_run_lines", state="total", **run) == 10
    assert total(page, "lmfoundry_flow_run_lines", state="completed", **run) == 4
    assert total(page, "lmfoundry_flow_run_lines", state="failed", **run) == 1
    with platform.db.session() as s:  # finished: no longer reported
        s.get(FineTuningJob, "ftjob-metrics").status = "completed"
    page = samples(api.get("/metrics").text)
    assert total(page, "lmfoundry_finetune_job_step", **job) == 0


def test_readyz_answers_ready_in_process(api: Api) -> None:
    ready = api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "quota_store": "ok", "supervisor": "ok"}
    assert api.client.get("/healthz").status_code == 200


async def test_readiness_names_an_unreachable_redis_without_its_url(api: Api) -> None:
    platform = api.client.app.state.platform  # type: ignore[attr-defined]
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    store = RedisQuotaStore(url)
    try:
        readiness = await Health(platform.db, store, platform.backend, True).readiness()
    finally:
        await store.aclose()
    assert not readiness.ready
    assert readiness.checks["database"] == "ok"
    assert readiness.checks["quota_store"].startswith("down: cannot reach the quota store")
    assert "hunter2" not in str(readiness.checks)


# -- a real server, the bundled model --------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("metrics") / "home")
    yield live
    stop_server(live)


@pytest.mark.slow
def test_counts_equal_what_clients_saw_and_the_usage_report(server: LiveServer) -> None:
    with server.client() as c:
        assert c.post("/api/v1/projects", json={"name": "metered"}).status_code == 201
        created = c.post(
            "/api/v1/projects/metered/serverless-deployments",
            json={"name": "counted", "model": MODEL, "requests_per_minute": 5},
        )
        assert created.status_code == 201, created.text
        key = c.get("/api/v1/projects/metered/serverless-deployments/counted/keys").json()
    client = openai.OpenAI(
        base_url=created.json()["target_url"] + "v1", api_key=key["primary_key"], max_retries=0
    )
    seen: dict[str, int] = {}
    for i in range(8):  # 5 admitted (3 plain, 2 streamed), then 3 refused by requests/min
        try:
            if i % 2:
                chunks = list(
                    client.chat.completions.create(
                        model=MODEL, messages=QUESTION, max_tokens=8, stream=True
                    )
                )
                assert chunks
            else:
                client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
            status = "200"
        except openai.RateLimitError as exc:
            status = str(exc.status_code)
        seen[status] = seen.get(status, 0) + 1
    assert seen == {"200": 5, "429": 3}

    with server.client() as c:
        report = c.get("/api/v1/projects/metered/usage").json()
        page = samples(c.get("/metrics").text)
    mine = {"project": "metered", "target_kind": "serverless", "target": "counted"}
    for status, count in seen.items():
        assert total(page, "lmfoundry_requests_total", status=status, **mine) == count
    (row,) = report
    assert row["requests"] == 5
    assert total(page, "lmfoundry_tokens_total", kind="prompt", **mine) == row["prompt_tokens"]
    completion = total(page, "lmfoundry_tokens_total", kind="completion", **mine)
    assert completion == row["completion_tokens"] > 0
    assert total(page, "lmfoundry_request_duration_seconds_count", **mine) == 8
    assert total(page, "lmfoundry_time_to_first_token_seconds_count", **mine) == 5
    assert total(page, "lmfoundry_quota_rejections_total", limit="requests", **mine) == 3
    assert total(page, "lmfoundry_instances", state="ready") >= 1
    # llama-server's own gauges, relabelled per instance: idle now that every answer is in
    engine = {n for n, _ in page if n.startswith("lmfoundry_instance_requests_")}
    assert engine == {
        "lmfoundry_instance_requests_processing",
        "lmfoundry_instance_requests_deferred",
    }
    assert total(page, "lmfoundry_instance_requests_processing") == 0
    assert total(page, "lmfoundry_usage_records_pending") == 0  # the report flushed them


@pytest.mark.slow
def test_metrics_port_serves_metrics_only_without_a_token(tmp_path: Path) -> None:
    port = free_port()
    live = start_server(tmp_path / "home", env={"LMFOUNDRY_METRICS_PORT": str(port)})
    try:
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert scrape.status_code == 200
        assert "lmfoundry_instances" in scrape.text
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/projects").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/serverless/x/info").status_code == 404
        assert httpx.get(live.url + "/metrics").status_code == 401  # the main port: a token
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMFOUNDRY_")}
        made = subprocess.run(
            [sys.executable, "-m", "lmfoundry", "tokens", "new", "--metrics", "--json"],
            env={**env, "LMFOUNDRY_HOME": str(live.home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        created = json.loads(made.stdout)
        assert (created["name"], created["scope"]) == ("metrics", "metrics")
        scraper = {"Authorization": f"Bearer {created['token']}"}
        assert httpx.get(live.url + "/metrics", headers=scraper).status_code == 200
        assert httpx.get(live.url + "/api/v1/me", headers=scraper).status_code == 403
    finally:
        stop_server(live)


@pytest.mark.slow
def test_readyz_names_a_stopped_redis(tmp_path: Path) -> None:
    port = free_port()
    redis = start_redis(port, tmp_path)
    live = start_server(
        tmp_path / "home", env={"LMFOUNDRY_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    )
    try:
        ready = httpx.get(live.url + "/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
        redis.terminate()
        redis.wait(timeout=10)
        down = httpx.get(live.url + "/readyz", timeout=10)
        assert down.status_code == 503
        checks = down.json()["checks"]
        assert checks["quota_store"].startswith("down:")
        assert checks["database"] == "ok"
        assert httpx.get(live.url + "/healthz").status_code == 200  # alive all the same
    finally:
        if redis.poll() is None:
            redis.kill()
        stop_server(live)
