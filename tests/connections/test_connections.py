"""Connections through the management API: write-only secrets encrypted at rest, updates that
keep "***" secrets, lmfoundry connections resolved to a deployment, roles and the audit log."""

from __future__ import annotations

import pytest

from lmfoundry.connections.models import parse_connection_file
from lmfoundry.errors import InvalidRequest
from lmfoundry.platform import Platform
from lmfoundry.storage.models import Connection
from tests.conftest import Api

CONNECTIONS = "/api/v1/projects/default/connections"
SECRET = "s3cr3t-value-that-must-stay-hidden"


def platform(api: Api) -> Platform:
    return api.client.app.state.platform  # type: ignore[attr-defined, no-any-return]


def resolve(api: Api, *names: str) -> dict[str, dict]:
    plat = platform(api)
    found = plat.connections.resolve(1, names)  # project 1 is "default"
    return {n: {"configs": c.configs, "secrets": c.secrets} for n, c in found.items()}


def test_create_show_list_update_delete(api: Api) -> None:
    body = {"type": "custom", "configs": {"endpoint": "http://x/score"}, "secrets": {"key": SECRET}}
    created = api.put(f"{CONNECTIONS}/connection", json=body)
    assert created.status_code == 201
    view = created.json()
    assert view["configs"] == {"endpoint": "http://x/score"}
    assert view["secrets"] == {"key": "***"}
    assert api.get(f"{CONNECTIONS}/connection").json()["secrets"] == {"key": "***"}
    assert [c["name"] for c in api.get(CONNECTIONS).json()] == ["connection"]
    assert SECRET not in api.get(CONNECTIONS).text

    # send back what GET returned, with one config changed: the secret keeps its value
    again = api.get(f"{CONNECTIONS}/connection").json()
    changed = {"configs": {"endpoint": "http://y/score"}, "secrets": again["secrets"]}
    updated = api.put(f"{CONNECTIONS}/connection", json=changed)
    assert updated.status_code == 200
    assert resolve(api, "connection")["connection"] == {
        "configs": {"endpoint": "http://y/score"},
        "secrets": {"key": SECRET},
    }
    # a new value replaces it; a secret left out is removed
    api.put(f"{CONNECTIONS}/connection", json={"secrets": {"key": "new-value-123"}})
    assert resolve(api, "connection")["connection"]["secrets"] == {"key": "new-value-123"}
    api.put(f"{CONNECTIONS}/connection", json={"configs": {"endpoint": "e"}})
    assert resolve(api, "connection")["connection"]["secrets"] == {}

    assert api.delete(f"{CONNECTIONS}/connection").status_code == 204
    assert api.get(f"{CONNECTIONS}/connection").status_code == 404
    assert api.delete(f"{CONNECTIONS}/connection").status_code == 404


