"""What the gateway checks and hands back around a request, apart from running it: the
generating APIs' request classes, a prompt's characters against the context (before any
rendering), the `extra-parameters` header, the status a failed request ends with, and the
reply the routes render."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmfoundry.errors import InvalidRequest, LmfError
from lmfoundry.serving import wire
from lmfoundry.serving.completions import CompletionsRequest

if TYPE_CHECKING:
    from lmfoundry.catalog.service import ResolvedModel

InferenceRequest = wire.ChatCompletionsRequest | CompletionsRequest
# The generating APIs, by the name the routers give: each request class parses its body and
# makes its answer; admission, quota, the run and metering are the same for all.
APIS: dict[str, type[InferenceRequest]] = {
    "chat": wire.ChatCompletionsRequest,
    "completions": CompletionsRequest,
}

# A token is rarely more than 16 characters (the longest merges are runs of spaces or
# symbols); a prompt with more than this many per token of context cannot fit it.
MAX_CHARS_PER_TOKEN = 64


def context_chars(context: int) -> int:
    """Characters past which a prompt cannot fit `context` tokens."""
    return context * MAX_CHARS_PER_TOKEN


def check_characters(request: InferenceRequest, model: ResolvedModel, context: int) -> None:
    chars = request.prompt_chars()
    if chars > context_chars(context):
        raise InvalidRequest(
            f"messages: the prompt is {chars:,} characters, more than {model.card.id} can "
            f"read in its context of {context} tokens (at most {context_chars(context):,} "
            "characters); shorten the messages.",
            param="messages",
        )


def status_of(exc: BaseException) -> int:
    if isinstance(exc, LmfError):
        return exc.status_code
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return 499  # client closed the request
    return 500


@dataclass
class Reply:
    """What the data plane answers: a finished body, or a stream of server-sent events, and
    the headers to send."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None


def extra_mode(header: str | None) -> wire.ExtraMode:
    value = (header or "error").strip().lower()
    if value not in ("error", "drop", "pass-through"):
        raise InvalidRequest(
            f"extra-parameters header must be error, drop or pass-through, not {header!r}.",
            param="extra-parameters",
        )
    return value  # type: ignore[return-value]
