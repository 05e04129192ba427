"""The Python SDK (`lmfoundry.client.Client`) against a real server: it finds its URL and
token as the CLI leaves them, maps error statuses to the SDK's exceptions with the server's
message and `param`, and never shows the token it holds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from lmfoundry import errors
from lmfoundry.access.models import Me, NewUser, Role, TokenScope
from lmfoundry.client import Client
from lmfoundry.client.base import load_credentials
from lmfoundry.config import reset_settings
from lmfoundry.datasets.models import DatasetView
from lmfoundry.registry.models import ModelVersionView
from tests.conftest import ADMIN_TOKEN, LiveServer, start_server, stop_server, tiny_lora_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("client") / "home")
    yield live
    stop_server(live)


def test_credentials_the_cli_wrote_are_used(
    server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "credentials").write_text(json.dumps({"token": ADMIN_TOKEN, "url": server.url}))
    for name in ("LMFOUNDRY_URL", "LMFOUNDRY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LMFOUNDRY_HOME", str(home))
    reset_settings()
    try:
        assert load_credentials(home) == {"token": ADMIN_TOKEN, "url": server.url}
        with Client() as lmf:
            assert lmf.url == server.url
            assert lmf.me() == Me(name="admin", is_admin=True)
    finally:
        reset_settings()


def test_a_round_trip_and_the_errors_it_maps(server: LiveServer) -> None:
    with Client(url=server.url, token=ADMIN_TOKEN, project="sdk") as lmf:
        created = lmf.create_project("sdk", "made by the SDK test")
        assert created.name == "sdk" and created.role == Role.owner
        assert "sdk" in [p.name for p in lmf.projects()]
        with pytest.raises(errors.Conflict, match="already exists"):
            lmf.create_project("sdk")
        with pytest.raises(errors.NotFound) as missing:
            lmf.get_serverless("nowhere")
        assert missing.value.status_code == 404 and "nowhere" in missing.value.message
        with pytest.raises(errors.InvalidRequest) as bad:
            lmf.create_project("Not A Name")
        assert bad.value.param == "name" and "lowercase" in bad.value.message


def test_a_wrong_token_is_unauthorized_and_never_shown(server: LiveServer) -> None:
    wrong = "lmf_pat_" + "x" * 40
    with Client(url=server.url, token=wrong) as lmf, pytest.raises(errors.Unauthorized) as refused:
        lmf.me()
    shown = f"{refused.value} {refused.value!r} {refused.value.headers}"
    assert wrong not in shown and wrong[:20] not in shown
    assert refused.value.status_code == 401


def test_the_sdk_answers_with_the_services_views(server: LiveServer) -> None:
    """Access, quotas, the catalog, usage and monitoring come back as the views the server's
    services answer with: the JSON read into them, times as datetimes, roles as roles."""
    with Client(url=server.url, token=ADMIN_TOKEN, project="views") as lmf:
        lmf.create_project("views")
        user = lmf.create_user("viewer")
        assert isinstance(user, NewUser) and user.token.startswith("lmf_pat_")
        assert lmf.set_member("viewer", "reader").role == Role.reader
        assert {(m.user, m.role) for m in lmf.members()} == {
            ("admin", Role.owner),
            ("viewer", Role.reader),
        }
        assert lmf.disable_user("viewer").disabled_at is not None
        assert lmf.enable_user("viewer").disabled_at is None
        made = lmf.create_token("sdk-views", expires_in_days=1)
        assert made.scope == TokenScope.all and made.expires_at is not None
        assert made.expires_at - datetime.now(UTC) < timedelta(days=1)
        listed = next(t for t in lmf.tokens() if t.name == "sdk-views")
        assert (listed.prefix, listed.status) == (made.token[:12], "active")

        quotas = lmf.set_quotas({"instances": 3})
        line = next(q for q in quotas.quotas if q.name == "instances")
        assert (quotas.project, line.limit, line.custom) == ("views", 3, True)
        events = lmf.audit()
        assert {"project.create", "member.set", "project.quota.set"} <= {e.action for e in events}
        assert all(isinstance(e.at, datetime) for e in events)

        card = lmf.card("echo")
        assert (card.engine, card.weights_present) == ("echo", True)
        assert "echo" in [c.id for c in lmf.catalog()]

        target = lmf.create_serverless("echoed", "echo").target_url
        key = lmf.serverless_keys("echoed").primary_key
        answer = httpx.post(
            target + "chat/completions",
            json={"messages": [{"role": "user", "content": "hello"}]},
            headers={"api-key": key},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        (row,) = lmf.usage()
        assert (row.kind, row.target, row.requests, row.day) == ("serverless", "echoed", 1, None)
        (summary,) = lmf.monitoring()
        assert (summary.target, summary.totals.requests, summary.totals.ok) == ("echoed", 1, 1)
        assert "echo" in {i.model for i in lmf.cluster()}


def test_datasets_and_registered_models_come_back_as_the_servers_views(
    server: LiveServer, tmp_path: Path
) -> None:
    data = tmp_path / "chat.jsonl"
    turns = [
        {"role": "user", "content": "What is the capital of Peru?"},
        {"role": "assistant", "content": "Lima."},
    ]
    data.write_text(json.dumps({"messages": turns}) + "\n")
    with Client(url=server.url, token=ADMIN_TOKEN, project="views-training") as lmf:
        lmf.create_project("views-training")
        uploaded = lmf.upload_dataset(data, "chat", model="SmolLM2-135M-Instruct")
        assert isinstance(uploaded, DatasetView)
        assert (uploaded.name, uploaded.version, uploaded.rows) == ("chat", 1, 1)
        tokens = uploaded.stats.tokens_per_row["SmolLM2-135M-Instruct"]
        assert tokens.context_length == 8192 and tokens.min == tokens.max == tokens.total
        assert lmf.dataset(uploaded.id) == uploaded
        assert lmf.datasets(name="chat") == [uploaded]

        adapter = tiny_lora_adapter(tmp_path / "adapter")
        registered = lmf.register_model("tune", path=str(adapter), description="first try")
        assert isinstance(registered, ModelVersionView)
        assert (registered.version, registered.format, registered.adapter) == (1, "peft", True)
        assert registered.base_model == "SmolLM2-135M-Instruct"
        assert lmf.registered_model("tune") == registered
        assert lmf.registered_models() == [registered]
        lmf.delete_registered_model("tune:1")
        with pytest.raises(errors.NotFound):
            lmf.registered_model("tune:1")
