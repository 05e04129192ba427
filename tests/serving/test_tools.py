"""The tool plan on its own: what a request's tools become (prompt, grammar, parsed calls) and
what it refuses, without a model."""

from __future__ import annotations

import json

import pytest

from lmfoundry.errors import InvalidRequest
from lmfoundry.serving import tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def test_no_tools_or_none_is_plain_text() -> None:
    assert tools.plan(None, None) is None
    assert tools.plan([WEATHER], "none") is None


def test_choices_and_what_they_offer() -> None:
    auto = tools.plan([WEATHER, TIME], None)
    assert auto is not None and auto.choice == "auto" and not auto.forced
    named = tools.plan([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}})
    assert named is not None and named.forced
    assert [f.name for f in named.offered()] == ["get_time"]
    assert "get_weather" not in named.system_prompt()


@pytest.mark.parametrize(
    ("tool_list", "choice", "param"),
    [
        ([{"type": "retrieval"}], None, "tools[0].type"),
        ([{"type": "function"}], None, "tools[0].function"),
        ([{"type": "function", "function": {"name": "no spaces"}}], None, "tools[0].function.name"),
        ([WEATHER, WEATHER], None, "tools"),
        ([WEATHER], "sometimes", "tool_choice"),
        ([WEATHER], {"type": "function", "function": {"name": "other"}}, "tool_choice"),
        (None, "required", "tool_choice"),
    ],
)
def test_bad_tools_are_named(tool_list: list, choice: object, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        tools.plan(tool_list, choice)  # type: ignore[arg-type]
    assert refused.value.param == param


def test_hostile_schemas_are_refused_before_any_grammar_is_built() -> None:
    for parameters in (
        {"type": "string", "maxLength": 10**9},
        {"type": "array", "minItems": 5000},
        {"type": "object", "description": "x" * 40_000},
        json.loads("[" * 40 + "]" * 40),
    ):
        hostile = {"type": "function", "function": {"name": "f", "parameters": parameters}}
        with pytest.raises(InvalidRequest, match=r"tools\[0\]\.function\.parameters"):
            tools.plan([hostile], "required")


def test_grammars_force_a_call_or_allow_text() -> None:
    required = tools.plan([WEATHER], "required")
    auto = tools.plan([WEATHER], "auto")
    assert required is not None and auto is not None
    forced, either = required.grammar(), auto.grammar()
    assert forced.startswith("root ::= lmf-call\n") and "lmf-text" not in forced
    assert either.startswith("root ::= lmf-call | lmf-text\n")
    assert '"\\"get_weather\\""' in forced  # the name is a constant of the call


def test_answers_parse_into_calls_or_stay_text() -> None:
    plan = tools.plan([WEATHER, TIME], "auto")
    assert plan is not None
    (call,) = plan.parse(' {"name": "get_weather", "arguments": {"city": "Oslo"}}') or []
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert call.id.startswith("call_")
    tagged = plan.parse(
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    )
    assert [c.name for c in tagged or []] == ["get_time", "get_weather"]
    assert plan.parse("It is sunny.") is None
    assert plan.parse('{"name": "get_weather", "arguments": {"city": "Os') is None  # cut short
    assert plan.parse('{"name": "delete_everything", "arguments": {}}') is None


def test_history_for_templates_with_and_without_tools() -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "-3 and snow", "tool_call_id": "call_1"},
    ]
    native = tools.history(messages, native=True)
    assert native[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert native[2]["role"] == "tool"
    plain = tools.history(messages, native=False)
    assert json.loads(plain[1]["content"]) == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert plain[2] == {"role": "user", "content": "Result of get_weather: -3 and snow"}
