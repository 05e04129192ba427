"""Wire models of the Azure AI model inference API (and its OpenAI-compatible twin).

Requests own their conversion to engine parameters (`to_sampling_params`); validation
errors become a 400 naming the field; valid parameters a model cannot honour become a 422
with `detail.loc`, as Azure answers.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from lmfoundry.engines.base import EngineError, SamplingParams, Tokenizer
from lmfoundry.engines.capabilities import supports
from lmfoundry.errors import InvalidRequest, Unprocessable
from lmfoundry.serving.answers import ChatAnswer
from lmfoundry.serving.tools import TEXT_GRAMMAR, ToolPlan, check_schema
from lmfoundry.serving.tools import history as tool_history
from lmfoundry.serving.tools import plan as tools_plan

ExtraMode = Literal["error", "drop", "pass-through"]

# Parameters an engine understands when the caller sends `extra-parameters: pass-through`;
# others are ignored and named in the `IGNORED_HEADER` response header.
PASS_THROUGH = {"top_k", "min_p", "repeat_penalty"}
IGNORED_HEADER = "x-lmfoundry-ignored-parameters"
MAX_CHOICES = 8
MAX_TOP_LOGPROBS = 20


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


def json_object(body: bytes) -> dict[str, Any]:
    """A request body as the JSON object every inference API takes, or a 400 saying why not."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON ({exc}); send a JSON object.",
            param="body",
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", param="body")
    return data


def unsupported(request: BaseModel, field: str, message: str) -> Unprocessable:
    """A 422 for a valid parameter this request cannot have, with `detail.loc`."""
    value = getattr(request, field)
    return Unprocessable(
        message,
        param=field,
        detail={
            "loc": ["body", field],
            "input": value.model_dump() if isinstance(value, BaseModel) else value,
        },
    )


class GenerationParameters(BaseModel):
    """What chat completions and completions share: sampling, stops, choices, streaming."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    logprobs: Any = None
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
    def parse(cls, body: bytes, extra: ExtraMode) -> Self:
        data = json_object(body)
        try:
            request = cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from exc
        request._check_extra(extra)
        request.check_api()
        return request

    def check_api(self) -> None:
        """Refuse valid combinations this API does not serve (422)."""

    def _check_extra(self, extra: ExtraMode) -> None:
        unknown = sorted((self.model_extra or {}).keys())
        if unknown and extra == "error":
            raise InvalidRequest(
                f"Unknown parameter(s): {', '.join(unknown)}. Remove them, or send the header "
                "`extra-parameters: pass-through` to hand them to the model "
                "(or `drop` to ignore them).",
                param=unknown[0],
            )

    def ignored_parameters(self, extra: ExtraMode) -> list[str]:
        """Extra parameters the model does not take: with `pass-through` they are ignored
        (and named in a response header), with `drop` all extras are."""
        unknown = sorted((self.model_extra or {}).keys())
        if extra == "pass-through":
            return [name for name in unknown if name not in PASS_THROUGH]
        return unknown if extra == "drop" else []

    def pass_through(self, extra: ExtraMode) -> dict[str, Any]:
        if extra != "pass-through":
            return {}
        return {k: v for k, v in (self.model_extra or {}).items() if k in PASS_THROUGH}

    # -- admission ---------------------------------------------------------------------------

    @property
    def choices(self) -> int:
        return self.n or 1

    def completion_cap(self) -> int | None:
        return self.max_tokens

    def prompt_chars(self) -> int:
        """Characters the prompt is made from, before any template: no more than the
        rendered prompt holds, so the gateway can refuse a prompt that cannot fit the
        context before it renders or tokenises anything. 0: not known."""
        return 0

    def top_logprobs_wanted(self) -> int | None:
        """None: no log probabilities; K: each token's and its K most likely alternatives."""
        return None

    def check_supported(self, engine: str) -> None:
        """A 422 for what this model's engine cannot do (naming the engine)."""
        if self.choices > 1 and not supports(engine, "choices"):
            raise unsupported(
                self,
                "n",
                f"The {engine} engine generates one choice per request; send n=1 (or leave "
                "it out) and repeat the request for more.",
            )
        if self.top_logprobs_wanted() is not None and not supports(engine, "logprobs"):
            raise unsupported(
                self, "logprobs", f"The {engine} engine does not return log probabilities."
            )

    def to_sampling_params(self, max_tokens: int, extra: ExtraMode) -> SamplingParams:
        params = SamplingParams(max_tokens=max_tokens, n=self.choices)
        params.logprobs = self.top_logprobs_wanted()
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
        for name, value in self.pass_through(extra).items():
            expected = type(getattr(params, name))
            try:
                setattr(params, name, expected(value))
            except (TypeError, ValueError) as exc:
                raise InvalidRequest(f"{name} must be a {expected.__name__}", param=name) from exc
        return params


