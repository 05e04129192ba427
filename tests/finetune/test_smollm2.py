"""The acceptance run, as a new user types it: from the bundled SmolLM2-135M-Instruct, prepare
train/test files from local parquet files with the CLI, upload them, fine-tune a few dozen
LoRA steps on the CPU through a real server, follow the job live, and see the validation loss
fall."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import start_server, stop_server
from tests.finetune.helpers import JOBS, events, output_folder
from tests.finetune.tiny import EXAMPLE_DATA

# About 2.5 minutes on an idle two-core machine; more when other work shares the cores.
pytestmark = [pytest.mark.slow, pytest.mark.train, pytest.mark.heavy, pytest.mark.timeout(1200)]


def lmfoundry(home: Path, *args: str, timeout: float = 1100) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMFOUNDRY_")}
    env.update(LMFOUNDRY_HOME=str(home), HF_DATASETS_CACHE=str(home / "hf-datasets"))
    done = subprocess.run(
        [sys.executable, "-m", "lmfoundry", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"lmfoundry {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


QUESTION = "What is a good name for a pet cat?"


TRAINED = "Which language is spoken in Brazil?"  # a question of the training data


def score(
    url: str, key: str, temperature: float, max_new_tokens: int, question: str = QUESTION
) -> str:
    """The tutorial's /score body, with the endpoint's primary key as a bearer token."""
    body = {
        "input_data": {
            "input_string": [{"role": "user", "content": question}],
            "parameters": {"temperature": temperature, "max_new_tokens": max_new_tokens},
        }
    }
    response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)
    assert response.status_code == 200, response.text
    return str(response.json()["output"])


def reference_answer(home: Path, output: Path, question: str, max_new_tokens: int) -> str:
    """What the fine-tuned model answers greedily, computed here with transformers + PEFT
    from the job's output (the converted base and the adapter), independent of lmfoundry's
    serving path."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (base,) = (home / "models" / "converted").iterdir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), output / "peft")
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
    )
    if not isinstance(ids, torch.Tensor):
        ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def write_parquet_shards(folder: Path) -> None:
    """The example rows in the layout of ultrachat_200k's parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in EXAMPLE_DATA.read_text().splitlines()]
    folder.mkdir(parents=True)
    for i, part in enumerate((rows[:40], rows[40:])):
        pq.write_table(pa.Table.from_pylist(part), folder / f"train_sft-0000{i}-of-00002.parquet")


def test_smollm2_fine_tunes_on_cpu_and_the_validation_loss_falls(tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = tmp_path / "ultrachat" / "data"
    write_parquet_shards(source)
    server = start_server(home)
    try:
        prepared = json.loads(
            lmfoundry(
                home,
                "datasets",
                "prepare",
                str(source),
                "--split",
                "train_sft",
                "--output-dir",
                str(tmp_path / "data"),
                "--upload",
                "chat",
                "--model",
                "SmolLM2-135M-Instruct",
                "--json",
            ).stdout
        )
        assert (prepared["train_rows"], prepared["test_rows"]) == (64, 16)
        assert (tmp_path / "data" / "train_data.jsonl").read_text().count("\n") == 64
        assert prepared["training_data"] == "chat-train:1"

        job = json.loads(
            lmfoundry(
                home,
                "jobs",
                "create",
                "--model",
                "SmolLM2-135M-Instruct",
                "--training-data",
                prepared["training_data"],
                "--validation-data",
                prepared["validation_data"],
                "--max-steps",
                "30",
                "--learning-rate",
                "1e-3",
                "--max-seq-length",
                "256",
                "--checkpoint-steps",
                "15",
                "--json",
            ).stdout
        )
        followed = lmfoundry(home, "jobs", "logs", job["id"], "-f").stdout
        assert "Completed. Register its model with `lmfoundry models register NAME --from-job" in (
            " ".join(followed.split())
        )
        assert "Converting SmolLM2-135M-Instruct.Q4_1.gguf" in followed  # a GGUF base

        with server.client() as http:
            done = http.get(f"{JOBS}/{job['id']}").json()
            listed = events(http, job["id"])

        # The tutorial's chain: register the job's model, deploy it to an online endpoint
        # with one instance, send it all the traffic, and call /score with the primary key.
        lmfoundry(home, "models", "register", "smol-ft", "--from-job", job["id"])
        lmfoundry(home, "endpoints", "create", "smol-ep")
        lmfoundry(
            home, "endpoints", "deploy", "smol-ep", "blue", "--model", "smol-ft:1",
            "--instance-count", "1",
        )  # fmt: skip
        lmfoundry(home, "endpoints", "traffic", "smol-ep", "blue=100")
        endpoint = json.loads(lmfoundry(home, "endpoints", "show", "smol-ep", "--json").stdout)
        key = json.loads(lmfoundry(home, "endpoints", "keys", "smol-ep", "--json").stdout)
        tutorial = score(endpoint["scoring_uri"], key["primary_key"], 0.7, 128)
        greedy = score(endpoint["scoring_uri"], key["primary_key"], 0.0, 16)
        trained = score(endpoint["scoring_uri"], key["primary_key"], 0.0, 24, TRAINED)
        # The fine-tune runs on llama.cpp's server: the base's GGUF with the job's adapter,
        # converted to a GGUF LoRA, on one llama-server process.
        with server.client() as http:
            (instance,) = [i for i in http.get("/api/v1/instances").json() if i["pid"]]
            base_key = http.get(
                "/api/v1/projects/default/serverless-deployments/smollm2-135m-instruct/keys"
            ).json()["primary_key"]
            base_url = http.get(
                "/api/v1/projects/default/serverless-deployments/smollm2-135m-instruct"
            ).json()["target_url"]
        assert psutil.Process(instance["pid"]).name() == "llama-server", instance
        base_answer = httpx.post(
            base_url + "chat/completions",
            json={
                "messages": [{"role": "user", "content": TRAINED}],
                "temperature": 0,
                "max_tokens": 24,
            },
            headers={"api-key": base_key},
            timeout=300,
        ).json()["choices"][0]["message"]["content"]
    finally:
        stop_server(server)
    assert isinstance(tutorial, str) and tutorial.strip(), tutorial
    # On the data it was trained on, the fine-tune answers in its training data's form and the
    # base does not.
    assert trained.startswith("Country facts: the language of Brazil is"), trained
    assert not base_answer.startswith("Country facts"), base_answer
    # Off the training data it answers as transformers + PEFT on the fp32 weights do, up to
    # where the quantised base's rounding tips a greedy choice (a word or so in 16 tokens).
    output = output_folder(home, done["id"])
    reference = reference_answer(home, output, QUESTION, 16).strip()
    assert greedy.split()[:4] == reference.split()[:4], (greedy, reference)
    assert (done["status"], done["step"]) == ("completed", 30), done
    validation = {e["step"]: e["validation_loss"] for e in listed if e["kind"] == "validation"}
    assert sorted(validation) == [0, 15, 30]
    assert validation[30] < 0.7 * validation[0], validation
    assert (output / "peft" / "adapter_model.safetensors").exists()
    converted = list((home / "models" / "converted").iterdir())
    assert [p.name.startswith("SmolLM2-135M-Instruct-") for p in converted] == [True]
