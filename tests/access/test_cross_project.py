"""Every route under /api/v1/projects/{project}/…, taken from the OpenAPI schema so a new
route cannot be forgotten, called by a member of another project: 404 each time (the project's
existence does not leak), and nothing in the other project changes."""

from __future__ import annotations

import re

from tests.conftest import Api

OWN, OTHER = "mine", "theirs"


def test_tokens_of_another_project_get_404_on_every_route(api: Api) -> None:
    for name in (OWN, OTHER):
        assert api.post("/api/v1/projects", json={"name": name}).status_code == 201
    token = api.post("/api/v1/users", json={"name": "neighbour"}).json()["token"]
    assert api.put(f"/api/v1/projects/{OWN}/members/neighbour", json={"role": "owner"}).is_success
    api.deploy("theirs-dep", model="echo", project=OTHER)
    before = api.get(f"/api/v1/projects/{OTHER}/serverless-deployments/theirs-dep/keys").json()

    headers = {"Authorization": f"Bearer {token}"}
    schema = api.client.get("/openapi.json").json()
    checked = []
    for path, operations in schema["paths"].items():
        if not path.startswith("/api/v1/projects/{project}"):
            continue
        for method in operations:
            url = path.replace("{project}", OTHER)
            url = re.sub(r"\{[^}]+\}", "theirs-dep", url)  # other names: an existing one
            response = api.client.request(method.upper(), url, headers=headers, json={})
            checked.append(f"{method.upper()} {path}")
            assert response.status_code == 404, (method, path, response.text)
            assert OTHER not in response.text or "theirs-dep" not in response.text
    assert len(checked) > 40, checked
    after = api.get(f"/api/v1/projects/{OTHER}/serverless-deployments/theirs-dep/keys").json()
    assert after == before  # nothing was regenerated, deleted or changed
