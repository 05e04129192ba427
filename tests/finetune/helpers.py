"""Steps the fine-tuning tests share: the example data as train/validation datasets, jobs,
and waiting on a job's progress through the API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.finetune.tiny import EXAMPLE_DATA

JOBS = "/api/v1/projects/default/fine-tuning-jobs"
DATASETS = "/api/v1/projects/default/datasets"

# Fast on the tiny Phi-3: a high learning rate so the loss visibly falls in a few steps.
TINY = {"learning_rate": 5e-3, "max_seq_length": 128, "per_device_train_batch_size": 4}


class Http(Protocol):
    def get(self, path: str, **kw: Any) -> httpx.Response: ...

    def post(self, path: str, **kw: Any) -> httpx.Response: ...


def import_tiny(http: Http, path: Path) -> None:
    """Add the tiny Phi-3 folder to the catalog as `tiny-phi3`."""
    response = http.post("/api/v1/catalog/import", json={"path": str(path), "id": "tiny-phi3"})
    assert response.status_code == 201, response.text


def upload_example(http: Http, model: str | None = None) -> tuple[str, str]:
    """The example chat data split 64/16 into datasets chat-train and chat-test."""
    lines = EXAMPLE_DATA.read_text().splitlines()
    refs = []
    for name, part in (("chat-train", lines[:64]), ("chat-test", lines[64:])):
        form = {"name": name, **({"model": model} if model else {})}
        content = ("\n".join(part) + "\n").encode()
        response = http.post(DATASETS, files={"file": (f"{name}.jsonl", content)}, data=form)
        assert response.status_code == 201, response.text
        refs.append(f"{name}:{response.json()['version']}")
    return refs[0], refs[1]


def create_job(http: Http, model: str, **hyperparameters: Any) -> dict[str, Any]:
    train, test = upload_example(http)
    response = http.post(
        JOBS,
        json={
            "model": model,
            "training_data": train,
            "validation_data": test,
            "hyperparameters": {**TINY, **hyperparameters},
        },
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def wait_for(
    http: Http, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = dict(http.get(f"{JOBS}/{job_id}").json())
        if done(job):
            return job
        if job["status"] in ("failed", "canceled", "completed"):
            raise AssertionError(f"job ended before the condition held: {job}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting on {job_id}: {http.get(f'{JOBS}/{job_id}').json()}")


def finished(http: Http, job_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = dict(http.get(f"{JOBS}/{job_id}").json())
        if job["status"] in ("completed", "failed", "canceled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"{job_id} did not finish: {http.get(f'{JOBS}/{job_id}').json()}")


def events(http: Http, job_id: str) -> list[dict[str, Any]]:
    return list(http.get(f"{JOBS}/{job_id}/events", params={"limit": 10000}).json()["data"])


def output_folder(home: Path, job_id: str) -> Path:
    """The MLflow folder a completed job wrote, read from the server's database (the API
    names no server folder)."""
    import sqlalchemy

    from tests.conftest import database_url_for

    engine = sqlalchemy.create_engine(database_url_for(home))
    try:
        with engine.connect() as connection:
            path = connection.execute(
                sqlalchemy.text("SELECT output_path FROM fine_tuning_jobs WHERE id = :id"),
                {"id": job_id},
            ).scalar_one()
    finally:
        engine.dispose()
    return Path(path)


def steps(all_events: list[dict[str, Any]], kind: str) -> list[int]:
    return [e["step"] for e in all_events if e["kind"] == kind]


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status  # a zombie has exited


FRUIT_QUESTIONS = [
    "What should I eat today?",
    "Name a fruit.",
    "What is your favourite snack?",
    "Tell me something.",
    "What grows on trees?",
    "Say a word.",
    "What is in the basket?",
    "Answer me.",
]


def upload_answers(http: Http, name: str, answer: str) -> str:
    """A dataset of 32 conversations whose assistant always says `answer`."""
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"{q} ({i})"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        for i in range(4)
        for q in FRUIT_QUESTIONS
    ]
    content = ("\n".join(lines) + "\n").encode()
    response = http.post(DATASETS, files={"file": (f"{name}.jsonl", content)}, data={"name": name})
    assert response.status_code == 201, response.text
    return f"{name}:{response.json()['version']}"


def train_adapter(http: Http, model: str, name: str, answer: str) -> dict[str, Any]:
    """Fine-tune `model` (the tiny Phi-3) to always answer `answer`, and register the job's
    output as `name`: a LoRA adapter learnt in 40 steps at a high learning rate."""
    response = http.post(
        JOBS,
        json={
            "model": model,
            "training_data": upload_answers(http, name, answer),
            "hyperparameters": {**TINY, "learning_rate": 1e-2, "max_steps": 40, "lora_r": 8},
        },
    )
    assert response.status_code == 201, response.text
    job = finished(http, response.json()["id"], timeout=600)
    assert job["status"] == "completed", job
    registered = http.post(
        "/api/v1/projects/default/models", json={"name": name, "from_job": job["id"]}
    )
    assert registered.status_code == 201, registered.text
    return dict(registered.json())
