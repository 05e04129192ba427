"""Who may do what, against a real `lmfoundry up` over loopback with users who are not admins:
only admins create projects, flows run only where an owner switched them on and only for
developers, register-by-path reads only below the operator's import roots (never the home,
never through a symlink, never past the caps), and no answer names a folder of the server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lmfoundry.config import Settings
from lmfoundry.flows.archive import pack
from tests.conftest import (
    ADMIN_TOKEN,
    Api,
    LiveServer,
    start_server,
    stop_server,
    tiny_lora_adapter,
)
from tests.flows.helpers import write_flow

TEAM = "team"
P = f"/api/v1/projects/{TEAM}"
MAX_FILES = 40  # LMFOUNDRY_IMPORT_MAX_FILES of the server under test

FLOW = """
inputs:
  text:
    type: string
outputs:
  shout:
    type: string
    reference: ${shout.output}
nodes:
- name: shout
  type: python
  source:
    type: code
    path: shout.py
  inputs:
    text: ${inputs.text}
"""
SHOUT = """
from promptflow import tool


@tool
def shout(text: str) -> str:
    return text.upper()
"""


@dataclass
class Setup:
    server: LiveServer
    base: Path  # an import root that holds the server's home
    imports: Path  # the other import root
    tokens: dict[str, str]  # user -> token: owner, developer, reader of TEAM; outsider

    def as_(self, user: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url,
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
            timeout=60,
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("permissions")
    imports = base / "imports"
    imports.mkdir()
    live = start_server(
        base / "home",
        env={
            # `base` holds the home: the home stays refused even below an import root
            "LMFOUNDRY_IMPORT_ROOTS": f"{imports}{os.pathsep}{base}",
            "LMFOUNDRY_IMPORT_MAX_FILES": str(MAX_FILES),
        },
    )
    tokens = {}
    with live.client() as admin:
        assert admin.post("/api/v1/projects", json={"name": TEAM}).status_code == 201
        for user in ("owner", "developer", "reader", "outsider"):
            created = admin.post("/api/v1/users", json={"name": f"u-{user}"})
            assert created.status_code == 201, created.text
            tokens[user] = created.json()["token"]
            if user != "outsider":
                role = admin.put(f"{P}/members/u-{user}", json={"role": user})
                assert role.status_code == 200, role.text
    yield Setup(live, base, imports, tokens)
    stop_server(live)


def test_only_admins_create_projects(setup: Setup) -> None:
    for user in ("owner", "outsider"):
        with setup.as_(user) as c:
            refused = c.post("/api/v1/projects", json={"name": f"mine-{user}"})
            assert refused.status_code == 403, refused.text
            message = refused.json()["error"]["message"]
            assert "admin" in message and "LMFOUNDRY_ALLOW_SELF_SERVICE_PROJECTS" in message
            assert c.get("/api/v1/projects/mine-" + user).status_code == 404  # nothing made
    with setup.server.client() as admin:
        made = admin.post("/api/v1/projects", json={"name": "by-admin"})
        assert made.status_code == 201, made.text
        assert made.json()["flows_enabled"] is False  # new projects start with flows off
        # the admin's own project from the first start runs the README's flows
        assert admin.get("/api/v1/projects/default").json()["flows_enabled"] is True


def test_self_service_projects_when_the_operator_allows_them(home: Path) -> None:
    from fastapi.testclient import TestClient

    from lmfoundry.api.app import create_app

    settings = Settings(home=home, admin_token=ADMIN_TOKEN, allow_self_service_projects=True)
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        token = client.post("/api/v1/users", json={"name": "carol"}, headers=admin).json()["token"]
        made = client.post(
            "/api/v1/projects",
            json={"name": "carols"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert made.status_code == 201, made.text
        assert (made.json()["role"], made.json()["flows_enabled"]) == ("owner", False)


def test_flows_run_only_when_an_owner_enabled_them(setup: Setup, tmp_path: Path) -> None:
    archive = pack(write_flow(tmp_path / "flow", FLOW, {"shout.py": SHOUT}))
    with setup.as_("developer") as dev, setup.as_("reader") as reader, setup.as_("owner") as owner:
        uploaded = dev.post(
            f"{P}/flows", data={"name": "shout"}, files={"file": ("f.tar.gz", archive)}
        )
        assert uploaded.status_code == 201, uploaded.text  # storing a flow runs nothing
        assert reader.get(f"{P}/flows/shout").status_code == 200  # reading stays allowed

        attempts = {
            "test": lambda c: c.post(f"{P}/flows/shout/test", json={"inputs": {"text": "hi"}}),
            "draft": lambda c: c.post(
                f"{P}/flows/test", files={"file": ("f.tar.gz", archive)}, data={"inputs": "{}"}
            ),
            "run": lambda c: c.post(
                f"{P}/flows/shout/runs",
                files={"data": ("d.jsonl", b'{"text": "a"}\n')},
                data={"column_mapping": json.dumps({"text": "${data.text}"})},
            ),
            "deploy": lambda c: c.post(f"{P}/flows/shout/deploy"),
        }
        for what, attempt in attempts.items():
            refused = attempt(dev)
            assert refused.status_code == 403, (what, refused.text)
            message = refused.json()["error"]["message"]
            assert "switched off" in message and "lmfoundry projects flows enable" in message
            assert "owner" in message, message

        # only an owner (or an admin) flips the switch
        flipped = dev.patch(P, json={"flows_enabled": True})
        assert flipped.status_code == 403 and "owner" in flipped.json()["error"]["message"]
        assert reader.patch(P, json={"flows_enabled": True}).status_code == 403
        with setup.as_("outsider") as outsider:
            assert outsider.patch(P, json={"flows_enabled": True}).status_code == 404
        enabled = owner.patch(P, json={"flows_enabled": True})
        assert enabled.status_code == 200, enabled.text
        assert enabled.json()["flows_enabled"] is True
        assert reader.get(P).json()["flows_enabled"] is True
        assert owner.patch(P, json={"flows_enabled": "maybe"}).status_code in (400, 422)

        tested = dev.post(f"{P}/flows/shout/test", json={"inputs": {"text": "hi"}})
        assert tested.status_code == 200, tested.text
        assert tested.json()["outputs"] == {"shout": "HI"}
        for what, attempt in attempts.items():  # a reader runs no code, even with flows on
            if what != "deploy":
                refused = attempt(reader)
                assert refused.status_code == 403, (what, refused.text)
                assert "developer" in refused.json()["error"]["message"]
        assert attempts["run"](dev).status_code == 202
        deployed = dev.post(f"{P}/flows/shout/deploy")
        assert deployed.status_code == 200, deployed.text
        key = dev.get(f"{P}/flows/shout/keys").json()["primary_key"]
        score = f"{setup.server.url}/flows/shout/score"
        scored = httpx.post(score, json={"text": "yo"}, headers={"api-key": key}, timeout=60)
        assert scored.status_code == 200 and scored.json() == {"shout": "YO"}, scored.text

        # switched off again: the deployed flow stops answering, its code does not run
        assert owner.patch(P, json={"flows_enabled": False}).json()["flows_enabled"] is False
        stopped = httpx.post(score, json={"text": "yo"}, headers={"api-key": key}, timeout=60)
        assert stopped.status_code == 403 and "switched off" in stopped.text
        assert dev.post(f"{P}/flows/shout/test", json={"inputs": {}}).status_code == 403
    audit = setup.server.client().get(f"{P}/audit").json()
    switches = [e["detail"]["flows_enabled"] for e in audit if e["action"] == "project.flows"]
    assert switches == [False, True]  # newest first, with who did it
    assert {e["actor"] for e in audit if e["action"] == "project.flows"} == {"u-owner"}


def test_register_by_path_reads_only_the_import_roots(setup: Setup) -> None:
    home = setup.server.home
    imports = setup.imports
    good = tiny_lora_adapter(imports / "good")
    leaky = tiny_lora_adapter(imports / "leaky")
    (leaky / "stolen.txt").symlink_to("/etc/passwd")
    linked_dir = tiny_lora_adapter(imports / "linked-dir")
    (linked_dir / "more").symlink_to(home, target_is_directory=True)
    (imports / "shortcut").symlink_to(home / "artifacts", target_is_directory=True)
    many = tiny_lora_adapter(imports / "many")
    for n in range(MAX_FILES):
        (many / f"shard-{n}.bin").write_bytes(b"x")

    with setup.server.client() as admin:
        other = admin.post("/api/v1/projects", json={"name": "other"})
        assert other.status_code == 201, other.text
        theirs = admin.post(
            "/api/v1/projects/other/models", json={"name": "secret", "path": str(good)}
        )
        assert theirs.status_code == 201, theirs.text
    their_folder = home / "artifacts" / "registry" / "other" / "secret" / "1"
    assert (their_folder / "adapter_config.json").exists()

    refused = {
        str(home): (403, "LMFOUNDRY_HOME"),
        str(their_folder): (403, "LMFOUNDRY_HOME"),  # another project's model
        str(home / "master.key"): (403, "LMFOUNDRY_HOME"),
        str(imports / ".." / "home" / "artifacts"): (403, "LMFOUNDRY_HOME"),
        str(setup.base): (403, "LMFOUNDRY_HOME"),  # a folder that holds the home
        "/etc": (403, "LMFOUNDRY_IMPORT_ROOTS"),
        "/": (403, "LMFOUNDRY_IMPORT_ROOTS"),
        str(imports / ".." / ".." / "etc"): (403, "LMFOUNDRY_IMPORT_ROOTS"),
        str(leaky): (400, "symlink"),
        str(linked_dir): (400, "symlink"),
        str(imports / "shortcut" / "registry" / "other" / "secret" / "1"): (400, "symlink"),
        str(many): (413, "LMFOUNDRY_IMPORT_MAX_FILES"),
        "good": (400, "absolute"),
        str(imports / "missing"): (400, "does not exist"),
    }
    with setup.as_("developer") as dev:
        wrong = []
        for path, (status, words) in refused.items():
            answer = dev.post(f"{P}/models", json={"name": "taken", "path": path})
            error = answer.json().get("error", {})
            if answer.status_code != status or words not in error.get("message", ""):
                wrong.append((path, status, answer.status_code, answer.text))
            elif error.get("param") != "path":
                wrong.append((path, "param", error))
            assert "/etc/passwd" not in answer.text and "root:" not in answer.text
        assert wrong == []
        assert dev.get(f"{P}/models").json() == []  # nothing was copied
        assert not (home / "artifacts" / "registry" / TEAM).exists() or not any(
            (home / "artifacts" / "registry" / TEAM).rglob("*.txt")
        )

        ok = dev.post(f"{P}/models", json={"name": "mine", "path": str(good)})
        assert ok.status_code == 201, ok.text
        assert (ok.json()["version"], ok.json()["adapter"]) == (1, True)
    with setup.as_("reader") as reader:
        denied = reader.post(f"{P}/models", json={"name": "r", "path": str(good)})
        assert denied.status_code == 403 and "developer" in denied.json()["error"]["message"]


def test_register_by_path_is_off_without_import_roots(home: Path) -> None:
    from fastapi.testclient import TestClient

    from lmfoundry.api.app import create_app

    folder = tiny_lora_adapter(home.parent / "model")
    settings = Settings(home=home, admin_token=ADMIN_TOKEN, import_roots=[])
    with TestClient(create_app(settings)) as client:
        refused = client.post(
            "/api/v1/projects/default/models",
            json={"name": "x", "path": str(folder)},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    assert refused.status_code == 403, refused.text
    assert "LMFOUNDRY_IMPORT_ROOTS" in refused.json()["error"]["message"]


def test_answers_name_no_server_folder(setup: Setup) -> None:
    home = setup.server.home
    with setup.server.client() as admin:
        registered = admin.post(
            f"{P}/models",
            json={"name": "listed", "path": str(tiny_lora_adapter(setup.imports / "listed"))},
        )
        assert registered.status_code == 201, registered.text
        dataset = admin.post(
            f"{P}/datasets",
            data={"name": "chat"},
            files={
                "file": (
                    "chat.jsonl",
                    b'{"messages": [{"role": "user", "content": "hi"}, '
                    b'{"role": "assistant", "content": "hello"}]}\n' * 4,
                )
            },
        )
        assert dataset.status_code == 201, dataset.text
    scanned = []
    with setup.as_("developer") as dev:
        for path in (
            f"{P}/models",
            f"{P}/models/listed",
            f"{P}/datasets",
            f"{P}/fine-tuning-jobs",
            f"{P}/flows",
            f"{P}/runs",
            f"{P}/online-endpoints",
            f"{P}/serverless-deployments",
            P,
            "/api/v1/catalog",
            "/api/v1/catalog/SmolLM2-135M-Instruct",
        ):
            answer = dev.get(path)
            assert answer.status_code == 200, (path, answer.text)
            scanned.append(path)
            for folder in {str(home), str(home.resolve()), str(setup.base)}:
                assert folder not in answer.text, (path, answer.text)
            assert "site-packages" not in answer.text, (path, answer.text)
    assert len(scanned) == 11


def test_no_answer_has_a_field_for_a_server_folder(api: Api) -> None:
    """Every answer of the management API, from its OpenAPI schema (so a new route is
    covered): no field named for a path, folder or dir. Catalog cards keep weights_path, for
    admins only (it is empty for everyone else, as test_answers_name_no_server_folder sees)."""
    schema = api.client.get("/openapi.json").json()
    answered: set[str] = set()
    for path, operations in schema["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                body = response.get("content", {}).get("application/json", {}).get("schema", {})
                ref = body.get("$ref") or body.get("items", {}).get("$ref")
                if ref:
                    answered.add(ref.rsplit("/", 1)[-1])
    assert {"ModelVersionView", "JobView", "DatasetView", "FlowView", "ProjectView"} <= answered
    fields = [
        (name, field)
        for name in answered - {"CardView"}
        for field in schema["components"]["schemas"][name].get("properties", {})
        if any(word in field for word in ("path", "folder", "dir"))
    ]
    assert fields == []


def test_the_cli_switches_flows(setup: Setup) -> None:
    from tests.flows.helpers import cli

    with setup.server.client() as admin:
        assert admin.post("/api/v1/projects", json={"name": "cli-switch"}).status_code == 201
    on = json.loads(cli(setup.server, "projects", "flows", "enable", "-p", "cli-switch", "--json"))
    assert (on["name"], on["flows_enabled"]) == ("cli-switch", True)
    off = cli(setup.server, "projects", "flows", "disable", "--project", "cli-switch", "--json")
    assert json.loads(off)["flows_enabled"] is False
    listed = cli(setup.server, "projects", "list")
    assert "flows enabled" in listed or "flows_enabled" in listed, listed


def test_a_queued_run_does_not_start_once_flows_are_switched_off(
    setup: Setup, tmp_path: Path
) -> None:
    from lmfoundry.flows.runs import CONCURRENT_RUNS

    slow = SHOUT.replace("return text.upper()", "import time\n\n    time.sleep(4)\n    return text")
    archive = pack(write_flow(tmp_path / "slow", FLOW, {"shout.py": slow}))
    q = "/api/v1/projects/queue"
    with setup.server.client() as admin:
        assert admin.post("/api/v1/projects", json={"name": "queue"}).status_code == 201
        assert admin.patch(q, json={"flows_enabled": True}).status_code == 200
        files = {"file": ("f.tar.gz", archive)}
        assert admin.post(f"{q}/flows", data={"name": "slow"}, files=files).status_code == 201

        def start() -> str:
            started = admin.post(
                f"{q}/flows/slow/runs",
                files={"data": ("d.jsonl", b'{"text": "a"}\n')},
                data={"column_mapping": json.dumps({"text": "${data.text}"})},
            )
            assert started.status_code == 202, started.text
            return str(started.json()["id"])

        busy = [start() for _ in range(CONCURRENT_RUNS)]  # they hold every slot
        waiting = start()
        assert admin.get(f"{q}/runs/{waiting}").json()["status"] == "queued"
        assert admin.patch(q, json={"flows_enabled": False}).status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run = admin.get(f"{q}/runs/{waiting}").json()
            if run["status"] not in ("queued", "running"):
                break
            time.sleep(0.2)
        assert run["status"] == "failed" and "switched off" in run["error"], run
        assert run["completed_lines"] == 0
        for run_id in busy:  # those that had started finish their lines
            admin.post(f"{q}/runs/{run_id}/cancel")


def test_the_copy_refuses_what_changed_after_the_checks(tmp_path: Path) -> None:
    """A symlink that appears between the checks and the copy is refused, not followed; a
    root that does not exist (yet) is a clear 400, not a 500."""
    from lmfoundry.errors import InvalidRequest
    from lmfoundry.registry.imports import ImportPolicy

    root = tmp_path / "root"
    policy = ImportPolicy((root, tmp_path / "gone"), tmp_path / "home", 1 << 20, 100)
    with pytest.raises(InvalidRequest, match="does not exist"):
        policy.source(str(tmp_path / "gone" / "model"))
    model = tiny_lora_adapter(root / "model")
    checked = policy.source(str(model))
    (model / "adapter_model.safetensors").unlink()
    (model / "adapter_model.safetensors").symlink_to("/etc/passwd")  # swapped in afterwards
    with pytest.raises(InvalidRequest, match="changed while it was copied"):
        policy.copy(checked, tmp_path / "copy", str(model))
    copied = [p for p in (tmp_path / "copy").rglob("*") if p.is_file()]
    assert not any(p.read_bytes().startswith(b"root:") for p in copied)


def test_a_jobs_error_and_log_name_no_server_folder(home: Path) -> None:
    """A trainer's traceback names the files it read; the job's answers do not."""
    from fastapi.testclient import TestClient

    from lmfoundry.api.app import create_app
    from lmfoundry.finetune.events import LOG
    from lmfoundry.storage.db import Database
    from lmfoundry.storage.models import FineTuningEvent, FineTuningJob
    from tests.finetune.helpers import JOBS, upload_example

    settings = Settings(home=home, admin_token=ADMIN_TOKEN, supervisor=False)
    with TestClient(create_app(settings)) as client:
        api = Api(client, ADMIN_TOKEN)
        train, _ = upload_example(api)
        job = api.post(JOBS, json={"model": "SmolLM2-135M-Instruct", "training_data": train})
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        leaked = f"FileNotFoundError: {home}/artifacts/datasets/{train}.jsonl"
        db = Database(settings.database_url)
        with db.session() as s:
            row = s.get(FineTuningJob, job_id)
            assert row is not None
            row.error = leaked
            s.add(FineTuningEvent(job_id=job_id, kind=LOG, level="error", message=leaked))
        db.dispose()
        answers = [api.get(f"{JOBS}/{job_id}"), api.get(f"{JOBS}/{job_id}/events"), api.get(JOBS)]
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert str(home) not in answer.text
        assert "<artifacts>/datasets/" in answers[0].json()["error"]
        assert "<artifacts>/datasets/" in answers[1].text
