"""What the Responses API's stored responses are read back as: the Response object, its input
items, and the answer to a delete (OpenAI's shapes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class ResponseObject(BaseModel):
    """A Response as the Responses API answers it and as it is stored. The request's echoed
    settings (`instructions`, `tools`, `text`, `store`, ...) ride along as extra fields."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None
    status: str  # completed, incomplete or failed
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    model: str
    output: list[dict[str, Any]]  # message and function_call items
    usage: dict[str, Any] | None


class InputItems(BaseModel):
    """`GET v1/responses/{id}/input_items`: the items the response was asked with."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool = False


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
