"""The legacy completions API (`{target}v1/completions`): a prompt in, text out, no chat
template. Admitted, metered and run as chat completions are; only the prompt and the
answer's shape differ."""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import Field, field_validator

from lmfoundry.engines.base import Delta, Tokenizer
from lmfoundry.errors import InvalidRequest
from lmfoundry.serving import wire
from lmfoundry.serving.answers import Choice, event

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this API
MAX_LOGPROBS = 5  # OpenAI's limit for `logprobs` here


class CompletionsRequest(wire.GenerationParameters):
    """`POST {target}v1/completions` (and `{target}completions`)."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)  # type: ignore[assignment]
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request (a string, or a list of one string)")
        return value

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def check_api(self) -> None:
        if self.suffix:
            raise wire.unsupported(
                self,
                "suffix",
                "Inserting text before a suffix is not supported; leave out `suffix`.",
            )
        if self.best_of not in (None, 1, self.n or 1):
            raise wire.unsupported(
                self, "best_of", "best_of is not supported; use `n` for several choices."
            )
        if self.echo and self.logprobs is not None:
            raise wire.unsupported(
                self,
                "echo",
                "The prompt's log probabilities are not returned; drop `echo` or `logprobs`.",
            )

    def prompt_chars(self) -> int:
        return len(self.text)

    def prompt_text(self, tokenizer: Tokenizer) -> str:
        if not self.text:
            raise InvalidRequest("prompt: must not be empty.", param="prompt")
        return self.text

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    def answer(self, model: str) -> CompletionAnswer:
        return CompletionAnswer(model, self.choices, self.text if self.echo else "", self.logprobs)


class CompletionAnswer:
    """`text_completion` bodies and streams."""

    def __init__(self, model: str, n: int, echo: str, logprobs: int | None) -> None:
        self.id = "cmpl-" + uuid.uuid4().hex
        self.model, self.n, self.echo, self.logprobs = model, n, echo, logprobs
        self.created = int(time.time())

    def _body(
        self, choices: list[dict[str, Any]], usage_: dict[str, int] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage_ is not None:
            body["usage"] = usage_
        return body

    def _logprobs(self, entries: list[dict[str, Any]] | None, offset: int) -> dict[str, Any] | None:
        if self.logprobs is None:
            return None
        entries = entries or []
        offsets = []
        for entry in entries:
            offsets.append(offset)
            offset += len(entry["token"])
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [
                {t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries
            ],
            "text_offset": offsets,
        }

    def body(self, choices: list[Choice], usage_: dict[str, int]) -> dict[str, Any]:
        return self._body(
            [
                {
                    "text": self.echo + c.text,
                    "index": i,
                    "logprobs": self._logprobs(c.logprobs, len(self.echo)),
                    "finish_reason": c.finish or "stop",
                }
                for i, c in enumerate(choices)
            ],
            usage_,
        )

    def stream(self) -> CompletionStream:
        return CompletionStream(self)


class CompletionStream:
    def __init__(self, answer: CompletionAnswer) -> None:
        self.answer = answer
        self._offsets = [len(answer.echo)] * answer.n
        self._finished: dict[int, str] = {}

    def _chunk(
        self,
        index: int,
        text: str,
        logprobs: Any = None,
        finish: str | None = None,
        usage_: dict[str, int] | None = None,
    ) -> bytes:
        choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
        return event(self.answer._body([choice], usage_))

    def start(self) -> bytes:
        if not self.answer.echo:
            return b""
        return b"".join(self._chunk(i, self.answer.echo) for i in range(self.answer.n))

    def delta(self, delta: Delta) -> bytes:
        if delta.finish_reason:
            self._finished[delta.index] = delta.finish_reason
        if not delta.text and not delta.logprobs:
            return b""
        logprobs = self.answer._logprobs(delta.logprobs, self._offsets[delta.index])
        self._offsets[delta.index] += len(delta.text)
        return self._chunk(delta.index, delta.text, logprobs)

    def end(self, usage_: dict[str, int]) -> bytes:
        indexes = sorted(self._finished) or [0]
        out = b""
        for i in indexes:  # the last one carries the usage
            last = i == indexes[-1]
            out += self._chunk(i, "", None, self._finished.get(i, "stop"), usage_ if last else None)
        return out
