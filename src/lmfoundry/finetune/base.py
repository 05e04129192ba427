"""The base model a job adapts: a Hugging Face folder, used as it is, or a GGUF file,
converted once to a safetensors folder under `$LMFOUNDRY_HOME/models/converted/`
(`catalog.convert.hf_folder`; the MLflow output refers to that folder), and which of its
layers LoRA adapts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lmfoundry.catalog.convert import NotConvertible, hf_folder
from lmfoundry.finetune.config import Base

# LoRA targets per `config.model_type`: the attention projections, and for Phi-3 its fused
# qkv and gate_up projections (Phi-3 has no q_proj / k_proj / v_proj to find).
TARGET_MODULES = {
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


class UnsupportedBase(ValueError):
    """The base model cannot be fine-tuned as asked (the message says why and what to do)."""


def target_modules(model_type: str) -> list[str]:
    try:
        return TARGET_MODULES[model_type]
    except KeyError:
        raise UnsupportedBase(
            f"lmfoundry does not know which layers to adapt in a {model_type!r} model; set "
            'hyperparameters.lora_target_modules, e.g. ["q_proj", "v_proj"].'
        ) from None


def base_folder(base: Base, models_dir: Path, log: Callable[[str], None]) -> Path:
    """A Hugging Face folder holding the base model's weights and tokenizer."""
    try:
        return hf_folder(Path(base.path), base.id, models_dir, log)
    except NotConvertible as exc:
        raise UnsupportedBase(str(exc)) from None
