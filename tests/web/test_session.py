"""Studio sessions and CSRF, without a browser: the app in-process, a cookie jar per user."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_TOKEN, Api

SESSION = "lmf_session"


def signin(client: TestClient, token: str) -> str:
    """Sign in through the form; returns the CSRF token the pages then carry."""
    form = client.get("/signin")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf, form.text
    done = client.post(
        "/signin", data={"token": token, "csrf_token": csrf.group(1), "next": "/projects"}
    )
    assert done.status_code == 200 and done.url.path == "/projects", done.text
    return page_csrf(done.text)


def page_csrf(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert found and found.group(1), "the page carries no CSRF token"
    return found.group(1)


def session_cookie(response: object) -> str:
    headers = response.headers.get_list("set-cookie")  # type: ignore[attr-defined]
    return next(h for h in headers if h.startswith(SESSION + "="))


@pytest.fixture
def browser(api: Api) -> TestClient:
    """The in-process client as a browser: its cookie jar carries the session (requests made
    through `api` add a bearer token, which takes precedence over the cookie)."""
    api.client.cookies.clear()
    return api.client


def test_session_cookie_is_httponly_strict_and_secure_on_https(api: Api) -> None:
    form = api.client.get("/signin")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    response = api.client.post(
        "/signin",
        data={"token": ADMIN_TOKEN, "csrf_token": csrf},
        follow_redirects=False,
    )
    assert response.status_code == 303
    cookie = session_cookie(response).lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain http on loopback: a Secure cookie would be dropped
    assert ADMIN_TOKEN.lower() not in cookie  # the cookie holds no token

    tls = api.client
    tls.cookies.clear()
    tls.base_url = "https://testserver"  # type: ignore[assignment]
    form = tls.get("/signin")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    response = tls.post(
        "/signin", data={"token": ADMIN_TOKEN, "csrf_token": csrf}, follow_redirects=False
    )
    assert "; secure" in session_cookie(response).lower()


def test_wrong_token_shows_the_message_next_to_the_field(browser: TestClient) -> None:
    form = browser.get("/signin")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    response = browser.post("/signin", data={"token": "lmf_pat_nope", "csrf_token": csrf})
    assert response.status_code == 401
    assert 'aria-describedby="token-error"' in response.text
    assert re.search(r'id="token-error"[^>]*>Invalid or revoked token', response.text)
    assert SESSION not in browser.cookies


def test_signin_form_needs_its_csrf_token(browser: TestClient) -> None:
    browser.get("/signin")
    response = browser.post("/signin", data={"token": ADMIN_TOKEN, "csrf_token": "forged"})
    assert response.status_code == 403
    assert SESSION not in browser.cookies


def test_pages_need_a_session(browser: TestClient) -> None:
    response = browser.get("/projects/default/deployments", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=%2Fprojects%2Fdefault%2Fdeployments"
    browser.cookies.set(SESSION, "gAAAA-forged")
    assert browser.get("/projects/default/catalog", follow_redirects=False).status_code == 303


def test_no_open_redirect_after_signin(browser: TestClient) -> None:
    form = browser.get("/signin?next=//evil.example/x")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    response = browser.post(
        "/signin",
        data={"token": ADMIN_TOKEN, "csrf_token": csrf, "next": "//evil.example/x"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


def test_mutations_with_the_cookie_need_the_csrf_token(api: Api, browser: TestClient) -> None:
    csrf = signin(browser, ADMIN_TOKEN)
    api.deploy("echo-one")
    body = {"name": "p2"}
    refused = browser.post("/api/v1/projects", json=body)
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]["message"]
    assert (
        browser.post("/api/v1/projects", json=body, headers={"X-CSRF-Token": "x"}).status_code
        == 403
    )
    for method, path, payload in (
        (
            "PATCH",
            "/api/v1/projects/default/serverless-deployments/echo-one",
            {"tokens_per_minute": 5},
        ),
        ("DELETE", "/api/v1/projects/default/serverless-deployments/echo-one", None),
        (
            "POST",
            "/api/v1/projects/default/serverless-deployments/echo-one/keys/regenerate",
            {"key_type": "primary"},
        ),
        (
            "POST",
            "/projects/default/playground/chat",
            {"kind": "serverless", "name": "echo-one", "request": {}},
        ),
        ("POST", "/projects/default/flows-check", {"dag": "nodes: []"}),
    ):
        response = browser.request(method, path, json=payload)
        assert response.status_code == 403, (method, path, response.text)
    assert (
        api.get("/api/v1/projects/default/serverless-deployments/echo-one").json()[
            "tokens_per_minute"
        ]
        != 5
    )
    created = browser.post("/api/v1/projects", json=body, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201, created.text
    # Reading needs no CSRF token; a bearer token never needs one.
    assert browser.get("/api/v1/projects/p2").status_code == 200
    assert api.post("/api/v1/projects", json={"name": "p3"}).status_code == 201


def test_signout_needs_the_token_and_ends_the_session(browser: TestClient) -> None:
    csrf = signin(browser, ADMIN_TOKEN)
    assert browser.post("/signout", data={"csrf_token": "nope"}).status_code == 403
    out = browser.post("/signout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/signin"
    assert SESSION not in browser.cookies
    assert browser.get("/projects", follow_redirects=False).status_code == 303


def test_a_reader_sees_no_keys_on_any_page(api: Api, browser: TestClient) -> None:
    created = api.post("/api/v1/users", json={"name": "rita"})
    assert created.status_code == 201
    reader_token = created.json()["token"]
    assert (
        api.put("/api/v1/projects/default/members/rita", json={"role": "reader"}).status_code == 200
    )
    keys = set()
    keys.update(api.deploy("echo-read").values())
    assert (
        api.post("/api/v1/projects/default/online-endpoints", json={"name": "ep-read"}).status_code
        == 201
    )
    assert (
        api.put(
            "/api/v1/projects/default/online-endpoints/ep-read/deployments/blue",
            json={"model": "echo"},
        ).status_code
        == 200
    )
    keys.update(api.get("/api/v1/projects/default/online-endpoints/ep-read/keys").json().values())
    secrets = {k for k in keys if re.fullmatch(r"[0-9a-f]{64}", str(k))}
    assert len(secrets) == 4

    csrf = signin(browser, reader_token)
    pages = [
        "/projects",
        *(
            f"/projects/default/{p}"
            for p in (
                "catalog",
                "deployments",
                "deployments/echo-read",
                "playground",
                "datasets",
                "fine-tuning",
                "fine-tuning/job-1",
                "models",
                "endpoints",
                "endpoints/ep-read",
                "connections",
                "flows",
                "flows/some-flow",
                "runs/run-1",
                "usage",
                "usage.csv",
            )
        ),
    ]
    for path in pages:
        response = browser.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert not any(secret in response.text for secret in secrets), path
        assert "data-key-reveal" not in response.text, path
    assert "readers cannot see keys" in browser.get("/projects/default/deployments/echo-read").text
    # The API and the playground route say no to the same session.
    for path in (
        "/api/v1/projects/default/serverless-deployments/echo-read/keys",
        "/api/v1/projects/default/online-endpoints/ep-read/keys",
    ):
        assert browser.get(path).status_code == 403
    chat = browser.post(
        "/projects/default/playground/chat",
        json={"kind": "serverless", "name": "echo-read", "request": {"messages": []}},
        headers={"X-CSRF-Token": csrf},
    )
    assert chat.status_code == 403
    assert "developer" in chat.json()["error"]["message"]


def test_non_members_get_404_pages(api: Api, browser: TestClient) -> None:
    token = api.post("/api/v1/users", json={"name": "nora"}).json()["token"]
    signin(browser, token)
    response = browser.get("/projects/default/deployments")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "not found" in response.text
    assert ">default (" not in browser.get("/projects").text  # not in the switcher


def test_pages_are_html_with_a_strict_policy(api: Api, browser: TestClient) -> None:
    signin(browser, ADMIN_TOKEN)
    response = browser.get("/projects/default/catalog")
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    # Nothing from another site: every script and style is served here.
    for src in re.findall(r'(?:src|href)="([^"]+)"', response.text):
        assert not src.startswith(("http:", "https:", "//")), src
    assert browser.get("/static/studio.js").status_code == 200
    missing = browser.get("/projects/default/deployments/nope")
    assert missing.status_code == 404 and "nope" in missing.text and "Traceback" not in missing.text
    unknown = browser.get("/projects/default/no-such-page")
    assert unknown.status_code == 404 and unknown.headers["content-type"].startswith("text/html")


def test_playground_streams_through_the_studio_and_usage_exports(
    api: Api, browser: TestClient
) -> None:
    csrf = signin(browser, ADMIN_TOKEN)
    api.deploy("echo-chat")
    body = {
        "kind": "serverless",
        "name": "echo-chat",
        "request": {
            "messages": [{"role": "user", "content": "one two three"}],
            "stream": True,
            "max_tokens": 8,
        },
    }
    with browser.stream(
        "POST", "/projects/default/playground/chat", json=body, headers={"X-CSRF-Token": csrf}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    assert "data: [DONE]" in text and '"usage"' in text
    bad = dict(body, request={**body["request"], "temperature": "hot"})
    refused = browser.post(
        "/projects/default/playground/chat", json=bad, headers={"X-CSRF-Token": csrf}
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "temperature"

    csv = browser.get("/projects/default/usage.csv?group_by=deployment")
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith("kind,target,deployment,requests,prompt_tokens")
    row = next(line for line in lines if ",echo-chat,echo-chat," in line)  # serverless: itself
    assert int(row.split(",")[-2]) > 0  # total tokens
    page = browser.get("/projects/default/usage?start=2026-02-10&end=2026-02-01")
    assert re.search(r'id="end-error"[^>]*>end must be after start', page.text)


def test_playground_calls_one_endpoint_deployment(api: Api, browser: TestClient) -> None:
    csrf = signin(browser, ADMIN_TOKEN)
    base = "/api/v1/projects/default/online-endpoints"
    assert api.post(base, json={"name": "ep-play"}).status_code == 201
    for name in ("blue", "green"):
        assert (
            api.put(f"{base}/ep-play/deployments/{name}", json={"model": "echo"}).status_code == 200
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {d["provisioning_state"] for d in api.get(f"{base}/ep-play/deployments").json()}
        if states == {"succeeded"}:
            break
        time.sleep(0.2)
    assert api.put(f"{base}/ep-play/traffic", json={"blue": 100}).status_code == 200
    body = {
        "kind": "endpoint",
        "name": "ep-play",
        "deployment": "green",  # bypasses the split, as the azureml-model-deployment header does
        "request": {"messages": [{"role": "user", "content": "hello green"}]},
    }
    answer = browser.post(
        "/projects/default/playground/chat", json=body, headers={"X-CSRF-Token": csrf}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["azureml-model-deployment"] == "green"
    assert "hello green" in answer.json()["choices"][0]["message"]["content"]
