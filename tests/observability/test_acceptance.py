"""Issue 19's acceptance, as a new user would check it, against real `lmfoundry up` processes
and the bundled SmolLM2: after a mix of streamed and plain requests, some refused by a
requests/min quota, `/metrics` (401 without a token), the usage report, the monitoring API,
`lmfoundry status` and the monitoring page in headless Chromium all show the numbers the
clients saw; and the same summed over two gateways sharing PostgreSQL and Redis."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lmfoundry.observability.health import Health
from lmfoundry.quotas.service import make_store
from lmfoundry.runtime.directory import InstanceDirectory
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Supervisor
from tests.conftest import (
    LiveServer,
    database_url_for,
    free_port,
    start_redis,
    start_server,
    stop_server,
)

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "Name a colour. One word."}]
REPO = Path(__file__).parents[2]
CHROMIUM = Path(os.environ.get("LMFOUNDRY_TEST_CHROMIUM", "/usr/bin/chromium"))

Page = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: LiveServer) -> Page:
    """Every sample of a gateway's /metrics, read with the admin's token."""
    with server.client() as c:
        answer = c.get("/metrics")
    assert answer.status_code == 200, answer.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def total(pages: list[Page], name: str, **want: str) -> float:
    """`name`'s samples whose labels include `want`, summed over every page (gateway)."""
    return sum(
        value
        for page in pages
        for (n, labels), value in page.items()
        if n == name and set(want.items()) <= labels
    )


def deploy(server: LiveServer, project: str, name: str, rpm: int) -> tuple[str, str]:
    with server.client() as c:
        assert c.post("/api/v1/projects", json={"name": project}).status_code == 201
        created = c.post(
            f"/api/v1/projects/{project}/serverless-deployments",
            json={"name": name, "model": MODEL, "requests_per_minute": rpm},
        )
        assert created.status_code == 201, created.text
        keys = c.get(f"/api/v1/projects/{project}/serverless-deployments/{name}/keys")
    return created.json()["target_url"], keys.json()["primary_key"]


