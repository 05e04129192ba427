"""Embeddings: `{target}embeddings` (Azure AI model inference) and `{target}v1/embeddings`
(OpenAI), on an embeddings model such as the bundled all-MiniLM-L6-v2.

A request reads top to bottom in `EmbeddingsService.embed`: parse the body, check the model
is an embeddings model, count each input's tokens with the gateway's tokenizer (the same
llama.cpp vocabulary llama-server evaluates: the token ids are what is sent), refuse inputs
longer than the model's context, reserve the total of the inputs' tokens, run on an
instance's embeddings mode, settle the reservation to that total and write one usage record
(prompt tokens = input tokens, no completion tokens). The response's `usage` is the same
number, so the usage report equals the sum of the responses' usage.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmfoundry.catalog.service import ResolvedModel
from lmfoundry.engines.capabilities import supports
from lmfoundry.errors import InvalidRequest, LmfError
from lmfoundry.metering.service import Usage
from lmfoundry.observability import logs, tracing
from lmfoundry.quotas.service import Grant
from lmfoundry.serving.checks import Reply, context_chars, extra_mode, status_of
from lmfoundry.serving.gateway import Admission, Gateway
from lmfoundry.serving.wire import (
    IGNORED_HEADER,
    ExtraMode,
    json_object,
    unsupported,
    validation_error,
)

MAX_INPUTS = 2048  # inputs in one request, as OpenAI's embeddings API allows
ENCODINGS = ("float", "base64")


class EmbeddingsRequest(BaseModel):
    """The body both routes take: Azure's (`input`, `dimensions`, `encoding_format`,
    `input_type`, `model`) and OpenAI's (`input`, `model`, `dimensions`,
    `encoding_format`, `user`)."""

    model_config = ConfigDict(extra="allow")

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text or a list of texts to embed."
    )
    model: str | None = None
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64", "binary", "int8", "ubinary", "uint8"] | None = None
    input_type: Literal["text", "query", "document"] | None = None
    user: str | None = None

    @classmethod
    def parse(cls, body: bytes, extra: ExtraMode) -> Self:
        data = json_object(body)
        try:
            request = cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from exc
        unknown = sorted((request.model_extra or {}).keys())
        if unknown and extra == "error":
            raise InvalidRequest(
                f"Unknown parameter(s): {', '.join(unknown)}. Remove them, or send the header "
                "`extra-parameters: drop` to ignore them.",
                param=unknown[0],
            )
        return request

    def ignored_parameters(self, extra: ExtraMode) -> list[str]:
        """Extras an embeddings model takes none of: ignored with `drop` or `pass-through`."""
        return sorted((self.model_extra or {}).keys()) if extra != "error" else []

    def texts(self) -> list[str]:
        """The inputs, in order; a 422 for token-id inputs, a 400 for empty ones."""
        items: list[Any] = [self.input] if isinstance(self.input, str) else list(self.input)
        if not items:
            raise InvalidRequest("input: give at least one text to embed.", param="input")
        if not all(isinstance(item, str) for item in items):
            raise unsupported(
                self,
                "input",
                "input: token ids are not taken; send the text (a string or a list of "
                "strings), which the model's own tokenizer splits.",
            )
        texts = [str(item) for item in items]
        if len(texts) > MAX_INPUTS:
            raise InvalidRequest(
                f"input: {len(texts)} texts, but a request may embed at most {MAX_INPUTS}; "
                "split them over several requests.",
                param="input",
            )
        for index, text in enumerate(texts):
            if not text.strip():
                raise InvalidRequest(
                    f"input[{index}] is empty; every input must have some text.",
                    param=f"input[{index}]",
                )
        return texts

    def check_supported(self, model: ResolvedModel) -> None:
        card = model.card
        if self.dimensions is not None and self.dimensions != card.dimensions:
            raise unsupported(
                self,
                "dimensions",
                f"dimensions: {card.id} makes {card.dimensions}-dimensional embeddings and "
                f"cannot shorten them; send dimensions={card.dimensions} or leave it out.",
            )
        if self.encoding_format not in (None, *ENCODINGS):
            raise unsupported(
                self,
                "encoding_format",
                f"encoding_format: {self.encoding_format!r} is not served; use float or "
                "base64 (little-endian float32).",
            )


@dataclass
class Admitted:
    """An embeddings request that passed admission: its inputs' token ids and what it
    reserved."""

    request: EmbeddingsRequest
    inputs: list[list[int]]
    tokens: int
    grant: Grant
    started: float = field(default_factory=time.perf_counter)


class EmbeddingsService:
    """Admission, the run and metering of embeddings requests, over the gateway's
    tokenizers, quotas and metering."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def embed(self, admission: Admission) -> Reply:
        """Parse, admit, run and meter one request of an authenticated caller. Not mirrored:
        a mirror compares answers, and an embedding has one."""
        started = time.perf_counter()
        target, served = admission.target, admission.served
        logs.note_target(target, served.deployment, admission.key_slot)
        try:
            with tracing.span("admission"):
                admitted = await self.admit(admission)
        except LmfError as exc:
            admission.headers.update(await self.gateway.quotas.headers(target.quota))
            await self.gateway.refused(admission, exc, started)
            raise
        headers = {**admitted.grant.headers, "azureml-model-deployment": served.deployment}
        ignored = admitted.request.ignored_parameters(extra_mode(admission.extra_parameters))
        if ignored:
            headers[IGNORED_HEADER] = ",".join(ignored)
        admission.headers.update(headers)  # an engine's error is sent with them too
        record = admission.usage()
        used, status = 0, 200
        try:
            with tracing.span("instance", **{"lmfoundry.model": record.model}):
                vectors = await served.group.embed(admitted.inputs)
            used = admitted.tokens
        except BaseException as exc:
            status = status_of(exc)
            raise
        finally:
            await self._finish(admission, admitted, record, used, status)
        encoding = admitted.request.encoding_format or "float"
        body = response_body(served.model.card.id, vectors, admitted.tokens, encoding)
        return Reply(headers=headers, body=body)

    async def admit(self, admission: Admission) -> Admitted:
        """Check the request and the model, count every input's tokens, reserve them."""
        target, model = admission.target, admission.served.model
        extra = extra_mode(admission.extra_parameters)
        request = EmbeddingsRequest.parse(admission.body, extra)
        model.card.require_type("embeddings")
        if not supports(model.engine, "embeddings"):
            raise InvalidRequest(
                f"The {model.engine} engine does not compute embeddings; serve "
                f"{model.card.id} as GGUF (llamacpp).",
                param="model",
            )
        request.check_supported(model)
        texts = request.texts()
        _check_characters(texts, model)  # before any tokenising
        tokenizer = await self.gateway.tokenizer(model)
        inputs = await asyncio.to_thread(lambda: [tokenizer.encode(t) for t in texts])
        tokens = _check_lengths(inputs, model)
        limits = target.limits
        if tokens > limits.tokens_per_minute:
            raise InvalidRequest(
                f"input: this request is {tokens} tokens but {target.name!r} allows "
                f"{limits.tokens_per_minute} tokens per minute; send fewer texts or raise "
                "the deployment's tokens_per_minute.",
                param="input",
            )
        with tracing.span("quota", **{"lmfoundry.quota.limit": "tokens"}):
            # one window counts the request and its tokens
            grant = await self.gateway.quotas.reserve_tokens(target.quota, tokens, admission.claim)
        return Admitted(request, inputs, tokens, grant)

    async def _finish(
        self, admission: Admission, admitted: Admitted, record: Usage, used: int, status: int
    ) -> None:
        """Settle the reservation to the tokens embedded and write the usage record."""
        record.prompt_tokens = used
        record.status_code = status
        record.latency_ms = (time.perf_counter() - admitted.started) * 1000
        logs.note_usage(record)
        with tracing.span("settlement", **tracing.tokens(used, 0, status)):
            await self.gateway.metering.record(record)
            await self.gateway.metrics.settled(record)
            await self.gateway.quotas.settle_tokens(
                admission.target.quota, admitted.grant.reservation, used
            )


