"""The environment of instance and job processes: built from scratch, never inherited.

The server's environment may hold LMFOUNDRY_MASTER_KEY, LMFOUNDRY_ADMIN_TOKEN, a database or
Redis URL with its password and cloud credentials; an instance (llama-server, a Python
worker, a Ray replica's llama-server) or a fine-tuning job needs none of them. A child gets
the variables below that say where programs, libraries, locales, devices and caches are,
a HOME and TMPDIR of its own, and what its caller adds explicitly for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# Where things are and how to run them; none of these holds a secret.
INHERITED = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "LD_LIBRARY_PATH",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    # threads of the math libraries
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
    # devices
    "CUDA_VISIBLE_DEVICES",
    "CUDA_HOME",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    # model caches and offline switches (never HF_TOKEN)
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TRANSFORMERS_CACHE",
    # the llama-server binary an operator chose (a path)
    "LMFOUNDRY_LLAMA_SERVER",
    # coverage of child processes in the test suite
    "COVERAGE_PROCESS_START",
)


def child_environment(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a child whose own folder is `home` (made here): HOME and
    TMPDIR inside it, the variables in INHERITED that the server has, then `extra`."""
    tmp = home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {k: os.environ[k] for k in INHERITED if k in os.environ}
    # A new HOME must not hide the model cache the server's user already has.
    env.setdefault("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    env.update({"HOME": str(home), "TMPDIR": str(tmp)})
    env.update(extra or {})
    return env
