"""A job's output: an MLflow model folder (transformers flavour, task llm/v1/chat).

    model/
      MLmodel                 flavours transformers + python_function; metadata.lmfoundry
                              holds the lineage (base model, datasets, hyperparameters, metrics)
      peft/                   the LoRA adapter: adapter_config.json, adapter_model.safetensors
      components/tokenizer/   the tokenizer, with the chat template the job trained on
      lineage.json            the same lineage, for readers without an MLflow parser
      requirements.txt, python_env.yaml, conda.yaml

The base weights are not copied: MLmodel's `source_model_name` names the base folder (for a
GGUF base, the converted folder under $LMFOUNDRY_HOME/models/converted/), from which
`mlflow.transformers.load_model` loads them before applying the adapter. Written to a
temporary folder and renamed into place, so `output_path` never names a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

TASK = "llm/v1/chat"


def save_mlflow_model(
    model: Any, tokenizer: Any, base_dir: Path, output_dir: Path, lineage: dict[str, Any]
) -> Path:
    import mlflow.transformers

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    mlflow.transformers.save_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        path=str(tmp),
        task=TASK,
        base_model_path=str(base_dir),
        metadata={"lmfoundry": lineage},
        # Listed, not inferred: inference would load the model again in a subprocess.
        pip_requirements=[
            f"{package}=={version(package)}"
            for package in ("mlflow-skinny", "torch", "transformers", "peft", "accelerate")
        ],
    )
    (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, default=str))
    if output_dir.exists():  # an earlier attempt got this far before it died
        shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)
    return output_dir