def _check_characters(texts: list[str], model: ResolvedModel) -> None:
    """A 400 naming the first input too long in characters to fit the context, cheaply."""
    context = model.card.context_length
    for i, text in enumerate(texts):
        if len(text) > context_chars(context):
            raise InvalidRequest(
                f"input[{i}] is {len(text):,} characters, more than {model.card.id} reads in "
                f"its context of {context} tokens per input (at most "
                f"{context_chars(context):,} characters); shorten it or split it.",
                param=f"input[{i}]",
            )


def _check_lengths(inputs: list[list[int]], model: ResolvedModel) -> int:
    """The inputs' total tokens; a 400 naming the first input longer than the context."""
    context = model.card.context_length
    for index, tokens in enumerate(inputs):
        if len(tokens) > context:
            raise InvalidRequest(
                f"input[{index}] is {len(tokens)} tokens but {model.card.id} embeds at most "
                f"{context} tokens per input; shorten it or split it into several inputs.",
                param=f"input[{index}]",
            )
    return sum(len(tokens) for tokens in inputs)


def response_body(
    model: str, vectors: list[list[float]], tokens: int, encoding: str
) -> dict[str, Any]:
    """One body for both APIs: Azure's EmbeddingsResult (`id`, `data`, `usage`, `model`)
    is OpenAI's CreateEmbeddingResponse plus an `id`."""
    return {
        "id": "embd-" + uuid.uuid4().hex,
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(v, encoding)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what OpenAI's client asks for by default and decodes
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector
