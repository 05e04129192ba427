"""Model conversions, each done once and cached by its input: a GGUF file to a Hugging Face
folder (for fine-tuning, ONNX builds and adapters on GGUF bases) and a PEFT LoRA adapter to a
GGUF LoRA llama-server loads (llama.cpp's own `convert_lora_to_gguf.py`).

GGUF to Hugging Face: transformers can load a GGUF file, but it dequantises it to fp32 (~30 s
for SmolLM2) and marks the model as quantised, which the Trainer refuses and `save_pretrained`
chokes on. The weights are plain fp32 by then, so the marks are cleared and the model is saved
once; every later job on the same file loads the folder in about a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from lmfoundry.errors import Unavailable
from lmfoundry.runtime import llama_server
from lmfoundry.runtime.environment import child_environment


class NotConvertible(ValueError):
    """The file is not a model this module converts (the message says what it needs)."""


def hf_folder(path: Path, model_id: str, models_dir: Path, log: Callable[[str], None]) -> Path:
    """A Hugging Face folder holding the model's weights and tokenizer: `path` itself when it
    is a folder, else the GGUF file `path` converted once (dequantised to fp32) under
    `models_dir/converted/`."""
    if path.is_dir():
        return path
    if path.suffix != ".gguf":
        raise NotConvertible(f"{path} is neither a Hugging Face folder nor a .gguf file.")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = models_dir / "converted" / f"{model_id}-{key.hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    log(f"Converting {path.name} to a safetensors folder, once (dequantised to fp32): {target}")
    _remove_stale(target.parent)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _gguf_to_hf(path, tmp)
    try:
        os.replace(tmp, target)  # atomic: a folder that exists is complete
    except OSError:  # another job converted the same file meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _gguf_to_hf(gguf: Path, out: Path) -> None:
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


def converter(name: str = "convert_lora_to_gguf.py") -> Path:
    """A converter llama.cpp ships, from the build folder beside the binary (where
    `scripts/build-llama-server` puts them); `ServerMissing` if it is not there."""
    script = llama_server.find_binary().resolve().parent / name
    if not script.is_file():
        raise llama_server.ServerMissing(
            f"llama.cpp's {name} is not beside {llama_server.find_binary()}; run "
            "`scripts/install` (its build keeps the converters), or serve the adapter on the "
            "transformers engine."
        )
    return script


def convert_lora(adapter: Path, base: Path, out: Path, timeout: float = 600.0) -> Path:
    """A PEFT LoRA adapter as a GGUF LoRA file llama-server loads, written once to `out` (a
    temporary name, then renamed: `out` never names half a file). The conversion (torch,
    transformers) runs in a child process with a time limit, never in the server; `base` is
    the Hugging Face folder the adapter was trained on."""
    if out.is_file():
        return out
    script = converter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    command = [
        sys.executable, str(script), "--base", str(base), "--outfile", str(tmp),
        "--outtype", "f32", str(adapter),
    ]  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="lmf-convert-") as scratch:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=child_environment(Path(scratch)),  # none of the server's secrets
            )
    except subprocess.TimeoutExpired as exc:
        tmp.unlink(missing_ok=True)
        raise Unavailable(
            f"Converting the adapter {adapter.name} to GGUF took over {timeout:.0f} s."
        ) from exc
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise Unavailable(
            f"llama.cpp's converter could not turn the adapter {adapter.name} into a GGUF "
            f"LoRA: {llama_server.error_line(done.stderr + done.stdout)}"
        )
    os.replace(tmp, out)
    return out
