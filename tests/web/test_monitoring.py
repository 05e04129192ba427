"""The monitoring API and pages in-process (the echo engine: these test the gateway's
counting, not a model): counts per status equal what the callers got, refusals included;
instances only for admins; the cluster page and API refuse non-admins."""

from __future__ import annotations

import pytest

from tests.conftest import Api

QUESTION = [{"role": "user", "content": "Name a colour."}]


def _traffic(api: Api, name: str, rpm: int, calls: int) -> dict[str, int]:
    deployment = api.deploy(name, requests_per_minute=rpm)
    url = f"/serverless/{name}/chat/completions"
    key = {"api-key": deployment["primary_key"]}
    seen: dict[str, int] = {}
    for i in range(calls):
        body = {"messages": QUESTION, "max_tokens": 4, "stream": bool(i % 2)}
        status = str(api.client.post(url, json=body, headers=key).status_code)
        seen[status] = seen.get(status, 0) + 1
    # a request the gateway refuses as malformed: a 400 the caller saw, counted as an error
    bad = api.client.post(url, json={"messages": "no"}, headers=key)
    seen[str(bad.status_code)] = seen.get(str(bad.status_code), 0) + 1
    return seen


def test_counts_per_status_equal_what_callers_saw(api: Api) -> None:
    seen = _traffic(api, "watched", rpm=3, calls=5)
    assert seen == {"200": 3, "429": 2, "400": 1}  # a body that does not parse: 400 first
    page = api.get("/api/v1/projects/default/monitoring/serverless/watched?window=hour")
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["totals"]["by_status"] == seen
    assert body["totals"]["requests"] == sum(seen.values())
    assert body["totals"]["rate_limited"] == seen["429"]
    assert sum(b["requests"] for b in body["buckets"]) == sum(seen.values())
    assert len(body["buckets"]) == 60 and body["bucket_seconds"] == 60
    report = api.get("/api/v1/projects/default/usage").json()
    (row,) = [r for r in report if r["target"] == "watched"]
    assert row["requests"] == seen["200"]  # refusals are not billed
    assert body["totals"]["completion_tokens"] == row["completion_tokens"]
    assert body["totals"]["prompt_tokens"] == row["prompt_tokens"]
    assert body["totals"]["latency_p50_ms"] is not None
    assert body["instances"] is not None  # the admin sees them
    day = api.get("/api/v1/projects/default/monitoring/serverless/watched?window=day").json()
    assert day["totals"]["by_status"] == seen and len(day["buckets"]) == 96

    summary = api.get("/api/v1/projects/default/monitoring").json()
    (line,) = [s for s in summary if s["target"] == "watched"]
    assert line["totals"]["requests"] == sum(seen.values())


def test_a_malformed_request_counts_as_an_error(api: Api) -> None:
    deployment = api.deploy("strict")
    url = "/serverless/strict/chat/completions"
    key = {"api-key": deployment["primary_key"]}
    assert api.client.post(url, json={"messages": "no"}, headers=key).status_code == 400
    assert api.client.post(url, json={"messages": QUESTION}, headers=key).status_code == 200
    body = api.get("/api/v1/projects/default/monitoring/serverless/strict").json()
    assert body["totals"]["by_status"] == {"200": 1, "400": 1}
    assert (body["totals"]["ok"], body["totals"]["errors"]) == (1, 1)


def test_bad_window_and_unknown_target_are_4xx(api: Api) -> None:
    api.deploy("known")
    bad = api.get("/api/v1/projects/default/monitoring/serverless/known?window=week")
    assert bad.status_code in (400, 422) and "window" in bad.text
    missing = api.get("/api/v1/projects/default/monitoring/serverless/nope")
    assert missing.status_code == 404
    assert api.get("/api/v1/projects/default/monitoring/endpoints/nope").status_code == 404


@pytest.fixture
def reader(api: Api) -> dict[str, str]:
    created = api.post("/api/v1/users", json={"name": "rita"})
    assert created.status_code == 201, created.text
    added = api.put("/api/v1/projects/default/members/rita", json={"role": "reader"})
    assert added.status_code in (200, 201), added.text
    return {"Authorization": f"Bearer {created.json()['token']}"}


def test_members_see_counts_but_only_admins_see_instances(api: Api, reader: dict[str, str]) -> None:
    _traffic(api, "shared", rpm=100, calls=2)
    mine = api.client.get("/api/v1/projects/default/monitoring/serverless/shared", headers=reader)
    assert mine.status_code == 200, mine.text
    assert mine.json()["totals"]["requests"] == 3
    assert mine.json()["instances"] is None
    assert mine.json()["instance_samples"] is None
    refused = api.client.get("/api/v1/cluster", headers=reader)
    assert refused.status_code == 403 and "admin" in refused.text
    assert api.client.get("/api/v1/cluster").status_code == 401
    instances = api.get("/api/v1/cluster").json()
    (echo,) = [i for i in instances if i["model"] == "echo"]
    assert echo["state"] == "ready" and echo["rss_bytes"] > 0 and echo["uptime_seconds"] >= 0


