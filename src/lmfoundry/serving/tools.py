"""Tool calling on every chat model: the request's `tools` and `tool_choice` as a prompt, a
grammar and a parser.

A model whose chat template knows tools gets them through its template; for the others
(SmolLM2, gemma) a system message lists the functions and the answer format. Either way the
engine decodes under a grammar (llama.cpp's GBNF, from the functions' JSON schemas): with
`required` or a named function the answer *is* one call `{"name": ..., "arguments": {...}}`
whose arguments validate against that function's schema; with `auto` the answer is either
such a call (it starts with `{`) or text (it starts with anything else). A grammar, not a
retry loop, because a 135M model asked nicely still writes prose half the time; the choice
between text and call is the model's first character, the rest of a call is forced. Once
a function's result is the conversation's last message, `auto` on such a model answers in
text (see `ChatCompletionsRequest.prompt_text`).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from lmfoundry.errors import InvalidRequest

MAX_TOOLS = 64
# Text that is not a call: anything that does not open with `{`.
TEXT_GRAMMAR = "root ::= lmf-text\nlmf-text ::= [^{] [^\\x00]*\n"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Hermes / Qwen style calls that a tool-aware template teaches its model to write.
_TAGGED = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]

    def to_chat_tool(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools ask of the prompt, the decoder and the answer."""

    functions: tuple[Function, ...]
    choice: str  # "auto", "required" or a function's name ("none" never makes a plan)

    @property
    def forced(self) -> bool:
        """Every answer is a call (`required` or a named function)."""
        return self.choice != "auto"

    def offered(self) -> tuple[Function, ...]:
        if self.choice in ("auto", "required"):
            return self.functions
        return tuple(f for f in self.functions if f.name == self.choice)

    def system_prompt(self, answering: bool = False) -> str:
        """The functions and the answer format, for templates that do not know tools;
        `answering`: the results are in, the answer is text."""
        listed = "\n".join(
            json.dumps(
                {"name": f.name, "description": f.description, "parameters": f.parameters},
                ensure_ascii=False,
            )
            for f in self.offered()
        )
        if answering:
            return (
                "You called functions; their results are in the conversation. Answer the "
                "user's question in plain text, using those results."
            )
        how = (
            "Call one of them now."
            if self.forced
            else "If a function helps, call it; otherwise answer in plain text."
        )
        return (
            "You can call these functions:\n"
            f"{listed}\n"
            'To call a function, answer with only a JSON object {"name": <function name>, '
            '"arguments": <object of arguments>} and nothing else. '
            f"{how}"
        )

    def grammar(self) -> str:
        """GBNF for the answer: one call (forced), or a call or text (`auto`)."""
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        schema = {"oneOf": [_call_schema(f) for f in self.offered()]}
        try:
            calls = str(json_schema_to_gbnf(json.dumps(schema)))
        except Exception as exc:  # the converter raises bare exceptions on schemas it rejects
            raise InvalidRequest(
                f"tools: a function's `parameters` cannot be used as a JSON schema: {exc}",
                param="tools",
            ) from exc
        calls = re.sub(r"^root ::=", "lmf-call ::=", calls, flags=re.MULTILINE)
        if self.forced:
            return "root ::= lmf-call\n" + calls
        # Text is anything that does not open with `{`; a call is nothing but the call.
        return "root ::= lmf-call | " + TEXT_GRAMMAR.removeprefix("root ::= ") + calls

    def parse(self, text: str) -> list[ToolCall] | None:
        """The calls an answer makes, or None when it is text (or a call cut short)."""
        stripped = text.strip()
        candidates = [m.group(1) for m in _TAGGED.finditer(stripped)]
        if not candidates and stripped.startswith("{"):
            candidates = [stripped]
        calls = []
        names = {f.name for f in self.offered()}
        for candidate in candidates:
            try:
                value = json.loads(candidate)
            except ValueError:
                return None
            if not isinstance(value, dict) or value.get("name") not in names:
                return None
            arguments = value.get("arguments", value.get("parameters", {}))
            if not isinstance(arguments, dict):
                return None
            calls.append(ToolCall(call_id(), value["name"], json.dumps(arguments)))
        return calls or None


# Bounds on the JSON schemas a request turns into grammars (tools, response_format): the
# grammar grows with each repetition count and nesting level, so a hostile schema
# (`"maxLength": 10**9`) would cost the gateway gigabytes before any model ran.
MAX_SCHEMA_BYTES = 32 * 1024
MAX_SCHEMA_DEPTH = 24
MAX_REPETITION = 1024
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")


