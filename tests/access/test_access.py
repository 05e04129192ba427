"""Bootstrap, tokens, projects and memberships."""

from __future__ import annotations

import pytest

from lmfoundry.access.models import Role
from lmfoundry.access.projects import ProjectService
from lmfoundry.access.secrets import hash_token, new_token
from lmfoundry.access.service import AccessService
from lmfoundry.errors import InvalidRequest, Unauthorized
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Token
from tests.conftest import Api


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    database.migrate()
    database.migrate()  # migrations are idempotent
    return database


def test_bootstrap_once_with_a_printed_token(db: Database) -> None:
    access = AccessService(db)
    first = access.bootstrap(None, "default")
    assert first.created and first.token and first.token.startswith("lmf_pat_")
    second = access.bootstrap(None, "default")
    assert not second.created and second.token is None
    admin = access.authenticate(first.token)
    assert admin.is_admin and admin.name == "admin"
    assert [p.name for p in ProjectService(db, access).list_projects(admin)] == ["default"]


def test_an_admin_lists_projects_with_the_role_it_acts_with(db: Database) -> None:
    access = AccessService(db)
    admin = access.authenticate(access.bootstrap(None, "default").token)
    projects = ProjectService(db, access)
    second = access.authenticate(access.create_user(admin, "ops", is_admin=True).token)
    projects.set_member(admin, "default", "ops", Role.reader)  # a member as a reader
    listed = {p.name: p.role for p in projects.list_projects(second)}
    assert listed == {"default": Role.owner}  # as it may act: admins act as owners
    assert projects.set_flows_enabled(second, "default", True).role == Role.owner


def test_bootstrap_adopts_the_configured_admin_token(db: Database) -> None:
    token = new_token()
    result = AccessService(db).bootstrap(token, "default")
    assert result.token is None  # nothing to print: the operator chose it
    assert AccessService(db).authenticate(token).is_admin
    with pytest.raises(InvalidRequest):
        AccessService(db).bootstrap("short", "default")


def test_tokens_are_stored_hashed(db: Database) -> None:
    token = AccessService(db).bootstrap(None, "default").token
    assert token
    with db.session() as s:
        stored = [t.token_hash for t in s.query(Token).all()]
    assert stored == [hash_token(token)]
    assert token not in stored
    with pytest.raises(Unauthorized):
        AccessService(db).authenticate(token + "x")
    with pytest.raises(Unauthorized):
        AccessService(db).authenticate(None)


def test_members_roles_and_hidden_projects(api: Api) -> None:
    alice = api.post("/api/v1/users", json={"name": "alice"}).json()["token"]
    bob = api.post("/api/v1/users", json={"name": "bob"}).json()["token"]
    as_alice = {"Authorization": f"Bearer {alice}"}
    as_bob = {"Authorization": f"Bearer {bob}"}
    # only admins create projects (LMFOUNDRY_ALLOW_SELF_SERVICE_PROJECTS is off): alice owns alpha
    assert api.post("/api/v1/projects", json={"name": "alpha"}).status_code == 201
    assert api.put("/api/v1/projects/alpha/members/alice", json={"role": "owner"}).is_success
    assert api.delete("/api/v1/projects/alpha/members/admin").status_code == 204
    # bob is not a member: alpha does not exist as far as he can tell
    hidden = api.client.get("/api/v1/projects/alpha/serverless-deployments", headers=as_bob)
    assert hidden.status_code == 404
    assert api.client.get("/api/v1/projects/nope/serverless-deployments", headers=as_bob).json()[
        "error"
    ]["message"] == hidden.json()["error"]["message"].replace("alpha", "nope")
    assert (
        api.client.put(
            "/api/v1/projects/alpha/members/bob", json={"role": "reader"}, headers=as_alice
        ).status_code
        == 200
    )
    assert (
        api.client.get("/api/v1/projects/alpha/serverless-deployments", headers=as_bob).status_code
        == 200
    )
    # a reader cannot manage members, and the last owner cannot leave
    assert (
        api.client.put(
            "/api/v1/projects/alpha/members/bob", json={"role": "owner"}, headers=as_bob
        ).status_code
        == 403
    )
    last = api.client.delete("/api/v1/projects/alpha/members/alice", headers=as_alice)
    assert last.status_code == 409 and "owner" in last.json()["error"]["message"]
    # only admins create users
    assert (
        api.client.post("/api/v1/users", json={"name": "eve"}, headers=as_alice).status_code == 403
    )
    assert api.post("/api/v1/users", json={"name": "Not Valid"}).status_code == 400
    assert api.client.get("/api/v1/me", headers=as_bob).json() == {"name": "bob", "is_admin": False}