def test_secrets_are_encrypted_at_rest(api: Api) -> None:
    api.put(f"{CONNECTIONS}/vault", json={"secrets": {"key": SECRET, "token": "t0k3n-xyz"}})
    with platform(api).db.session() as s:
        row = s.query(Connection).one()
        assert SECRET not in row.secrets and "t0k3n-xyz" not in row.secrets
        assert row.secret_names == ["key", "token"]
    db_file = platform(api).settings.home / "lmfoundry.db"
    for path in db_file.parent.glob("lmfoundry.db*"):  # the database and its WAL
        assert SECRET.encode() not in path.read_bytes()


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"type": "azure_open_ai"}, "type", "custom"),
        ({"configs": {"port": 8080}}, "configs.port", "string"),
        ({"configs": {"key": "a"}, "secrets": {"key": "b"}}, "secrets.key", "both"),
        ({"secrets": {"key": "***"}}, "secrets.key", "no stored secret"),
        ({"colour": "red"}, "colour", "unknown field"),
        ({"type": "lmfoundry", "configs": {"target_kind": "serverless"}}, "configs.target", ""),
        (
            {"type": "lmfoundry", "configs": {"target_kind": "vm", "target": "x"}},
            "configs.target_kind",
            "endpoint, serverless",
        ),
        (
            {"type": "lmfoundry", "configs": {"target_kind": "serverless", "target": "nope"}},
            "configs.target",
            "no serverless deployment named 'nope'",
        ),
        (
            {
                "type": "lmfoundry",
                "configs": {"target_kind": "serverless", "target": "x"},
                "secrets": {"key": "k"},
            },
            "secrets",
            "no secrets",
        ),
    ],
)
def test_bad_connections_name_the_problem(api: Api, body: dict, param: str, words: str) -> None:
    response = api.put(f"{CONNECTIONS}/conn", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert api.get(CONNECTIONS).json() == []


def test_bad_name(api: Api) -> None:
    response = api.put(f"{CONNECTIONS}/bad name!", json={})
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"


def test_lmfoundry_connection_resolves_the_deployment_url_and_key(api: Api) -> None:
    dep = api.deploy("echo-a")
    body = {"type": "lmfoundry", "configs": {"target_kind": "serverless", "target": "echo-a"}}
    created = api.put(f"{CONNECTIONS}/model", json=body)
    assert created.status_code == 201 and created.json()["secrets"] == {}
    resolved = resolve(api, "model")["model"]
    assert resolved["configs"]["endpoint"] == dep["target_url"]
    assert resolved["configs"]["target_url"] == dep["target_url"]
    assert resolved["secrets"] == {"key": dep["primary_key"]}
    # a regenerated key is what the next flow gets: nothing was copied
    new = api.post(
        "/api/v1/projects/default/serverless-deployments/echo-a/keys/regenerate",
        json={"key_type": "primary"},
    ).json()["primary_key"]
    assert resolve(api, "model")["model"]["secrets"] == {"key": new}


def test_lmfoundry_connection_to_an_online_endpoint_resolves_its_score_url(api: Api) -> None:
    endpoints = "/api/v1/projects/default/online-endpoints"
    assert api.post(endpoints, json={"name": "ep-a"}).status_code == 201
    view = api.get(f"{endpoints}/ep-a").json()
    keys = api.get(f"{endpoints}/ep-a/keys").json()
    body = {"type": "lmfoundry", "configs": {"target_kind": "endpoint", "target": "ep-a"}}
    assert api.put(f"{CONNECTIONS}/ep", json=body).status_code == 201
    resolved = resolve(api, "ep")["ep"]
    assert resolved["configs"]["endpoint"] == view["scoring_uri"]
    assert resolved["configs"]["endpoint"].endswith("/endpoints/ep-a/score")
    assert resolved["configs"]["target_url"] == view["scoring_uri"].removesuffix("score")
    assert resolved["secrets"] == {"key": keys["primary_key"]}
    assert api.delete(f"{endpoints}/ep-a").status_code == 204
    gone = api.put(f"{CONNECTIONS}/ep2", json=body)
    assert gone.status_code == 400 and "no endpoint deployment named" in gone.text


def test_roles_and_audit(api: Api) -> None:
    tokens = {}
    for user, role in (("rita", "reader"), ("dev", "developer")):
        tokens[user] = api.post("/api/v1/users", json={"name": user}).json()["token"]
        api.put(f"/api/v1/projects/default/members/{user}", json={"role": role})
    outsider = api.post("/api/v1/users", json={"name": "eve"}).json()["token"]

    def as_(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    body = {"configs": {"endpoint": "e"}, "secrets": {"key": SECRET}}
    c = api.client
    assert c.put(f"{CONNECTIONS}/x", json=body, headers=as_(tokens["rita"])).status_code == 403
    assert c.put(f"{CONNECTIONS}/x", json=body, headers=as_(tokens["dev"])).status_code == 201
    read = c.get(f"{CONNECTIONS}/x", headers=as_(tokens["rita"]))
    assert read.status_code == 200 and read.json()["secrets"] == {"key": "***"}
    assert c.get(CONNECTIONS, headers=as_(outsider)).status_code == 404
    assert c.delete(f"{CONNECTIONS}/x", headers=as_(tokens["rita"])).status_code == 403
    api.put(f"{CONNECTIONS}/x", json={"configs": {"endpoint": "f"}, "secrets": {"key": "***"}})
    assert c.delete(f"{CONNECTIONS}/x", headers=as_(tokens["dev"])).status_code == 204

    events = api.get("/api/v1/projects/default/audit").json()
    actions = [(e["action"], e["actor"]) for e in events if e["action"].startswith("connection")]
    assert actions == [
        ("connection.delete", "dev"),
        ("connection.update", "admin"),
        ("connection.create", "dev"),
    ]
    update = next(e for e in events if e["action"] == "connection.update")
    assert update["detail"]["secrets"] == ["key"] and update["detail"]["secrets_changed"] == []
    assert SECRET not in str(events)


def test_prompt_flow_connection_file() -> None:
    text = """
    $schema: https://azuremlschemas.azureedge.net/promptflow/latest/CustomConnection.schema.json
    name: connection
    type: custom
    configs:
      endpoint: "http://127.0.0.1:8000/endpoints/phi/score"
      port: 8000
    secrets:
      key: "abc123"
    """
    body = parse_connection_file(text.replace("\n    ", "\n"))
    assert body == {
        "name": "connection",
        "type": "custom",
        "configs": {"endpoint": "http://127.0.0.1:8000/endpoints/phi/score", "port": "8000"},
        "secrets": {"key": "abc123"},
    }
    with pytest.raises(InvalidRequest, match="azure_open_ai"):
        parse_connection_file("name: x\ntype: azure_open_ai\n")
    with pytest.raises(InvalidRequest, match="unknown field"):
        parse_connection_file("name: x\napi_base: y\n")
