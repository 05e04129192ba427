"""Creating fine-tuning jobs: every bad request is a 4xx that names the field, and nothing is
queued. (These requests never reach a job process.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Api
from tests.finetune.helpers import DATASETS, JOBS, upload_example

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture
def data(api: Api) -> tuple[str, str]:
    return upload_example(api)


def create(api: Api, **body: object):
    return api.post(JOBS, json=body)


@pytest.mark.parametrize(
    ("hyperparameters", "field", "words"),
    [
        ({"learning_rate": 0}, "learning_rate", "greater than 0"),
        ({"learning_rate": "fast"}, "learning_rate", "must be a number"),
        ({"lr_scheduler_type": "exponential"}, "lr_scheduler_type", "cosine_with_restarts"),
        ({"num_train_epochs": -1}, "num_train_epochs", "greater than 0"),
        ({"per_device_train_batch_size": True}, "per_device_train_batch_size", "whole number"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps", "at least 1"),
        ({"warmup_steps": -5}, "warmup_steps", "at least 0"),
        ({"weight_decay": 2}, "weight_decay", "at most 1"),
        ({"lora_r": 2.5}, "lora_r", "whole number"),
        ({"lora_alpha": 0}, "lora_alpha", "at least 1"),
        ({"lora_dropout": 1.0}, "lora_dropout", "at most 0.9"),
        ({"lora_target_modules": []}, "lora_target_modules", "non-empty list"),
        ({"max_seq_length": 8}, "max_seq_length", "at least 16"),
        ({"max_seq_length": 100_000}, "max_seq_length", "8192-token context"),
        ({"seed": -1}, "seed", "at least 0"),
        ({"max_steps": 0}, "max_steps", "at least 1"),
        ({"checkpoint_steps": 0}, "checkpoint_steps", "at least 1"),
        ({"epochs": 3}, "epochs", "Unknown hyperparameter 'epochs'"),
    ],
)
def test_bad_hyperparameters_are_named(
    api: Api, data: tuple[str, str], hyperparameters: dict, field: str, words: str
) -> None:
    response = create(api, model=MODEL, training_data=data[0], hyperparameters=hyperparameters)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == f"hyperparameters.{field}"
    assert words in error["message"]
    assert api.get(JOBS).json() == []


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"model": "no-such-model"}, 404, "model", "not in the catalog"),
        ({"model": "Phi-3-mini-4k-instruct"}, 400, "model", "not on this machine"),
        ({"model": "echo"}, 400, "model", "no weights to fine-tune"),
        ({"model": "all-MiniLM-L6-v2"}, 400, "model", "is an embeddings model"),
        ({"training_data": "nope"}, 404, "training_data", "No dataset 'nope'"),
        ({"training_data": "chat-train:7"}, 404, "training_data", "chat-train:7"),
        ({"training_data": "chat-train:x"}, 400, "training_data", "NAME:VERSION"),
        ({"validation_data": "ds-0000"}, 404, "validation_data", "ds-0000"),
        ({"suffix": "Bad Suffix!"}, 400, "suffix", "lowercase letters"),
        ({"colour": "red"}, 400, "colour", "unknown field"),
    ],
)
def test_bad_requests_name_the_field(
    api: Api, data: tuple[str, str], body: dict, status: int, param: str, words: str
) -> None:
    request = {"model": MODEL, "training_data": data[0], "validation_data": data[1], **body}
    response = create(api, **request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert api.get(JOBS).json() == []


def test_a_conversation_longer_than_the_base_models_context_is_refused_at_creation(
    api: Api, home: Path
) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi!"}]},
        {
            "messages": [
                {"role": "user", "content": "word " * 9000},
                {"role": "assistant", "content": "ok"},
            ]
        },
    ]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    uploaded = api.post(DATASETS, files={"file": ("long.jsonl", content)}, data={"name": "long"})
    assert uploaded.status_code == 201  # no model given at upload: no context to check yet
    response = create(api, model=MODEL, training_data="long")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "training_data"
    assert "line 2 (" in error["message"] and "8192-token context" in error["message"]
    assert api.get(JOBS).json() == []


def test_without_the_training_stack_the_server_says_what_to_install(
    api: Api, data: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmfoundry.finetune import service

    monkeypatch.setattr(service, "missing_training_stack", lambda: ["torch", "trl"])
    response = create(api, model=MODEL, training_data=data[0])
    assert response.status_code == 503
    assert "pip install 'lmfoundry[train]'" in response.json()["error"]["message"]


def test_unknown_jobs_and_statuses(api: Api) -> None:
    assert api.get(f"{JOBS}/ftjob-nope").status_code == 404
    assert api.get(f"{JOBS}/ftjob-nope/events").status_code == 404
    assert api.post(f"{JOBS}/ftjob-nope/cancel").status_code == 404
    bad = api.get(JOBS, params={"status": "done"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