def test_pages_link_render_and_refuse_non_admins_the_cluster(
    api: Api, reader: dict[str, str]
) -> None:
    api.deploy("paged")
    detail = api.get("/projects/default/deployments/paged")
    assert detail.status_code == 200
    assert 'href="/projects/default/deployments/paged/monitoring"' in detail.text
    page = api.get("/projects/default/deployments/paged/monitoring")
    assert page.status_code == 200, page.text
    assert 'data-api="/api/v1/projects/default/monitoring/serverless/paged"' in page.text
    assert 'id="chart-instances"' in page.text  # the admin's page has the instance chart
    theirs = api.client.get("/projects/default/deployments/paged/monitoring", headers=reader)
    assert theirs.status_code == 200
    assert 'id="instances-hidden"' in theirs.text and 'id="chart-instances"' not in theirs.text
    assert api.get("/projects/default/deployments/nope/monitoring").status_code == 404
    cluster = api.get("/cluster")
    assert cluster.status_code == 200 and "<h1>Cluster</h1>" in cluster.text
    refused = api.client.get("/cluster", headers=reader)
    assert refused.status_code == 403 and "Only an admin" in refused.text


def test_an_endpoint_page_counts_each_deployment(api: Api) -> None:
    from tests.api.test_endpoints import E, wait_ready

    created = api.post(E, json={"name": "split", "requests_per_minute": 100_000})
    assert created.status_code == 201, created.text
    for name in ("blue", "green"):
        assert api.put(f"{E}/split/deployments/{name}", json={"model": "echo"}).status_code == 200
    wait_ready(api, "split", "blue", "green")
    assert api.put(f"{E}/split/traffic", json={"blue": 100}).status_code == 200
    key = {"Authorization": f"Bearer {api.get(f'{E}/split/keys').json()['primary_key']}"}
    url = "/endpoints/split/chat/completions"
    served: dict[str, int] = {}
    for header in ("blue", "blue", "green", None):  # the header picks; none: the split
        extra = {"azureml-model-deployment": header} if header else {}
        answer = api.client.post(url, json={"messages": QUESTION}, headers={**key, **extra})
        assert answer.status_code == 200, answer.text
        name = answer.headers["azureml-model-deployment"]
        served[name] = served.get(name, 0) + 1
    assert served == {"blue": 3, "green": 1}
    body = api.get("/api/v1/projects/default/monitoring/endpoints/split").json()
    assert {d: t["requests"] for d, t in body["deployments"].items()} == served
    assert body["totals"]["by_status"] == {"200": 4}
    assert {i["model"] for i in body["instances"]} == {"echo"}
    page = api.get("/projects/default/endpoints/split/monitoring")
    assert page.status_code == 200 and 'id="by-deployment"' in page.text
    detail = api.get("/projects/default/endpoints/split")
    assert 'href="/projects/default/endpoints/split/monitoring"' in detail.text


def test_wrong_keys_count_as_errors_of_the_deployment(api: Api) -> None:
    mine = api.deploy("locked")
    assert api.post("/api/v1/projects", json={"name": "second"}).status_code == 201
    theirs = api.deploy("other", project="second")
    url = "/serverless/locked/chat/completions"
    body = {"messages": QUESTION}
    statuses = [
        api.client.post(url, json=body).status_code,  # no key
        api.client.post(url, json=body, headers={"api-key": "0" * 64}).status_code,
        api.client.post(url, json=body, headers={"api-key": theirs["primary_key"]}).status_code,
        api.client.post(url, json=body, headers={"api-key": mine["primary_key"]}).status_code,
    ]
    assert statuses == [401, 401, 403, 200]
    totals = api.get("/api/v1/projects/default/monitoring/serverless/locked").json()["totals"]
    assert totals["by_status"] == {"200": 1, "401": 2, "403": 1}
    assert totals["errors"] == 3
    metrics = api.get("/metrics").text
    assert 'status="401",target="locked",target_kind="serverless"} 2.0' in metrics
    assert 'status="403",target="locked",target_kind="serverless"} 1.0' in metrics
    for secret in (mine["primary_key"], theirs["primary_key"]):
        assert secret not in metrics
    (row,) = [r for r in api.get("/api/v1/projects/default/usage").json()]
    assert row["target"] == "locked" and row["requests"] == 1  # refusals not billed