def check_schema(schema: Any, param: str) -> None:
    """A 400 naming `param` for a schema too large to turn into a grammar."""
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(
            f"{param}: the JSON schema is over {MAX_SCHEMA_BYTES // 1024} KiB; shorten it.",
            param=param,
        )

    def walk(node: Any, depth: int) -> None:
        if depth > MAX_SCHEMA_DEPTH:
            raise InvalidRequest(
                f"{param}: the JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels.",
                param=param,
            )
        if isinstance(node, dict):
            for key in _COUNTS:
                count = node.get(key)
                if isinstance(count, int | float) and count > MAX_REPETITION:
                    raise InvalidRequest(
                        f"{param}: {key} {count} is over {MAX_REPETITION}; constrained "
                        f"decoding takes counts up to {MAX_REPETITION}.",
                        param=param,
                    )
            for value in node.values():
                walk(value, depth + 1)
        elif isinstance(node, list):
            for value in node:
                walk(value, depth + 1)

    walk(schema, 0)


def _call_schema(function: Function) -> dict[str, Any]:
    parameters = function.parameters or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": function.name}, "arguments": parameters},
        "required": ["name", "arguments"],
    }


def plan(
    tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None
) -> ToolPlan | None:
    """The request's tool plan, or None when the answer is plain text (no tools, or
    `tool_choice: none`). A 400 names what is wrong with `tools` or `tool_choice`."""
    if tool_choice is not None and not tools and tool_choice not in ("none", "auto"):
        raise InvalidRequest(
            "tool_choice needs `tools`: send the functions the model may call.",
            param="tool_choice",
        )
    if not tools:
        return None
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"tools: send at most {MAX_TOOLS} functions.", param="tools")
    functions = tuple(_function(i, tool) for i, tool in enumerate(tools))
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise InvalidRequest("tools: function names must be unique.", param="tools")
    choice = _choice(tool_choice, names)
    if choice == "none":
        return None
    return ToolPlan(functions, choice)


def _function(index: int, tool: dict[str, Any]) -> Function:
    where = f"tools[{index}]"
    if tool.get("type", "function") != "function":
        raise InvalidRequest(
            f"{where}.type: only function tools are supported, not {tool.get('type')!r}.",
            param=f"{where}.type",
        )
    spec = tool.get("function")
    if not isinstance(spec, dict):
        raise InvalidRequest(
            f'{where}: give the function as {{"type": "function", "function": {{"name": ...}}}}.',
            param=f"{where}.function",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequest(
            f"{where}.function.name: a name of 1 to 64 letters, digits, _, . or -.",
            param=f"{where}.function.name",
        )
    parameters = spec.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise InvalidRequest(
            f"{where}.function.parameters must be a JSON schema object.",
            param=f"{where}.function.parameters",
        )
    check_schema(parameters, f"{where}.function.parameters")
    description = spec.get("description") or ""
    if not isinstance(description, str):
        raise InvalidRequest(
            f"{where}.function.description must be a string.",
            param=f"{where}.function.description",
        )
    return Function(name, description, parameters)


def _choice(tool_choice: str | dict[str, Any] | None, names: list[str]) -> str:
    if tool_choice is None:
        return "auto"
    if isinstance(tool_choice, str):
        if tool_choice in ("none", "auto", "required"):
            return tool_choice
        raise InvalidRequest(
            f"tool_choice must be none, auto, required or a function, not {tool_choice!r}.",
            param="tool_choice",
        )
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if name not in names:
        raise InvalidRequest(
            f"tool_choice names the function {name!r}, which is not in `tools` "
            f"({', '.join(names)}).",
            param="tool_choice",
        )
    return str(name)


def history(messages: list[dict[str, Any]], native: bool) -> list[dict[str, Any]]:
    """Earlier calls and their results, as the template reads them. A template that knows
    tools gets OpenAI's shape with arguments as objects (as Hugging Face's templates expect);
    another gets the call as the JSON text the model was asked to write, and each result as
    a user turn that names the function."""
    names: dict[str, str] = {}
    out = []
    for message in messages:
        calls = message.get("tool_calls") or []
        for call in calls:
            names[call["id"]] = call["function"]["name"]
        if message["role"] == "assistant" and calls:
            if native:
                out.append(
                    {
                        **message,
                        "tool_calls": [
                            {**c, "function": {**c["function"], "arguments": _loads(c)}}
                            for c in calls
                        ],
                    }
                )
            else:
                text = "\n".join(
                    json.dumps({"name": c["function"]["name"], "arguments": _loads(c)})
                    for c in calls
                )
                out.append({"role": "assistant", "content": text})
        elif message["role"] == "tool" and not native:
            name = names.get(message.get("tool_call_id") or "", "the function")
            out.append({"role": "user", "content": f"Result of {name}: {message['content']}"})
        else:
            out.append({k: v for k, v in message.items() if k != "tool_calls"})
    return out


def _loads(call: dict[str, Any]) -> Any:
    try:
        return json.loads(call["function"]["arguments"] or "{}")
    except ValueError:
        return call["function"]["arguments"]
