"""The base model a job adapts: a Hugging Face folder, used as it is, or a GGUF file,
converted once to a safetensors folder under `$LMFOUNDRY_HOME/models/converted/`.

transformers can load a GGUF file, but it dequantises it to fp32 (~30 s for SmolLM2) and marks
the model as quantised, which the Trainer refuses and `save_pretrained` chokes on. The weights
are plain fp32 by then, so the marks are cleared and the model is saved once; every later job
on the same file loads the folder in about a second, and the MLflow output refers to it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

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
    path = Path(base.path)
    if path.is_dir():
        return path
    if path.suffix != ".gguf":
        raise UnsupportedBase(f"{path} is neither a Hugging Face folder nor a .gguf file.")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = models_dir / "converted" / f"{base.id}-{key.hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    log(f"Converting {path.name} to a safetensors folder, once (dequantised to fp32): {target}")
    _remove_stale(target.parent)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert(path, tmp)
    try:
        os.replace(tmp, target)  # atomic: a folder that exists is complete
    except OSError:  # another job converted the same file meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # Loaded from GGUF, the model says it is quantised; its weights are plain fp32 now.
    for mark, value in (
        ("hf_quantizer", None),
        ("quantization_method", None),
        ("is_quantized", False),
    ):
        if hasattr(model, mark):
            setattr(model, mark, value)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _remove_stale(folder: Path) -> None:
    """Half-written conversions of processes that are gone (killed while converting)."""
    if not folder.is_dir():
        return
    for tmp in folder.glob("*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
