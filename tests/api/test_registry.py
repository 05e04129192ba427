"""The model registry: versions, lineage, and no deleting what is deployed."""

from __future__ import annotations

import json
from pathlib import Path

from lmfoundry.catalog.bundled import smollm2_path
from tests.conftest import Api, tiny_lora_adapter

M = "/api/v1/projects/default/models"


def adapter_folder(tmp_path: Path) -> Path:
    folder = tiny_lora_adapter(tmp_path / "adapter")
    (folder / "lineage.json").write_text(json.dumps({"datasets": ["chat:1"]}))
    return folder


def test_versions_and_lineage(api: Api, tmp_path: Path) -> None:
    folder = adapter_folder(tmp_path)
    first = api.post(M, json={"name": "my-tune", "path": str(folder)})
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["version"], body["adapter"], body["base_model"]) == (
        1,
        True,
        "SmolLM2-135M-Instruct",
    )
    assert body["lineage"] == {"datasets": ["chat:1"]}
    assert "path" not in body  # the answer names the version, never a server folder
    artifacts = api.client.app.state.platform.settings.artifacts_dir  # type: ignore[attr-defined]
    assert (artifacts / "registry" / "default" / "my-tune" / "1" / "adapter_config.json").exists()
    second = api.post(
        M, json={"name": "my-tune", "path": str(folder), "tags": {"stage": "candidate"}}
    )
    assert second.json()["version"] == 2
    assert [m["version"] for m in api.get(M).json()] == [1, 2]
    assert api.get(f"{M}/my-tune").json()["version"] == 2  # latest
    assert api.get(f"{M}/my-tune:1").json()["tags"] == {}
    assert api.delete(f"{M}/my-tune:1").status_code == 204
    assert api.get(f"{M}/my-tune:1").status_code == 404


def test_bad_registrations(api: Api, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for body, param in [
        ({"name": "x", "path": str(empty)}, "path"),
        ({"name": "x", "path": str(tmp_path / "missing")}, "path"),
        ({"name": "x"}, "from_job"),
        ({"name": "Bad Name", "path": str(empty)}, "name"),
    ]:
        response = api.post(M, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    assert api.get(M).json() == []
    assert api.get(f"{M}/nope:1").status_code == 404
    assert api.get(f"{M}/nope:x").status_code == 400


def test_a_version_in_use_cannot_be_deleted(api: Api, tmp_path: Path) -> None:
    weights = smollm2_path()
    assert weights is not None
    registered = api.post(M, json={"name": "smol-copy", "path": str(weights)}).json()
    assert registered["format"] == "gguf"
    assert (
        api.post("/api/v1/projects/default/online-endpoints", json={"name": "uses-it"}).status_code
        == 201
    )
    put = api.put(
        "/api/v1/projects/default/online-endpoints/uses-it/deployments/blue",
        json={"model": "smol-copy:1"},
    )
    assert put.status_code == 200, put.text
    refused = api.delete(f"{M}/smol-copy:1")
    assert refused.status_code == 409
    assert "uses-it/blue" in refused.json()["error"]["message"]
    serverless = api.deploy("smol-serverless", model="smol-copy:1")
    assert serverless["model"] == "smol-copy:1"
    api.delete("/api/v1/projects/default/online-endpoints/uses-it")
    still = api.delete(f"{M}/smol-copy:1")
    assert still.status_code == 409 and "smol-serverless" in still.json()["error"]["message"]
    api.delete("/api/v1/projects/default/serverless-deployments/smol-serverless")
    assert api.delete(f"{M}/smol-copy:1").status_code == 204
