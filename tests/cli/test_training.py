"""`lmfoundry datasets`, `jobs` and `models` against a real server: the tables spell out a
dataset's statistics, a job's log reads as lines, registering names the new version, and
`--json` prints the API's records."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmfoundry.cli.jobs import _line
from lmfoundry.cli.main import app
from lmfoundry.config import reset_settings
from lmfoundry.finetune.models import LogEvent, MetricsEvent, ValidationEvent
from tests.conftest import ADMIN_TOKEN, LiveServer, start_server, stop_server, tiny_lora_adapter

pytestmark = pytest.mark.slow

ROWS = [
    [("user", "What is the capital of Peru?"), ("assistant", "Lima.")],
    [("system", "Be brief."), ("user", "And of Chile?"), ("assistant", "Santiago.")],
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # No supervisor: a job stays queued, so its log and its cancel are quick to check.
    live = start_server(
        tmp_path_factory.mktemp("cli") / "home", env={"LMFOUNDRY_SUPERVISOR": "false"}
    )
    yield live
    stop_server(live)


@pytest.fixture
def lmfoundry(
    server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., str]]:
    """The CLI in-process, logged in to `server`; returns what a command printed."""
    monkeypatch.setenv("LMFOUNDRY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LMFOUNDRY_URL", server.url)
    monkeypatch.setenv("LMFOUNDRY_TOKEN", ADMIN_TOKEN)
    reset_settings()

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        return result.output

    yield run
    reset_settings()


def write_rows(path: Path) -> Path:
    lines = [
        json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) for turns in ROWS
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_datasets_show_their_statistics(lmfoundry: Callable[..., str], tmp_path: Path) -> None:
    data = write_rows(tmp_path / "chat.jsonl")
    model = "SmolLM2-135M-Instruct"
    uploaded = lmfoundry("datasets", "upload", str(data), "--name", "stats", "--model", model)
    assert "messages per row" in uploaded and "min 2, mean 2.5, max 3" in uploaded
    assert f"tokens per row ({model})" in uploaded and "(context 8192)" in uploaded

    shown = json.loads(lmfoundry("datasets", "show", "stats:1", "--json"))
    assert (shown["name"], shown["version"], shown["rows"]) == ("stats", 1, 2)
    assert shown["stats"]["messages_per_row"] == {"min": 2, "mean": 2.5, "max": 3, "total": 5}
    assert shown["stats"]["tokens_per_row"][model]["context_length"] == 8192
    listed = lmfoundry("datasets", "list", "--name", "stats")
    assert shown["id"] in listed and "chat.jsonl" in listed


@pytest.mark.train  # creating a job needs the training stack on the server
def test_a_queued_jobs_log_and_its_cancel(lmfoundry: Callable[..., str], tmp_path: Path) -> None:
    lmfoundry("datasets", "upload", str(write_rows(tmp_path / "chat.jsonl")), "--name", "chat")
    create = ["jobs", "create", "--model", "SmolLM2-135M-Instruct", "--training-data", "chat"]
    job = json.loads(lmfoundry(*create, "--max-steps", "2", "--json"))
    assert (job["status"], job["training_data"]) == ("queued", "chat:1")
    assert job["hyperparameters"]["max_steps"] == 2
    log = " ".join(lmfoundry("jobs", "logs", job["id"]).split())
    assert "LoRA fine-tuning of SmolLM2-135M-Instruct on chat:1; queued." in log
    assert lmfoundry("jobs", "cancel", job["id"]).strip() == f"{job['id']} is canceled."
    assert json.loads(lmfoundry("jobs", "show", job["id"], "--json"))["status"] == "canceled"


def test_registering_names_the_version_and_how_to_deploy_it(
    lmfoundry: Callable[..., str], tmp_path: Path
) -> None:
    adapter = tiny_lora_adapter(tmp_path / "adapter")
    registered = " ".join(lmfoundry("models", "register", "tune", "--path", str(adapter)).split())
    assert "Registered tune:1 (peft, LoRA on SmolLM2-135M-Instruct)" in registered
    assert "lmfoundry endpoints deploy ENDPOINT blue --model tune:1" in registered
    listed = json.loads(lmfoundry("models", "list", "tune", "--json"))
    assert [(m["name"], m["version"], m["adapter"]) for m in listed] == [("tune", 1, True)]
    lmfoundry("models", "delete", "tune:1")
    assert json.loads(lmfoundry("models", "list", "tune", "--json")) == []


def test_a_jobs_events_read_as_log_lines() -> None:
    at = datetime(2026, 12, 7, 5, 37, 51, tzinfo=UTC)
    metrics = MetricsEvent(
        id=5, at=at, kind="metrics", step=3, train_loss=1.234567, learning_rate=2e-4,
        tokens_per_second=1234.4, trained_tokens=500, epoch=0.5, total_steps=16,
    )  # fmt: skip
    assert _line(metrics) == (
        "[dim]05:37:51[/] step 3/16: train_loss 1.2346, learning_rate 0.0002, 1234 tokens/s"
    )
    validation = ValidationEvent(id=6, at=at, kind="validation", step=4, validation_loss=0.98765)
    assert _line(validation) == "[dim]05:37:51[/] step 4: validation_loss 0.9877"
    failed = LogEvent(id=7, at=at, kind="log", level="error", message="Failed: out of memory")
    assert _line(failed) == "[dim]05:37:51[/] [bold red]Failed: out of memory[/]"
