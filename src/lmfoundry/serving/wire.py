"""Wire models of the Azure AI model inference API (and its OpenAI-compatible twin).

Requests own their conversion to engine parameters (`to_sampling_params`); validation
errors become a 400 naming the field; valid parameters a model cannot honour become a 422
with `detail.loc`, as Azure answers.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmfoundry.engines.base import SamplingParams
from lmfoundry.errors import InvalidRequest, Unprocessable

ExtraMode = Literal["error", "drop", "pass-through"]

# Parameters an engine understands when the caller sends `extra-parameters: pass-through`.
PASS_THROUGH = {"top_k", "min_p", "repeat_penalty"}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ToolCallFunction(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = True


class ChatCompletionsRequest(BaseModel):
    """`POST {target}chat/completions` and `{target}v1/chat/completions`."""

    model_config = ConfigDict(extra="allow")

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 16 or any(not s for s in stops):
            raise ValueError("give at most 16 non-empty stop sequences")
        return stops

    # -- parsing -----------------------------------------------------------------------------

    @classmethod
    def parse(cls, body: bytes, extra: ExtraMode) -> ChatCompletionsRequest:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequest(
                f"The request body is not valid JSON ({exc}); send a JSON object with `messages`.",
                param="body",
            ) from exc
        if not isinstance(data, dict):
            raise InvalidRequest(
                "The request body must be a JSON object with `messages`.", param="body"
            )
        try:
            request = cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from exc
        request._check_extra(extra)
        return request

    def _check_extra(self, extra: ExtraMode) -> None:
        unknown = sorted((self.model_extra or {}).keys())
        if not unknown:
            return
        if extra == "error":
            raise InvalidRequest(
                f"Unknown parameter(s): {', '.join(unknown)}. Remove them, or send the header "
                "`extra-parameters: pass-through` to hand them to the model "
                "(or `drop` to ignore them).",
                param=unknown[0],
            )
        if extra == "pass-through":
            unsupported = [name for name in unknown if name not in PASS_THROUGH]
            if unsupported:
                raise Unprocessable(
                    f"The model does not accept the extra parameter {unsupported[0]!r}; "
                    f"pass-through parameters it takes: {', '.join(sorted(PASS_THROUGH))}.",
                    param=unsupported[0],
                    detail={
                        "loc": ["body", unsupported[0]],
                        "input": (self.model_extra or {})[unsupported[0]],
                    },
                )

    def pass_through(self, extra: ExtraMode) -> dict[str, Any]:
        if extra != "pass-through":
            return {}
        return dict(self.model_extra or {})

    # -- conversion --------------------------------------------------------------------------

    def chat_messages(self) -> list[dict[str, Any]]:
        out = []
        for index, message in enumerate(self.messages):
            if isinstance(message.content, list):
                for part in message.content:
                    if part.type != "text":
                        raise Unprocessable(
                            f"messages[{index}] has a {part.type!r} content part; this model "
                            "reads text only.",
                            param=f"messages[{index}].content",
                            detail={
                                "loc": ["body", "messages", index, "content"],
                                "input": part.type,
                            },
                        )
            item: dict[str, Any] = {"role": message.role, "content": message.text()}
            if message.role == "developer":
                item["role"] = "system"
            if message.name:
                item["name"] = message.name
            out.append(item)
        return out

    def completion_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def check_supported(self, supports_tools: bool, supports_grammar: bool) -> None:
        def unsupported(field: str, message: str) -> Unprocessable:
            return Unprocessable(
                message,
                param=field,
                detail={
                    "loc": ["body", field],
                    "input": getattr(self, field)
                    if not isinstance(getattr(self, field), BaseModel)
                    else getattr(self, field).model_dump(),
                },
            )

        if self.n not in (None, 1):
            raise unsupported(
                "n",
                "Only one choice per request is supported; send n=1 "
                "(or leave it out) and repeat the request for more.",
            )
        if self.logprobs:
            raise unsupported("logprobs", "This deployment does not return log probabilities.")
        if self.tools and not supports_tools:
            raise unsupported(
                "tools",
                "This model's chat template has no tool support; "
                "remove `tools` or deploy a model that supports them.",
            )
        if self.response_format and self.response_format.type != "text" and not supports_grammar:
            raise unsupported(
                "response_format",
                "This engine cannot constrain output to JSON; use response_format text.",
            )

    def to_sampling_params(self, max_tokens: int, extra: ExtraMode) -> SamplingParams:
        params = SamplingParams(max_tokens=max_tokens)
        if self.temperature is not None:
            params.temperature = self.temperature
        if self.top_p is not None:
            params.top_p = self.top_p
        if self.seed is not None:
            params.seed = self.seed
        if self.stop:
            params.stop = list(self.stop)
        if self.presence_penalty is not None:
            params.presence_penalty = self.presence_penalty
        if self.frequency_penalty is not None:
            params.frequency_penalty = self.frequency_penalty
        if self.response_format is not None and self.response_format.type != "text":
            params.grammar = json_grammar(self.response_format)
        for name, value in self.pass_through(extra).items():
            expected = type(getattr(params, name))
            try:
                setattr(params, name, expected(value))
            except (TypeError, ValueError) as exc:
                raise InvalidRequest(f"{name} must be a {expected.__name__}", param=name) from exc
        return params


def json_grammar(response_format: ResponseFormat) -> str:
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if response_format.type == "json_object":
        return str(JSON_GBNF)
    wrapper = response_format.json_schema or {}
    schema = wrapper.get("schema", wrapper)
    if not isinstance(schema, dict) or not schema:
        raise InvalidRequest(
            "response_format.json_schema needs a `schema` object.",
            param="response_format.json_schema",
        )
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:
        raise InvalidRequest(
            f"response_format.json_schema cannot be used: {exc}",
            param="response_format.json_schema",
        ) from exc


def validation_error(exc: ValidationError) -> InvalidRequest:
    """A 400 whose message names the first bad field (`messages[1].role: ...`)."""
    errors = exc.errors()
    first = errors[0]
    path = _path(first["loc"])
    message = first["msg"]
    if first["type"] == "literal_error" and path.endswith(".role"):
        message = f"unknown role {first.get('input')!r}; use system, user, assistant or tool"
    elif first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "too_short" and path == "messages":
        message = "must contain at least one message"
    text = f"{path}: {message}" if path else message
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return InvalidRequest(f"Invalid request: {text}{more}.", param=path or None)


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.isidentifier() or part in _UNION_TAGS:
            continue  # pydantic's tags for union members, not field names
        else:
            out += f".{part}" if out else str(part)
    return out


# -- responses ---------------------------------------------------------------------------------


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": None},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk_body(
    cid: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    usage_: dict[str, int] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


class ChunkEvents:
    """The server-sent events of one streamed answer. Its content chunks differ only in their
    text, so each is its text's JSON between a prefix and a suffix made once (the bytes
    `json.dumps` of the whole chunk would give): a stream pays one small `json.dumps` per
    token, not a whole body's."""

    _MARK = "\x00"

    def __init__(self, cid: str, model: str, created: int) -> None:
        self.cid, self.model, self.created = cid, model, created
        body = event(chunk_body(cid, model, created, {"content": self._MARK}))
        self._prefix, self._suffix = body.split(json.dumps(self._MARK).encode())

    def content(self, text: str) -> bytes:
        return self._prefix + json.dumps(text).encode() + self._suffix

    def chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None, usage_: Any = None
    ) -> bytes:
        return event(chunk_body(self.cid, self.model, self.created, delta, finish_reason, usage_))


def event(body: dict[str, Any]) -> bytes:
    """One data-only server-sent event."""
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class ModelInfoResponse(BaseModel):
    model_name: str
    model_type: str = "chat-completions"
    model_provider_name: str