def load(targets: list[str], key: str, calls: int) -> dict[str, int]:
    """`calls` requests spread over the gateways' target URLs, every other one streamed;
    the HTTP statuses the clients got, counted."""
    seen: dict[str, int] = {}
    clients = [openai.OpenAI(base_url=t + "v1", api_key=key, max_retries=0) for t in targets]
    for i in range(calls):
        client = clients[i % len(clients)]
        try:
            if (i // len(clients)) % 2:
                chunks = list(
                    client.chat.completions.create(
                        model=MODEL, messages=QUESTION, max_tokens=8, stream=True
                    )
                )
                assert chunks[-1].usage is not None
            else:
                client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
            status = "200"
        except openai.APIStatusError as exc:
            status = str(exc.status_code)
        seen[status] = seen.get(status, 0) + 1
    return seen


def assert_mixed(seen: dict[str, int]) -> None:
    """Some answered, some refused by requests/min, nothing else. (How many of each
    depends on how many fit in one minute: a loaded machine answers slowly.)"""
    assert set(seen) == {"200", "429"}, seen


def check_counts(pages: list[Page], seen: dict[str, int], report: dict[str, int], **mine: str):
    """/metrics (summed over `pages`) against the clients and the usage report."""
    for status, count in seen.items():
        assert total(pages, "lmfoundry_requests_total", status=status, **mine) == count, status
    assert total(pages, "lmfoundry_requests_total", **mine) == sum(seen.values())
    assert total(pages, "lmfoundry_tokens_total", kind="prompt", **mine) == report["prompt_tokens"]
    completion = total(pages, "lmfoundry_tokens_total", kind="completion", **mine)
    assert completion == report["completion_tokens"] > 0
    assert total(pages, "lmfoundry_request_duration_seconds_count", **mine) == sum(seen.values())
    assert total(pages, "lmfoundry_time_to_first_token_seconds_count", **mine) == seen["200"]
    assert total(pages, "lmfoundry_quota_rejections_total", limit="requests", **mine) == seen.get(
        "429", 0
    )


def check_monitoring(server: LiveServer, project: str, name: str, seen: dict[str, int]):
    """The monitoring API (what the page draws) against the clients and the usage report."""
    with server.client() as c:
        body = c.get(f"/api/v1/projects/{project}/monitoring/serverless/{name}").json()
        (report,) = c.get(f"/api/v1/projects/{project}/usage").json()
    assert body["totals"]["by_status"] == seen
    assert sum(b["requests"] for b in body["buckets"]) == sum(seen.values())
    assert sum(b["rate_limited"] for b in body["buckets"]) == seen.get("429", 0)
    assert body["totals"]["prompt_tokens"] == report["prompt_tokens"]
    assert body["totals"]["completion_tokens"] == report["completion_tokens"]
    assert report["requests"] == seen["200"]  # refusals are counted, not billed
    return body, report


# -- one server: /metrics, the usage report, the monitoring API, the CLI, the page ------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("acceptance") / "home")
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def loaded(server: LiveServer) -> dict[str, int]:
    """Eight requests, four streamed, to a deployment allowing three a minute."""
    target, key = deploy(server, "watched", "smol", rpm=3)
    seen = load([target], key, 8)
    assert_mixed(seen)
    return seen


@pytest.mark.slow
def test_metrics_equal_what_clients_saw_and_the_usage_report(
    server: LiveServer, loaded: dict[str, int]
) -> None:
    assert httpx.get(server.url + "/metrics").status_code == 401
    body, report = check_monitoring(server, "watched", "smol", loaded)
    mine = {"project": "watched", "target_kind": "serverless", "target": "smol"}
    check_counts([scrape(server)], loaded, report, **mine)
    assert body["totals"]["ttft_p50_ms"] is not None
    assert body["instances"] and body["instances"][0]["model"] == MODEL


@pytest.mark.slow
def test_lmfoundry_status_prints_instances_and_the_last_hour(
    server: LiveServer, loaded: dict[str, int]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMFOUNDRY_")}
    env.update(
        LMFOUNDRY_HOME=str(server.home), LMFOUNDRY_URL=server.url, LMFOUNDRY_TOKEN=server.token
    )
    env["COLUMNS"] = "160"
    ran = subprocess.run(
        [sys.executable, "-m", "lmfoundry", "status", "--project", "watched"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    out = ran.stdout
    print(out)
    assert "Instances" in out and MODEL in out and "ready" in out and "MiB" in out
    (line,) = [row for row in out.splitlines() if " smol " in row]
    numbers = [int(n) for n in re.findall(r"\b\d+\b", line)]
    # requests, errors, 429s (then tokens and p50)
    assert numbers[:3] == [8, 0, loaded["429"]], line


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: scripts/system-deps")
def test_the_monitoring_page_draws_the_same_numbers(
    server: LiveServer, loaded: dict[str, int], tmp_path: Path
) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    problems: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 1400}, base_url=server.url
            )
            context.set_default_timeout(20_000)
            tab = context.new_page()
            tab.on("pageerror", lambda exc: problems.append(str(exc)))
            tab.goto("/signin")
            tab.fill("#token", server.token)
            tab.click("button[type=submit]")
            tab.wait_for_url(re.compile(r"/projects/"))
            tab.goto("/projects/watched/deployments/smol")
            tab.click("#monitoring-link")
            tab.wait_for_selector("#monitoring[data-loaded=hour]")
            numbers = {name: tab.inner_text(f"#total-{name}") for name in ("requests", "ok", "429")}
            assert numbers == {"requests": "8", "ok": str(loaded["200"]), "429": str(loaded["429"])}
            statuses = tab.eval_on_selector_all(
                "#by-status tbody tr",
                "rows => rows.map(r => [...r.children].map(c => c.textContent))",
            )
            assert dict(statuses) == {s: str(n) for s, n in loaded.items()}
            drawn = tab.eval_on_selector_all(
                "#chart-status path[data-series]",
                "paths => Object.fromEntries(paths.map(p => [p.dataset.series, +p.dataset.sum]))",
            )
            assert drawn == {"succeeded": loaded["200"], "errors": 0, "429": loaded["429"]}
            lines = tab.eval_on_selector_all(
                ".chart path[data-series]", "paths => paths.map(p => +p.dataset.points)"
            )
            assert all(n > 0 for n in lines[:5]), lines  # every ledger chart has points
            shot = tmp_path / "monitoring.png"
            tab.screenshot(path=str(shot), full_page=True)
            print(f"monitoring page screenshot: {shot}")
            tab.click("[data-window=day]")
            tab.wait_for_selector("#monitoring[data-loaded=day]")
            assert tab.inner_text("#total-requests") == "8"
            tab.goto("/cluster")
            assert MODEL in tab.inner_text("#instances")
            cluster = tmp_path / "cluster.png"
            tab.screenshot(path=str(cluster), full_page=True)
            print(f"cluster page screenshot: {cluster}")
        finally:
            browser.close()
    assert not problems, problems


# -- two gateways sharing PostgreSQL and Redis ------------------------------------------------


async def test_a_gateway_is_ready_only_while_a_supervisor_beats(database_url: str) -> None:
    """`lmfoundry up --no-supervisor`: /readyz asks the database for the supervisor's
    heartbeat (it beats even while it runs no instance)."""
    db = Database(database_url)
    db.migrate()
    store = make_store(None, True)
    gateway = Health(db, store, backend=None, supervisor=False)  # type: ignore[arg-type]
    try:
        checks = (await gateway.readiness()).checks
        assert checks["supervisor"].startswith("down: no supervisor is running")
        assert "without --no-supervisor" in checks["supervisor"]
        supervisor = InstanceDirectory(db, "sup-1")
        supervisor.publish([])  # a tick with no instance still says it is alive
        ready = await gateway.readiness()
        assert ready.ready, ready.checks
        assert ready.checks["supervisor"].startswith(f"ok: supervisor pid {os.getpid()}")
        with db.session() as s:  # silent for a minute: a dead supervisor
            s.get(Supervisor, "sup-1").seen_at = datetime.now(UTC) - timedelta(seconds=60)
        late = await gateway.readiness()
        assert not late.ready
        assert late.checks["supervisor"].startswith("down: the supervisor (pid")
        supervisor.beat()
        assert (await gateway.readiness()).ready
        supervisor.withdraw()  # a clean stop
        assert not (await gateway.readiness()).ready
    finally:
        await store.aclose()
        db.dispose()


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    """The suite's PostgreSQL (scripts/test sets LMFOUNDRY_TEST_DATABASE_URL), or a
    throwaway one started by scripts/postgres."""
    if os.environ.get("LMFOUNDRY_TEST_DATABASE_URL"):
        yield database_url_for(tmp_path / "shared")
        return
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL is not installed: scripts/system-deps")
    folder = tempfile.mkdtemp(prefix="lmf-pg-")  # below /tmp: the postgres user reaches it
    started = subprocess.run(
        [str(REPO / "scripts" / "postgres"), "start", str(free_port()), folder],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([str(REPO / "scripts" / "postgres"), "stop", folder], timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_gateways_sum_to_what_clients_saw(tmp_path: Path, postgres_url: str) -> None:
    port = free_port()
    redis = start_redis(port, tmp_path)
    env = {
        "LMFOUNDRY_DATABASE_URL": postgres_url,
        "LMFOUNDRY_REDIS_URL": f"redis://127.0.0.1:{port}/0",
    }
    home = tmp_path / "home"  # shared: one master key decrypts the deployment keys
    servers: list[LiveServer] = []
    try:
        supervisor = start_server(home, env=env)
        servers.append(supervisor)
        gateway = start_server(home, env=env, args=["--no-supervisor"])
        servers.append(gateway)
        ready = httpx.get(gateway.url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        heard = ready.json()["checks"]["supervisor"]
        assert heard.startswith(f"ok: supervisor pid {supervisor.process.pid}"), heard

        target, key = deploy(supervisor, "shared", "smol", rpm=4)
        targets = [target, target.replace(supervisor.url, gateway.url)]
        seen = load(targets, key, 10)  # five to each gateway; the quota is shared in Redis
        assert_mixed(seen)

        pages = [scrape(supervisor), scrape(gateway)]
        assert all(total([p], "lmfoundry_requests_total") > 0 for p in pages)  # both served
        for server in (gateway, supervisor):  # either reads the same ledger
            _, report = check_monitoring(server, "shared", "smol", seen)
        mine = {"project": "shared", "target_kind": "serverless", "target": "smol"}
        check_counts(pages, seen, report, **mine)

        # the gateway's readiness follows the supervisor: down once it is gone
        stop_server(supervisor)
        down = httpx.get(gateway.url + "/readyz", timeout=10)
        assert down.status_code == 503, down.text
        assert down.json()["checks"]["supervisor"].startswith("down: no supervisor")
    finally:
        for server in servers:
            stop_server(server)
        redis.terminate()
        redis.wait(timeout=10)
