"""`lmfoundry datasets prepare`: train/test JSONL from local parquet or JSONL files with a split
expression, as the tutorial's download_dataset.py does from the hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmfoundry.errors import InvalidRequest

EXAMPLE = Path(__file__).parents[2] / "examples" / "finetune" / "data" / "chat.jsonl"

pytestmark = [pytest.mark.slow, pytest.mark.train]  # imports `datasets`


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def shards(folder: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:50]), folder / "train_sft-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[50:]), folder / "train_sft-00001-of-00002.parquet")
    return folder


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_local_parquet_with_a_split_expression(tmp_path: Path) -> None:
    from lmfoundry.datasets.prepare import prepare

    source = shards(tmp_path / "data")
    first = prepare(str(source), tmp_path / "out", split="train_sft[:50%]", seed=7)
    assert (first.source_rows, first.train_rows, first.test_rows) == (40, 32, 8)
    train = lines(first.train_path)
    assert set(train[0]) == {"prompt", "prompt_id", "messages"}  # ultrachat's columns, kept
    again = prepare(str(source), tmp_path / "again", split="train_sft[:50%]", seed=7)
    assert again.train_path.read_text() == first.train_path.read_text()  # the seed decides
    test_ids = {row["prompt_id"] for row in lines(first.test_path)}
    assert test_ids.isdisjoint(row["prompt_id"] for row in train)


def test_a_local_jsonl_file_and_bad_inputs(tmp_path: Path) -> None:
    from lmfoundry.datasets.prepare import prepare

    prepared = prepare(str(EXAMPLE), tmp_path / "out", test_fraction=0.25)
    assert (prepared.train_rows, prepared.test_rows) == (60, 20)
    assert prepared.train_path.name == "train_data.jsonl"
    assert prepared.test_path.name == "test_data.jsonl"

    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(InvalidRequest, match="no `messages` column"):
        prepare(str(other), tmp_path / "x")
    with pytest.raises(InvalidRequest, match="test_fraction"):
        prepare(str(EXAMPLE), tmp_path / "x", test_fraction=1.5)
    with pytest.raises(InvalidRequest, match="Invalid split"):
        prepare(str(EXAMPLE), tmp_path / "x", split="[:10]")


def test_a_hub_id_without_network_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    env = {k: v for k, v in env.items() if not k.startswith("LMFOUNDRY_")}
    env["LMFOUNDRY_HOME"] = str(tmp_path / "home")
    command = [sys.executable, "-m", "lmfoundry", "datasets", "prepare"]
    command += ["HuggingFaceH4/ultrachat_200k", "--config", "default"]
    command += ["--split", "train_sft[:1%]", "--output-dir", str(tmp_path)]
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Could not load 'HuggingFaceH4/ultrachat_200k'" in done.stderr
    assert "pass their folder" in " ".join(done.stderr.split())  # Rich wraps lines
