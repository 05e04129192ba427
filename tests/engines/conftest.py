"""Tiny Hugging Face models for the engine tests, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_phi3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Phi-3 folder (tokenizer with Phi-3's chat template included)."""
    pytest.importorskip("transformers")
    from tests.engines.tiny_models import build_tiny_phi3

    return build_tiny_phi3(tmp_path_factory.mktemp("hf") / "tiny-phi3")


@pytest.fixture(scope="session")
def tiny_loras(tiny_phi3: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two LoRA adapters for `tiny_phi3`, with different random weights."""
    pytest.importorskip("peft")
    from tests.engines.tiny_models import build_tiny_lora

    root = tmp_path_factory.mktemp("lora")
    one = build_tiny_lora(tiny_phi3, root / "one", seed=1)
    two = build_tiny_lora(tiny_phi3, root / "two", seed=2)
    return one, two