class ChatCompletionsRequest(GenerationParameters):
    """`POST {target}chat/completions` and `{target}v1/chat/completions`."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    _plan: ToolPlan | None = PrivateAttr(default=None)
    _grammar: str | None = PrivateAttr(default=None)

    def check_api(self) -> None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest(
                "top_logprobs needs logprobs: send `logprobs: true` with it.",
                param="top_logprobs",
            )
        self._plan = tools_plan(self.tools, self.tool_choice)

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def completion_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_chars(self) -> int:
        chars = 0
        for message in self.messages:
            chars += len(message.text()) + len(message.name or "")
            for call in message.tool_calls or ():
                chars += len(call.function.name) + len(call.function.arguments)
        if self.tools:  # shown to the model, through its template or a system message
            chars += sum(len(json.dumps(tool)) for tool in self.tools)
        return chars

    def check_supported(self, engine: str) -> None:
        super().check_supported(engine)
        if self._plan is not None and not supports(engine, "tools"):
            raise unsupported(
                self,
                "tools",
                f"The {engine} engine cannot constrain its output to a tool call; remove "
                "`tools`, or deploy the model as GGUF (llama.cpp) to call tools.",
            )
        wants_json = self.response_format and self.response_format.type != "text"
        if wants_json and not supports(engine, "grammar"):
            raise unsupported(
                self,
                "response_format",
                f"The {engine} engine cannot constrain output to JSON; use response_format text.",
            )
        if wants_json and self._plan is not None:
            raise unsupported(
                self,
                "response_format",
                "Send either tools or a JSON response_format, not both.",
            )

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
            if message.tool_calls:
                item["tool_calls"] = [call.model_dump() for call in message.tool_calls]
            if message.tool_call_id:
                item["tool_call_id"] = message.tool_call_id
            out.append(item)
        return out

    def prompt_text(self, tokenizer: Tokenizer) -> str:
        """The prompt as the model reads it: its chat template over the messages, with the
        tools through the template when it knows them, else as a system message."""
        messages = tool_history(self.chat_messages(), tokenizer.supports_tools)
        plan = self._plan
        tools = None
        if plan is not None and tokenizer.supports_tools:
            tools = [f.to_chat_tool() for f in plan.offered()]
        elif plan is not None:
            answering = plan.choice == "auto" and self.messages[-1].role == "tool"
            if answering:
                # A model that never learnt tools, shown a function's result, calls the
                # function again, and an agent loop never ends: after results, `auto`
                # answers in text (`required` and a named function still call).
                self._plan = None
                self._grammar = TEXT_GRAMMAR
            prompt = plan.system_prompt(answering)
            if messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + prompt}
            else:
                messages.insert(0, {"role": "system", "content": prompt})
        try:
            return tokenizer.render(messages, tools)
        except EngineError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from exc

    def to_sampling_params(self, max_tokens: int, extra: ExtraMode) -> SamplingParams:
        params = super().to_sampling_params(max_tokens, extra)
        if self.response_format is not None and self.response_format.type != "text":
            params.grammar = json_grammar(self.response_format)
        if self._plan is not None:
            params.grammar = self._plan.grammar()
        elif self._grammar:
            params.grammar = self._grammar
        return params

    def answer(self, model: str) -> ChatAnswer:
        return ChatAnswer(model, self.choices, self._plan, bool(self.logprobs))


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
    check_schema(schema, "response_format.json_schema")
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


class ModelInfoResponse(BaseModel):
    model_name: str
    model_type: str = "chat-completions"
    model_provider_name: str
    # Beyond Azure's three fields (its clients keep unknown ones): what the model answers.
    capabilities: list[str] = Field(default_factory=list)
