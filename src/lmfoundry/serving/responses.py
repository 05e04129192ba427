"""Wire models of the OpenAI Responses API (`{target}v1/responses`) and their translation to
chat completions.

A Responses request becomes a chat-completions body (`ResponsesRequest.to_chat`): the
instructions as a system message, then the stored conversation it continues, then its input
items (`function_call` items as assistant `tool_calls`, `function_call_output` items as
`tool` messages); function tools, `tool_choice`, `text.format` and `max_output_tokens` map to
their chat twins. The chat path admits, runs and meters it; `serving.response_items` turns
the chat answer back into a Response object (`serving.response_stream` does the same for
streams). Valid Responses features this platform does not serve (built-in tools, images,
files, background mode, conversations) are refused with a 422 naming the parameter.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmfoundry.errors import InvalidRequest, Unprocessable
from lmfoundry.serving.response_items import chat_messages, item_of, text_message, unprocessable
from lmfoundry.serving.wire import json_object, validation_error

MAX_INPUT_ITEMS = 2048
MAX_METADATA = 16  # OpenAI's limits on `metadata`: 16 pairs, 64-char keys, 512-char values

# Valid Responses parameters this platform does not serve: sent with a value, a 422 names
# them (with the fix where there is one).
UNSUPPORTED = {
    "background": "background mode is not supported; leave out `background` and wait for "
    "the answer (or stream it).",
    "conversation": "the Conversations API is not supported; continue a conversation with "
    "`previous_response_id`.",
    "prompt": "prompt templates are not supported; send `instructions` and `input`.",
    "reasoning": "this model does not reason; leave out `reasoning`.",
    "top_logprobs": "log probabilities are not returned by the Responses API here; use "
    "chat completions with `logprobs`.",
    "max_tool_calls": "`max_tool_calls` is not supported; leave it out.",
    "context_management": "context management is not supported; leave it out.",
    "moderation": "moderation is not supported; leave it out.",
    "image": "image options are not supported; this model reads and writes text only.",
    "access_programs": "access programs are not supported; leave them out.",
    "background_options": "background mode is not supported; leave it out.",
    "prompt_cache_options": "prompt cache options are not supported; leave them out.",
    "prompt_cache_retention": "prompt cache retention is not supported; leave it out.",
}
# `include` values: reasoning items are never produced, so their encrypted content is
# trivially included (Agent Framework asks for it on every stateless request).
INCLUDABLE = {"reasoning.encrypted_content"}


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def to_chat(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        if self.parameters is not None:
            function["parameters"] = self.parameters
        return {"type": "function", "function": function}


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    def to_chat(self) -> dict[str, Any] | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        if not self.schema_:
            raise InvalidRequest(
                "text.format.schema: a json_schema format needs a `schema` object.",
                param="text.format.schema",
            )
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name or "response", "schema": self.schema_},
        }

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "json_schema":
            out.update(
                name=self.name or "response",
                schema=self.schema_,
                description=self.description,
                strict=self.strict,
            )
        return out


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_obfuscation: bool | None = None


class ResponsesRequest(BaseModel):
    """`POST {target}v1/responses` (and `{target}responses`)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    store: bool | None = True  # null: the default, as OpenAI reads it
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, str] | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    @property
    def stored(self) -> bool:
        return self.store is not False

    # -- parsing -----------------------------------------------------------------------------

    @classmethod
    def parse(cls, body: bytes) -> Self:
        data = json_object(body)
        if "input" not in data:
            raise InvalidRequest(
                "input: required; send the user's text (a string) or a list of input items.",
                param="input",
            )
        try:
            request = cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from exc
        request._check()
        return request

    def _check(self) -> None:
        extra = self.model_extra or {}
        for name in sorted(extra):
            if name in UNSUPPORTED:
                if extra[name] not in (None, False, {}, []):
                    raise Unprocessable(
                        f"{name}: {UNSUPPORTED[name]}",
                        param=name,
                        detail={"loc": ["body", name], "input": extra[name]},
                    )
            else:
                raise InvalidRequest(
                    f"Unknown parameter: {name}. Remove it (see the Responses API reference).",
                    param=name,
                )
        if self.text and self.text.verbosity not in (None, "medium"):
            raise unprocessable("text.verbosity", "verbosity is not supported; leave it out.")
        if self.stream_options and self.stream_options.include_obfuscation:
            raise unprocessable(
                "stream_options.include_obfuscation",
                "stream obfuscation is not supported; send include_obfuscation: false.",
            )
        if self.truncation == "auto":
            raise unprocessable(
                "truncation",
                "automatic truncation is not supported; send truncation: disabled and "
                "shorten the conversation yourself.",
            )
        if self.service_tier not in (None, "auto", "default"):
            raise unprocessable("service_tier", "only the default service tier is served.")
        for index, value in enumerate(self.include or []):
            if value not in INCLUDABLE:
                raise unprocessable(f"include[{index}]", f"{value!r} cannot be included here.")
        pairs = self.metadata or {}
        if len(pairs) > MAX_METADATA or any(len(k) > 64 or len(v) > 512 for k, v in pairs.items()):
            raise InvalidRequest(
                "metadata: at most 16 pairs, keys up to 64 and values up to 512 characters.",
                param="metadata",
            )
        if isinstance(self.input, list) and len(self.input) > MAX_INPUT_ITEMS:
            raise InvalidRequest(f"input: send at most {MAX_INPUT_ITEMS} items.", param="input")

    # -- translation -------------------------------------------------------------------------

    def input_items(self) -> list[dict[str, Any]]:
        """This request's input as normalised items (what is stored and replayed)."""
        if isinstance(self.input, str):
            return [text_message("user", self.input)]
        return [item_of(index, item) for index, item in enumerate(self.input)]

    def function_tools(self) -> list[FunctionTool]:
        tools = []
        for index, tool in enumerate(self.tools or []):
            kind = tool.get("type")
            if not isinstance(kind, str):
                raise InvalidRequest(
                    f'tools[{index}].type: required; send {{"type": "function", "name": ...}}.',
                    param=f"tools[{index}].type",
                )
            if kind != "function":
                raise unprocessable(
                    f"tools[{index}].type",
                    f"{kind!r} tools are not supported; only function tools are.",
                )
            try:
                tools.append(FunctionTool.model_validate(tool))
            except ValidationError as exc:
                raise _nested(exc, f"tools[{index}]") from exc
        return tools

    def chat_tool_choice(self, tools: list[FunctionTool]) -> tuple[Any, list[FunctionTool]]:
        """The chat `tool_choice`, and the tools offered (`allowed_tools` narrows them)."""
        choice = self.tool_choice
        if choice is None or isinstance(choice, str):
            return choice, tools
        kind = choice.get("type")
        if kind == "function":
            return {"type": "function", "function": {"name": choice.get("name")}}, tools
        if kind == "allowed_tools":
            allowed = {t.get("name") for t in choice.get("tools") or [] if isinstance(t, dict)}
            return choice.get("mode", "auto"), [t for t in tools if t.name in allowed]
        raise unprocessable(
            "tool_choice", f"tool_choice of type {kind!r} is not supported; use a function."
        )

    def to_chat(self, history: list[dict[str, Any]], inputs: list[dict[str, Any]]) -> bytes:
        """The chat-completions body of this request, after the conversation `history`."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        messages += chat_messages(history, inputs)
        body: dict[str, Any] = {"messages": messages, "stream": bool(self.stream)}
        if self.model:
            body["model"] = self.model
        for name, value in (
            ("max_tokens", self.max_output_tokens),
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("user", self.user),
            ("parallel_tool_calls", self.parallel_tool_calls),
        ):
            if value is not None:
                body[name] = value
        tools = self.function_tools()
        choice, offered = self.chat_tool_choice(tools)
        if offered:
            body["tools"] = [t.to_chat() for t in offered]
        if choice is not None:
            body["tool_choice"] = choice
        fmt = self.text.format if self.text else None
        response_format = fmt.to_chat() if fmt else None
        if response_format is not None:
            body["response_format"] = response_format
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body).encode()

    def echo(self) -> dict[str, Any]:
        """The request's settings as a Response object repeats them."""
        fmt = self.text.format if self.text and self.text.format else TextFormat()
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {},
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "previous_response_id": self.previous_response_id,
            "temperature": self.temperature if self.temperature is not None else 1.0,
            "top_p": self.top_p if self.top_p is not None else 1.0,
            "text": {"format": fmt.to_wire(), "verbosity": "medium"},
            "tool_choice": self.tool_choice if self.tool_choice is not None else "auto",
            "tools": [
                {**t.model_dump(), "strict": t.strict if t.strict is not None else True}
                for t in self.function_tools()
            ],
            "truncation": "disabled",
            "store": self.stored,
            "user": self.user,
            "safety_identifier": self.safety_identifier,
            "prompt_cache_key": self.prompt_cache_key,
            "service_tier": "default",
            "background": False,
            "reasoning": {"effort": None, "summary": None},
        }


def _nested(exc: ValidationError, where: str) -> InvalidRequest:
    inner = validation_error(exc)
    path = f"{where}.{inner.param}" if inner.param else where
    message = inner.message.removeprefix("Invalid request: ")
    return InvalidRequest(f"Invalid request: {where}.{message}", param=path)
