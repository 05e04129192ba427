"""Fine-tuning jobs on a tiny random Phi-3, end to end through the API: real job processes,
real LoRA training, checkpoints, a SIGKILL of the job process and of the server, cancel,
the queue, and the MLflow model at the end."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from lmfoundry.client import Client
from lmfoundry.config import Settings
from lmfoundry.finetune.models import LogEvent, MetricsEvent, ValidationEvent
from tests.conftest import ADMIN_TOKEN, Api, start_server, stop_server
from tests.finetune.helpers import (
    DATASETS,
    JOBS,
    alive,
    create_job,
    events,
    finished,
    import_tiny,
    output_folder,
    steps,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.train]


def test_tiny_phi3_trains_to_an_mlflow_model_mlflow_can_load(api: Api, tiny_phi3: Path) -> None:
    import_tiny(api, tiny_phi3)
    job = create_job(api, "tiny-phi3", max_steps=16, checkpoint_steps=8)
    assert job["status"] in ("queued", "running")
    assert job["hyperparameters"]["eval_steps"] == 8  # defaults to checkpoint_steps
    # checked against the base model's context at creation, the token counts kept
    train_stats = api.get(f"{DATASETS}/{job['training_data']}").json()["stats"]
    assert train_stats["tokens_per_row"]["tiny-phi3"]["max"] < 128

    followed = []
    with api.client.stream(
        "GET", f"{JOBS}/{job['id']}/events", headers={**api.auth, "Accept": "text/event-stream"}
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                followed.append(json.loads(line[6:]))
    assert followed[-1] == {"kind": "end", "status": "completed"}, followed[-5:]

    job = api.get(f"{JOBS}/{job['id']}").json()
    assert (job["status"], job["step"], job["total_steps"]) == ("completed", 16, 16)
    listed = events(api, job["id"])
    assert [e["id"] for e in followed[:-1]] == [e["id"] for e in listed]  # SSE saw them all
    assert steps(listed, "metrics") == list(range(1, 17))
    assert steps(listed, "validation") == [0, 8, 16]
    metrics = [e for e in listed if e["kind"] == "metrics"]
    assert all(e["tokens_per_second"] > 0 and e["learning_rate"] > 0 for e in metrics)
    validation = [e["validation_loss"] for e in listed if e["kind"] == "validation"]
    assert validation[-1] < validation[0] - 0.1, validation

    assert "output_model_path" not in job  # the answer names no server folder
    output = output_folder(api.client.app.state.platform.settings.home, job["id"])
    adapter = json.loads((output / "peft" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert (
        "<|assistant|>" in (output / "components" / "tokenizer" / "chat_template.jinja").read_text()
    )
    mlmodel = yaml.safe_load((output / "MLmodel").read_text())
    assert mlmodel["flavors"]["transformers"]["peft_adaptor"] == "peft"
    assert mlmodel["flavors"]["transformers"]["source_model_name"] == str(tiny_phi3)
    lineage = mlmodel["metadata"]["lmfoundry"]
    assert lineage["base_model"] == "tiny-phi3"
    assert lineage["training_data"] == job["training_data"] == "chat-train:1"
    assert lineage["validation_data"] == "chat-test:1"
    assert lineage["hyperparameters"]["max_steps"] == 16
    assert lineage["metrics"]["validation_loss"] == pytest.approx(validation[-1])
    assert json.loads((output / "lineage.json").read_text())["job_id"] == job["id"]

    import mlflow

    chat = mlflow.pyfunc.load_model(str(output))
    answer = chat.predict(
        {"messages": [{"role": "user", "content": "What is the capital of Peru?"}], "max_tokens": 4}
    )[0]
    assert answer["object"] == "chat.completion"
    assert answer["usage"]["completion_tokens"] > 0


def test_a_killed_job_process_resumes_from_its_checkpoint(api: Api, tiny_phi3: Path) -> None:
    import_tiny(api, tiny_phi3)
    job = create_job(api, "tiny-phi3", max_steps=40, checkpoint_steps=10)
    running = wait_for(api, job["id"], lambda j: j["step"] >= 15 and j["pid"])
    os.kill(running["pid"], signal.SIGKILL)

    done = finished(api, job["id"])
    assert done["status"] == "completed", done
    assert (done["step"], done["restarts"]) == (40, 1)
    listed = events(api, job["id"])
    # every step exactly once: the steps redone after the checkpoint replaced their rows
    assert steps(listed, "metrics") == list(range(1, 41))
    assert steps(listed, "validation") == list(range(0, 41, 10))
    messages = [e["message"] for e in listed if e["kind"] == "log"]
    assert any("was killed by SIGKILL; resuming from the last checkpoint" in m for m in messages)
    assert any(m.startswith("Resuming from the checkpoint at step ") for m in messages)
    home = api.client.app.state.platform.settings.home
    assert (output_folder(home, job["id"]) / "MLmodel").exists()


def test_cancel_stops_the_process_keeps_the_logs_and_frees_the_queue(
    api: Api, tiny_phi3: Path, home: Path
) -> None:
    import_tiny(api, tiny_phi3)
    first = create_job(api, "tiny-phi3", max_steps=5000)
    second = create_job(api, "tiny-phi3", max_steps=5000)
    running = wait_for(api, first["id"], lambda j: j["step"] >= 2 and j["pid"])
    assert api.get(f"{JOBS}/{second['id']}").json()["status"] == "queued"  # one at a time

    started = time.monotonic()
    canceled = api.post(f"{JOBS}/{first['id']}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert time.monotonic() - started < 10
    assert not alive(running["pid"])
    messages = [e["message"] for e in events(api, first["id"]) if e["kind"] == "log"]
    assert "Job process started" in " ".join(messages) and "Canceled" in " ".join(messages)
    assert (home / "jobs" / first["id"] / "job.log").stat().st_size > 0
    again = api.post(f"{JOBS}/{first['id']}/cancel")
    assert again.status_code == 409 and "already canceled" in again.json()["error"]["message"]

    wait_for(api, second["id"], lambda j: j["status"] == "running")  # the slot is free
    assert api.post(f"{JOBS}/{second['id']}/cancel").json()["status"] == "canceled"


def test_a_job_whose_process_keeps_dying_fails_with_the_reason(home: Path, tiny_phi3: Path) -> None:
    settings = Settings(home=home, admin_token=ADMIN_TOKEN, job_max_restarts=0, job_threads=1)
    from lmfoundry.api.app import create_app

    with TestClient(create_app(settings)) as client:
        api = Api(client, ADMIN_TOKEN)
        import_tiny(api, tiny_phi3)
        job = create_job(api, "tiny-phi3", max_steps=5000)
        running = wait_for(api, job["id"], lambda j: j["pid"])
        os.kill(running["pid"], signal.SIGKILL)
        failed = finished(api, job["id"], timeout=30)
    assert failed["status"] == "failed"
    assert "The job process was killed by SIGKILL, after 0 restart(s)" in failed["error"]
    assert "LMFOUNDRY_JOB_MAX_RESTARTS=0" in failed["error"]


def test_killing_the_server_stops_its_jobs_and_a_restart_resumes_them(
    tmp_path: Path, tiny_phi3: Path
) -> None:
    home = tmp_path / "home"
    server = start_server(home, env={"LMFOUNDRY_JOB_THREADS": "1"})
    try:
        with server.client() as http:
            import_tiny(http, tiny_phi3)
            job = create_job(http, "tiny-phi3", max_steps=40, checkpoint_steps=10)
            running = wait_for(http, job["id"], lambda j: j["step"] >= 15 and j["pid"])
    finally:
        stop_server(server, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(running["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(running["pid"]), "the job process outlived the server"

    again = start_server(home, env={"LMFOUNDRY_JOB_THREADS": "1"})
    try:
        with Client(url=again.url, token=ADMIN_TOKEN) as sdk:
            done = sdk.wait_for_job(job["id"], timeout=240)  # follows the events (SSE)
            listed = sdk.job_events(job["id"], limit=10_000).data
    finally:
        stop_server(again)
    assert done.status == "completed", done
    assert (done.step, done.restarts) == (40, 0)  # a server restart is not a crash
    assert [e.step for e in listed if isinstance(e, MetricsEvent)] == list(range(1, 41))
    assert [e.step for e in listed if isinstance(e, ValidationEvent)] == list(range(0, 41, 10))
    messages = [e.message for e in listed if isinstance(e, LogEvent)]
    assert "The server restarted; resuming from the last checkpoint." in messages
