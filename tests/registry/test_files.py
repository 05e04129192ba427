"""What the registry recognises in a folder before it copies or serves it: model references,
the five model layouts, and chat templates that would hang or bloat rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmfoundry.errors import InvalidRequest
from lmfoundry.registry.service import check_chat_templates, inspect_folder, parse_ref


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("my-model", ("my-model", None)),
        ("my-model:3", ("my-model", 3)),
        ("azureml:my-model:12", ("my-model", 12)),  # as Azure ML writes references
    ],
)
def test_references(ref: str, parsed: tuple[str, int | None]) -> None:
    assert parse_ref(ref) == parsed


def test_a_version_that_is_not_a_number_names_the_fix() -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_ref("my-model:latest")
    assert refused.value.param == "model" and "my-model:2" in refused.value.message


def _json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def test_each_layout_is_recognised(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    _json(hf / "config.json", {"model_type": "llama"})
    assert inspect_folder(hf).format == "hf" and not inspect_folder(hf).adapter

    peft = tmp_path / "peft"
    _json(peft / "adapter_config.json", {"base_model_name_or_path": "SmolLM2-135M-Instruct"})
    found = inspect_folder(peft)
    assert (found.format, found.adapter, found.base_model) == (
        "peft",
        True,
        "SmolLM2-135M-Instruct",
    )

    mlflow = tmp_path / "mlflow"
    (mlflow / "MLmodel").parent.mkdir()
    (mlflow / "MLmodel").write_text("flavors: {}\n")
    _json(mlflow / "peft" / "adapter_config.json", {"base_model_name_or_path": "x"})
    _json(mlflow / "lineage.json", {"base_model": "SmolLM2-135M-Instruct"})
    found = inspect_folder(mlflow)
    assert (found.format, found.weights, found.adapter) == ("mlflow", mlflow / "peft", True)
    assert found.base_model == "SmolLM2-135M-Instruct"  # the lineage wins over the adapter's

    onnx = tmp_path / "onnx"
    _json(onnx / "genai_config.json", {})
    assert inspect_folder(onnx).format == "onnx"

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert inspect_folder(gguf).format == "gguf"


def test_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no weights here")
    with pytest.raises(InvalidRequest, match="holds no model") as refused:
        inspect_folder(tmp_path)
    assert refused.value.param == "path"
    with pytest.raises(InvalidRequest, match="neither a model folder"):
        inspect_folder(tmp_path / "notes.txt")


def test_a_chat_template_that_does_not_parse_is_refused_with_its_file(tmp_path: Path) -> None:
    _json(tmp_path / "config.json", {"model_type": "llama"})
    _json(tmp_path / "tokenizer_config.json", {"chat_template": "{% for m in messages %}"})
    with pytest.raises(InvalidRequest) as refused:
        check_chat_templates(tmp_path)
    assert "tokenizer_config.json" in refused.value.message
    assert "register the model again" in refused.value.message


def test_a_good_chat_template_passes(tmp_path: Path) -> None:
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    _json(tmp_path / "tokenizer_config.json", {"chat_template": template})
    (tmp_path / "chat_template.jinja").write_text(template)
    check_chat_templates(tmp_path)  # no error
