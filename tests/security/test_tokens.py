"""Tokens and users against the real server over loopback: listing shows no token, revoking
a token or disabling a user ends its API use and its studio sessions at once in every
gateway process, expired tokens say so and how to get a new one, deletion keeps the audit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Token
from tests.conftest import ADMIN_TOKEN, LiveServer, database_url_for, start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer]]:
    """A server and a second gateway process (no supervisor) on the same database."""
    home = tmp_path_factory.mktemp("tokens") / "home"
    first = start_server(home)
    try:
        second = start_server(home, args=["--no-supervisor"])
    except BaseException:
        stop_server(first)
        raise
    yield first, second
    stop_server(second)
    stop_server(first)


@pytest.fixture
def server(gateways: tuple[LiveServer, LiveServer]) -> LiveServer:
    return gateways[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def me(server: LiveServer, token: str) -> httpx.Response:
    return httpx.get(server.url + "/api/v1/me", headers=bearer(token), timeout=30)


def studio_session(server: LiveServer, token: str) -> httpx.Client:
    """A browser-like client signed in to the studio with `token` (its cookie jar holds the
    session; it sends no bearer token)."""
    browser = httpx.Client(base_url=server.url, timeout=30)
    form = browser.get("/signin")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf, form.text
    done = browser.post("/signin", data={"token": token, "csrf_token": csrf.group(1)})
    assert done.status_code == 303, done.text
    assert "lmf_session" in browser.cookies
    return browser


def lmfoundry(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, against `server`, as the admin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMFOUNDRY_")}
    env.update(
        {
            "LMFOUNDRY_HOME": str(server.home / "cli"),
            "LMFOUNDRY_URL": server.url,
            "LMFOUNDRY_TOKEN": ADMIN_TOKEN,
            "COLUMNS": "250",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "lmfoundry", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def create_user(server: LiveServer, name: str) -> str:
    with server.client() as admin:
        created = admin.post("/api/v1/users", json={"name": name})
    assert created.status_code == 201, created.text
    return str(created.json()["token"])


def test_a_revoked_token_fails_at_once_in_every_gateway_and_so_do_its_sessions(
    gateways: tuple[LiveServer, LiveServer],
) -> None:
    first, second = gateways
    with first.client() as admin:
        created = admin.post("/api/v1/tokens", json={"name": "doomed"})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    browser = studio_session(second, token)
    assert browser.get("/api/v1/me").json()["name"] == "admin"
    assert browser.get("/projects").status_code == 200
    assert me(second, token).status_code == 200

    with first.client() as admin:
        assert admin.delete("/api/v1/tokens/doomed").status_code == 204

    for gateway in (first, second):  # no wait: the very next request fails, everywhere
        refused = me(gateway, token)
        assert refused.status_code == 401, refused.text
        assert "revoked" in refused.json()["error"]["message"]
    cookie_call = browser.get("/api/v1/me")
    assert cookie_call.status_code == 401 and "revoked" in cookie_call.text
    page = browser.get("/projects")
    assert page.status_code == 303 and page.headers["location"].startswith("/signin")
    with first.client() as admin:
        again = admin.delete("/api/v1/tokens/doomed")
        assert again.status_code == 404 and "tokens list" in again.json()["error"]["message"]
        listed = admin.get("/api/v1/tokens").json()
    assert next(t for t in listed if t["name"] == "doomed")["status"] == "revoked"


def test_an_expired_token_says_it_expired_and_how_to_get_a_new_one(server: LiveServer) -> None:
    with server.client() as admin:
        created = admin.post("/api/v1/tokens", json={"name": "brief", "expires_in_days": 1})
        default = admin.post("/api/v1/tokens", json={"name": "usual"}).json()
    assert created.status_code == 201, created.text
    expires = datetime.fromisoformat(created.json()["expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(days=1)
    usual = datetime.fromisoformat(default["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=89) < usual <= timedelta(days=90)  # LMFOUNDRY_TOKEN_TTL_DAYS
    token = created.json()["token"]
    assert me(server, token).status_code == 200
    browser = studio_session(server, token)

    # a day passes (the server reads the row on every request, so moving the clock of the
    # row is the same as waiting)
    db = Database(database_url_for(server.home))
    with db.session() as s:
        s.execute(
            update(Token)
            .where(Token.prefix == token[:12], Token.name == "brief")
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    db.engine.dispose()

    refused = me(server, token)
    assert refused.status_code == 401
    message = refused.json()["error"]["message"]
    assert "expired" in message and "lmfoundry tokens create" in message
    assert token not in refused.text
    assert browser.get("/api/v1/me").status_code == 401
    signin = httpx.Client(base_url=server.url, timeout=30)
    form = signin.get("/signin")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf
    page = signin.post("/signin", data={"token": token, "csrf_token": csrf.group(1)})
    assert page.status_code == 401 and "expired" in page.text
    with server.client() as admin:
        listed = {t["name"]: t for t in admin.get("/api/v1/tokens").json()}
    assert listed["brief"]["status"] == "expired"


def test_bad_expiry_and_names_get_a_clear_400(server: LiveServer) -> None:
    with server.client() as admin:
        zero = admin.post("/api/v1/tokens", json={"name": "z", "expires_in_days": 0})
        slash = admin.post("/api/v1/tokens", json={"name": "a/b"})
        admin.post("/api/v1/tokens", json={"name": "twice"})
        twice = admin.post("/api/v1/tokens", json={"name": "twice"})
    assert zero.status_code == 400 and "expires_in_days" in zero.json()["error"]["message"]
    assert slash.status_code == 400 and "token name" in slash.json()["error"]["message"]
    assert twice.status_code == 409 and "tokens revoke twice" in twice.json()["error"]["message"]


def test_a_disabled_users_tokens_and_sessions_fail_at_once(
    gateways: tuple[LiveServer, LiveServer],
) -> None:
    first, second = gateways
    token = create_user(first, "dora")
    browser = studio_session(second, token)
    assert browser.get("/api/v1/me").json()["name"] == "dora"

    disabled = lmfoundry(first, "users", "disable", "dora")
    assert disabled.returncode == 0, disabled.stdout + disabled.stderr

    for gateway in (first, second):
        refused = me(gateway, token)
        assert refused.status_code == 401
        assert "disabled" in refused.json()["error"]["message"]
    assert browser.get("/api/v1/me").status_code == 401
    with first.client() as admin:
        users = {u["name"]: u for u in admin.get("/api/v1/users").json()}
    assert users["dora"]["disabled_at"] is not None

    assert lmfoundry(first, "users", "enable", "dora").returncode == 0
    assert me(second, token).status_code == 200
    assert browser.get("/api/v1/me").status_code == 200


def test_deleting_a_user_removes_tokens_and_memberships_and_keeps_the_audit(
    server: LiveServer,
) -> None:
    token = create_user(server, "leaver")
    with server.client() as admin:
        assert admin.post("/api/v1/projects", json={"name": "solo"}).status_code == 201
        for project in ("default", "solo"):
            put = admin.put(f"/api/v1/projects/{project}/members/leaver", json={"role": "owner"})
            assert put.status_code == 200, put.text
        assert admin.delete("/api/v1/projects/solo/members/admin").status_code == 204

        alone = admin.delete("/api/v1/users/leaver")  # the only owner of solo
        assert alone.status_code == 409 and "solo" in alone.json()["error"]["message"]
        assert me(server, token).status_code == 200  # refused: nothing changed
        yourself = admin.delete("/api/v1/users/admin")
        assert yourself.status_code == 409 and "yourself" in yourself.json()["error"]["message"]

        assert admin.put("/api/v1/projects/solo/members/admin", json={"role": "owner"}).is_success
        deleted = lmfoundry(server, "users", "delete", "leaver", "--yes")
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr

        assert me(server, token).status_code == 401
        members = [m["user"] for m in admin.get("/api/v1/projects/default/members").json()]
        assert "leaver" not in members
        assert "leaver" not in [u["name"] for u in admin.get("/api/v1/users").json()]
        assert admin.get("/api/v1/tokens", params={"user": "leaver"}).status_code == 404
        audit = admin.get("/api/v1/projects/default/audit").json()
    assert any(e["action"] == "member.set" and e["target"] == "leaver" for e in audit)


def test_token_listing_never_shows_a_token(server: LiveServer) -> None:
    user_token = create_user(server, "lister")
    with server.client() as admin:
        made = admin.post("/api/v1/tokens", json={"name": "laptop", "user": "lister"}).json()
        assert made["user"] == "lister"
        everyone = admin.get("/api/v1/tokens", params={"all": "true"})
        theirs = admin.get("/api/v1/tokens", params={"user": "lister"}).json()
    secrets = [ADMIN_TOKEN, user_token, made["token"]]
    assert everyone.status_code == 200
    assert not any(secret in everyone.text for secret in secrets)
    assert {t["name"] for t in theirs} == {"initial", "laptop"}
    assert {t["prefix"] for t in theirs} == {user_token[:12], made["token"][:12]}
    assert all(t["user"] == "lister" for t in theirs)
    admin_row = next(t for t in everyone.json() if t["name"] == "LMFOUNDRY_ADMIN_TOKEN")
    assert admin_row["expires_at"] is None and admin_row["last_used_at"] is not None

    own = httpx.get(server.url + "/api/v1/tokens", headers=bearer(user_token), timeout=30)
    assert {t["name"] for t in own.json()} == {"initial", "laptop"}
    for params in ({"all": "true"}, {"user": "admin"}):
        other = httpx.get(
            server.url + "/api/v1/tokens", params=params, headers=bearer(user_token), timeout=30
        )
        assert other.status_code == 403 and "admin" in other.json()["error"]["message"]

    shown = lmfoundry(server, "tokens", "list", "--all")
    assert shown.returncode == 0, shown.stderr
    assert not any(secret in shown.stdout for secret in secrets)
    admin_line = next(line for line in shown.stdout.splitlines() if "LMFOUNDRY_ADMIN" in line)
    assert "never" in admin_line
    revoked = lmfoundry(server, "tokens", "revoke", "laptop", "--user", "lister")
    assert revoked.returncode == 0, revoked.stderr
    assert "laptop" in revoked.stdout
    assert not any(secret in Path(server.log).read_text() for secret in secrets)
