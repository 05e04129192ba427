"""What the dataset service answers: a dataset version and its statistics, as the API, the
SDK, the CLI and the studio show them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class RowSpread(BaseModel):
    """Min, mean and max of a per-row quantity, and its total over the dataset."""

    min: int | None
    mean: float | None = Field(description="Rounded to one decimal.")
    max: int | None
    total: int


class TokenSpread(RowSpread):
    """Tokens per conversation as one model counts them (its tokenizer and chat template)."""

    context_length: int = Field(description="The model's context, in tokens.")


class DatasetStats(BaseModel):
    """Counted once, at upload; token counts are added for each model a job trains on it."""

    messages_per_row: RowSpread
    chars_per_row: RowSpread = Field(description="Characters of message content.")
    tokens_per_row: dict[str, TokenSpread] = Field(
        description="By model id: for the model given at upload and for each base model a "
        "job trained on the dataset."
    )


class DatasetView(BaseModel):
    """One version of an uploaded, validated chat JSONL file."""

    id: str = Field(description="Stable id (ds-…); jobs accept it, NAME or NAME:VERSION.")
    name: str
    version: int = Field(description="1 for the first upload of a name, then 2, 3, …")
    project: str
    filename: str = Field(description="The uploaded file's name.")
    rows: int = Field(description="Conversations (non-blank lines).")
    size_bytes: int
    sha256: str
    stats: DatasetStats
    created_by: str
    created_at: datetime
