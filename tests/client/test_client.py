"""The Python SDK (`lmfoundry.client.Client`) against a real server: it finds its URL and
token as the CLI leaves them, maps error statuses to the SDK's exceptions with the server's
message and `param`, and never shows the token it holds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmfoundry import errors
from lmfoundry.client import Client
from lmfoundry.client.base import load_credentials
from lmfoundry.config import reset_settings
from tests.conftest import ADMIN_TOKEN, LiveServer, start_server, stop_server

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
            assert lmf.me() == {"name": "admin", "is_admin": True}
    finally:
        reset_settings()


def test_a_round_trip_and_the_errors_it_maps(server: LiveServer) -> None:
    with Client(url=server.url, token=ADMIN_TOKEN, project="sdk") as lmf:
        created = lmf.create_project("sdk", "made by the SDK test")
        assert created["name"] == "sdk" and created["role"] == "owner"
        assert "sdk" in [p["name"] for p in lmf.projects()]
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
