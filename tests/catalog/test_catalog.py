"""Model cards, bundled weights and local imports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmfoundry.catalog.bundled import smollm2_path
from lmfoundry.catalog.service import CatalogService
from lmfoundry.errors import Conflict, InvalidRequest, NotFound, Unavailable
from lmfoundry.storage.db import Database

PHI3 = [
    "Phi-3-mini-4k-instruct",
    "Phi-3-mini-128k-instruct",
    "Phi-3-small-8k-instruct",
    "Phi-3-small-128k-instruct",
    "Phi-3-medium-4k-instruct",
    "Phi-3-medium-128k-instruct",
    "Phi-3.5-mini-instruct",
]


@pytest.fixture
def catalog(tmp_path: Path, database_url: str) -> CatalogService:
    db = Database(database_url)
    db.migrate()
    return CatalogService(db, tmp_path / "models")


def test_cards(catalog: CatalogService) -> None:
    cards = {c.id: c for c in catalog.list_cards()}
    assert {"SmolLM2-135M-Instruct", "gemma-3-270m", *PHI3} <= set(cards)
    smol = cards["SmolLM2-135M-Instruct"]
    assert smol.weights_present and smol.weights_path and smol.context_length == 8192
    assert smol.price_input_per_1k > 0 and smol.license == "apache-2.0"
    mini = cards["Phi-3-mini-4k-instruct"]
    assert mini.source.repo == "microsoft/Phi-3-mini-4k-instruct"
    assert mini.context_length == 4096 and mini.license == "mit"
    assert not mini.weights_present
    how = mini.how_to_get or ""
    assert "hf download microsoft/Phi-3-mini-4k-instruct --local-dir" in how
    assert "microsoft/Phi-3-mini-4k-instruct-gguf" in how  # the GGUF conversion's repo
    assert "lmfoundry catalog import PATH --id Phi-3-mini-4k-instruct" in how
    assert cards["Phi-3-medium-128k-instruct"].context_length == 131072
    assert not cards["gemma-3-270m"].instruction_tuned
    # Each card says what it answers: the GGUF engine takes tools, JSON schemas, n, logprobs.
    assert {"chat_completions", "tools", "json_schema", "n", "logprobs"} <= set(smol.capabilities)
    assert cards["all-MiniLM-L6-v2"].capabilities == ["embeddings"]


def test_absent_weights_say_how_to_get_them(catalog: CatalogService) -> None:
    with pytest.raises(Unavailable) as missing:
        catalog.resolve("Phi-3-mini-4k-instruct")
    assert "catalog import PATH --id Phi-3-mini-4k-instruct" in missing.value.message


def test_unknown_model_suggests_the_right_case(catalog: CatalogService) -> None:
    with pytest.raises(NotFound) as unknown:
        catalog.get_card("smollm2-135m-instruct")
    assert "SmolLM2-135M-Instruct" in unknown.value.message


def test_import_gguf_file(catalog: CatalogService, tmp_path: Path) -> None:
    source = smollm2_path()
    assert source is not None
    copy = tmp_path / "my-model.gguf"
    shutil.copy(source, copy)
    card = catalog.import_model(copy)
    assert card.id == "my-model" and card.engine == "llamacpp" and card.weights_present
    assert card.context_length == 8192 and card.architecture == "llama"
    assert card.chat_template and "im_start" in card.chat_template
    assert catalog.resolve("my-model").path == copy
    with pytest.raises(Conflict):
        catalog.import_model(copy)
    copy.unlink()
    assert not catalog.get_card("my-model").weights_present


def test_import_supplies_a_builtin_cards_weights(catalog: CatalogService, tmp_path: Path) -> None:
    source = smollm2_path()
    assert source is not None
    card = catalog.import_model(source, "Phi-3-mini-4k-instruct")
    assert card.weights_present and card.price_input_per_1k == 0.00013  # card kept
    assert catalog.resolve("Phi-3-mini-4k-instruct").engine == "llamacpp"


def test_import_hf_folder_and_bad_paths(catalog: CatalogService, tmp_path: Path) -> None:
    folder = tmp_path / "tiny-phi3"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["Phi3ForCausalLM"], "max_position_embeddings": 4096})
    )
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    card = catalog.import_model(folder)
    assert (card.id, card.engine, card.architecture, card.context_length) == (
        "tiny-phi3",
        "transformers",
        "Phi3ForCausalLM",
        4096,
    )
    with pytest.raises(InvalidRequest):
        catalog.import_model(tmp_path / "missing.gguf")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InvalidRequest):
        catalog.import_model(tmp_path / "notes.txt")
    with pytest.raises(InvalidRequest):
        catalog.import_model(folder, "bad id!")
