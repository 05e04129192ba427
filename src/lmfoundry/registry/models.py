"""What the model registry answers: a registered model version and its lineage, as the API,
the SDK, the CLI and the studio show them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class ModelVersionView(BaseModel):
    """One numbered version of a registered model. Deployments name it `name:version`."""

    name: str
    version: int = Field(description="1 for the first registration of a name, then 2, 3, …")
    format: str = Field(description="mlflow, hf, peft, gguf or onnx.")
    adapter: bool = Field(description="A LoRA adapter, served on its base model.")
    base_model: str | None = Field(description="The catalog model an adapter adapts.")
    job_id: str | None = Field(description="The fine-tuning job that produced it.")
    lineage: dict[str, Any] = Field(
        description="Where it came from: the folder's lineage.json and, for a job's output, "
        "job_id, base_model, training_data, validation_data, hyperparameters and metrics."
    )
    tags: dict[str, str]
    description: str
    created_by: str
    created_at: datetime
