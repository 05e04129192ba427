"""Build an ONNX Runtime GenAI folder (what the `onnx` engine serves) from a model's weights,
offline, with onnxruntime-genai's model builder.

    lmfoundry catalog build-onnx SmolLM2-135M-Instruct       # a catalog model, or a local path

The builder reads a Hugging Face folder (safetensors; it reads GGUF only at f16/f32), so a
GGUF file such as the bundled SmolLM2's Q4_1 is first dequantised to a safetensors folder by
the same code fine-tuning jobs use (`catalog.convert.hf_folder`, cached under
`$LMFOUNDRY_HOME/models/converted/`, so a later job or build reuses it). The builder runs in
its own process (it loads the whole model in torch, then quantises it) and writes to a
temporary folder that is renamed into place when complete: a folder that exists is whole.

It needs torch and transformers (the `train` extra) and onnx / onnx-ir (the `onnx-build`
extra); serving the result needs only the `onnx` extra.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from lmfoundry.errors import Conflict, InvalidRequest, Unavailable

PRECISIONS = ("int4", "int8", "fp16", "fp32")
BUILDER = "onnxruntime_genai.models.builder"
# import name -> what to install
BUILD_DEPS = {
    "onnxruntime_genai": "lmfoundry[onnx-build]",
    "onnx": "lmfoundry[onnx-build]",
    "onnx_ir": "lmfoundry[onnx-build]",
    "torch": "lmfoundry[train]",
    "transformers": "lmfoundry[train]",
}


def check_build_deps() -> None:
    missing = [m for m in BUILD_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        extras = sorted({BUILD_DEPS[m] for m in missing})
        raise Unavailable(
            f"Building ONNX models needs {', '.join(missing)}; install them with "
            + " and ".join(f"`pip install '{e}'`" for e in extras)
            + " (install torch==2.13.0 first for the CPU build)."
        )


def build_onnx(
    source: Path,
    output: Path,
    *,
    model_id: str,
    models_dir: Path,
    precision: str = "int4",
    chat_template: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Write an ONNX Runtime GenAI folder for `source` (a Hugging Face folder or a .gguf
    file) to `output` and return it.

    `chat_template` is written to the folder when its tokenizer has none (a catalog card's
    own template, as gemma-3-270m's); `models_dir` holds the dequantised copy of a GGUF."""
    if precision not in PRECISIONS:
        raise InvalidRequest(
            f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.",
            param="precision",
        )
    source = source.expanduser().resolve()
    output = output.expanduser().resolve()
    if output.exists():
        raise Conflict(
            f"{output} already exists; remove it or pass another --output to build again."
        )
    check_build_deps()
    folder = _hf_folder(source, model_id, models_dir, log)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    cache = output.with_name(f"{output.name}.cache-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    command = [
        sys.executable, "-m", BUILDER, "-i", str(folder), "-o", str(tmp),
        "-p", precision, "-e", "cpu", "-c", str(cache),
    ]  # fmt: skip
    log(f"Building {precision} ONNX from {folder} (onnxruntime-genai's model builder) ...")
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not (tmp / "genai_config.json").is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
            raise InvalidRequest(
                f"onnxruntime-genai's model builder could not convert {folder.name} "
                f"(exit {done.returncode}):\n" + "\n".join(tail),
                param="source",
            )
        if chat_template and not (tmp / "chat_template.jinja").exists():
            from lmfoundry.engines.onnx import chat_template_in

            if chat_template_in(tmp) is None:
                (tmp / "chat_template.jinja").write_text(chat_template)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    log(f"Built {output}")
    return output


def _hf_folder(source: Path, model_id: str, models_dir: Path, log: Callable[[str], None]) -> Path:
    if source.is_dir() and (source / "config.json").is_file():
        return source
    if source.is_file() and source.suffix == ".gguf":
        from lmfoundry.catalog.convert import hf_folder

        return hf_folder(source, model_id, models_dir, log)
    raise InvalidRequest(
        f"{source} is neither a Hugging Face model folder (with config.json) nor a .gguf "
        "file; give one of those, or a catalog model whose weights are present.",
        param="source",
    )
