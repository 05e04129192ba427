"""Roles x routes: every allowed call succeeds, every other gets 403 (members) or 404
(non-members, so project names do not leak), and no key reaches a reader."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lmfoundry.catalog.bundled import smollm2_path
from tests.conftest import Api

P = "/api/v1/projects/matrix"
DEP = P + "/serverless-deployments"
RANK = {"reader": 0, "developer": 1, "owner": 2}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    needs: str  # lowest role allowed
    body: dict | None = None
    ok: int = 200


def routes(n: int) -> list[Route]:
    """Routes with fresh resource names for run `n` (destructive calls need their own)."""
    return [
        Route("GET", P, "reader"),
        Route("GET", P + "/members", "reader"),
        Route("GET", P + "/audit", "reader"),
        Route("GET", P + "/usage", "reader"),
        Route("GET", DEP, "reader"),
        Route("GET", DEP + "/base", "reader"),
        Route("GET", DEP + "/base/keys", "developer"),
        Route("POST", DEP + "/base/keys/regenerate", "developer", {"key_type": "secondary"}),
        Route("PATCH", DEP + "/base", "developer", {"tokens_per_minute": 1000 + n}),
        Route("POST", DEP, "developer", {"name": f"made-{n}", "model": f"made-{n}"}, 201),
        Route("DELETE", DEP + f"/doomed-{n}", "developer", ok=204),
        Route("PUT", P + f"/members/extra-{n}", "owner", {"role": "reader"}),
        Route("DELETE", P + f"/members/leaving-{n}", "owner", ok=204),
    ]


ROLES = ("owner", "developer", "reader", "outsider")


@pytest.fixture
def team(api: Api) -> dict[str, dict[str, str]]:
    """Users in each role of project `matrix`, one outsider, and models to deploy."""
    assert api.post("/api/v1/projects", json={"name": "matrix"}).status_code == 201
    headers = {}
    for name in ROLES:
        token = api.post("/api/v1/users", json={"name": f"u-{name}"}).json()["token"]
        headers[name] = {"Authorization": f"Bearer {token}"}
        if name != "outsider":
            assert api.put(f"{P}/members/u-{name}", json={"role": name}).status_code == 200
    api.deploy("base", model="echo", project="matrix")
    weights = str(smollm2_path())
    for n in range(len(ROLES)):
        # one serverless deployment per model per project: each run gets its own models
        for model in (f"made-{n}", f"doomed-{n}"):
            imported = api.post("/api/v1/catalog/import", json={"path": weights, "id": model})
            assert imported.status_code == 201, imported.text
        api.deploy(f"doomed-{n}", model=f"doomed-{n}", project="matrix")
        for user in (f"extra-{n}", f"leaving-{n}"):
            assert api.post("/api/v1/users", json={"name": user}).status_code == 201
        assert api.put(f"{P}/members/leaving-{n}", json={"role": "reader"}).status_code == 200
    return headers


def test_role_matrix(api: Api, team: dict[str, dict[str, str]]) -> None:
    wrong = []
    reader_bodies = []
    for n, role in enumerate(ROLES):
        for route in routes(n):
            response = api.client.request(
                route.method, route.path, json=route.body, headers=team[role]
            )
            if role == "outsider":
                expected = 404
            elif RANK[role] >= RANK[route.needs]:
                expected = route.ok
            else:
                expected = 403
            if response.status_code != expected:
                wrong.append((role, route.method, route.path, expected, response.status_code))
            if role == "reader":
                reader_bodies.append(response.text)
    assert wrong == []
    keys = api.get(DEP + "/base/keys").json()
    for body in reader_bodies:
        assert "primary_key" not in body and "secondary_key" not in body
        for key in keys.values():
            assert key not in body


def test_admin_only_routes(api: Api, team: dict[str, dict[str, str]]) -> None:
    for method, path, body in [
        ("POST", "/api/v1/users", {"name": "x"}),
        ("GET", "/api/v1/users", None),
        ("GET", "/api/v1/instances", None),
        ("POST", "/api/v1/catalog/import", {"path": "/nonexistent"}),
    ]:
        response = api.client.request(method, path, json=body, headers=team["owner"])
        assert response.status_code == 403, (method, path)
    assert api.client.get("/api/v1/catalog", headers=team["outsider"]).status_code == 200
    assert api.client.get("/api/v1/catalog").status_code == 401


def test_audit_log_records_who_did_what(api: Api, team: dict[str, dict[str, str]]) -> None:
    dev = team["developer"]
    assert (
        api.client.post(DEP, json={"name": "audited", "model": "made-0"}, headers=dev).status_code
        == 201
    )
    api.client.post(DEP + "/audited/keys/regenerate", json={"key_type": "primary"}, headers=dev)
    api.client.patch(DEP + "/audited", json={"requests_per_minute": 7}, headers=dev)
    api.client.put(P + "/members/u-reader", json={"role": "developer"}, headers=team["owner"])
    api.client.delete(DEP + "/audited", headers=dev)
    events = api.client.get(P + "/audit", headers=team["reader"]).json()
    seen = [(e["actor"], e["action"], e["target"]) for e in reversed(events)]
    assert ("u-developer", "serverless.create", "audited") in seen
    assert ("u-developer", "serverless.regenerate_key", "audited") in seen
    assert ("u-developer", "serverless.update", "audited") in seen
    assert ("u-owner", "member.set", "u-reader") in seen
    assert ("u-developer", "serverless.delete", "audited") in seen
    update = next(e for e in events if e["action"] == "serverless.update")
    assert update["detail"] == {
        "before": {"requests_per_minute": 1000},
        "after": {"requests_per_minute": 7},
    }
    assert all(e["at"] for e in events)
    regenerated = next(e for e in events if e["action"] == "serverless.regenerate_key")
    assert regenerated["detail"] == {"key_type": "primary"}  # which key, never the key
