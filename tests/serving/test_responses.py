"""The Responses API: its translation to and from chat completions (unit tests), and the API
against a real `lmfoundry up` process and the bundled SmolLM2, driven by the official
`openai` client and Microsoft Agent Framework's default `OpenAIChatClient`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from lmfoundry.errors import InvalidRequest, LmfError, Unprocessable
from lmfoundry.serving.response_items import output_of
from lmfoundry.serving.response_stream import ResponseEvents, chat_chunks
from lmfoundry.serving.responses import ResponsesRequest
from tests.conftest import LiveServer, start_server, stop_server
from tests.metering.test_usage import cli

NAME = "smollm2-135m-instruct"
MODEL = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France? Answer in one word."
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city's name"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
CHAT_WEATHER = {k: WEATHER[k] for k in ("name", "description", "parameters")}


def parse(body: dict[str, Any]) -> ResponsesRequest:
    return ResponsesRequest.parse(json.dumps(body).encode())


def chat_of(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    request = parse(body)
    return dict(json.loads(request.to_chat(history or [], request.input_items())))


# -- translation -----------------------------------------------------------------------------


def test_a_string_input_with_instructions_becomes_system_and_user_messages() -> None:
    chat = chat_of(
        {
            "model": "m",
            "input": "Hi",
            "instructions": "Be brief.",
            "max_output_tokens": 7,
            "temperature": 0,
            "top_p": 0.5,
        }
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert (chat["max_tokens"], chat["temperature"], chat["top_p"]) == (7, 0, 0.5)
    assert chat["stream"] is False and "tools" not in chat


def test_items_tools_and_formats_map_to_their_chat_twins() -> None:
    history = parse({"input": "Weather in Paris?"}).input_items()
    chat = chat_of(
        {
            "input": [
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                },
                {
                    "type": "function_call_output",
                    "call_id": "call_1",
                    "output": [{"type": "input_text", "text": "18 C"}],
                },
                {"role": "developer", "content": [{"type": "input_text", "text": "Use it."}]},
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "stream": True,
        },
        history,
    )
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "developer", "content": "Use it."},
    ]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": WEATHER["description"],
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["stream_options"] == {"include_usage": True}
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    formatted = chat_of(
        {"input": "x", "text": {"format": {"type": "json_schema", "name": "c", "schema": schema}}}
    )
    assert formatted["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "c", "schema": schema},
    }
    allowed = chat_of(
        {
            "input": "x",
            "tools": [WEATHER, {**WEATHER, "name": "other"}],
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "other"}],
            },
        }
    )
    assert [t["function"]["name"] for t in allowed["tools"]] == ["other"]
    assert allowed["tool_choice"] == "required"


@pytest.mark.parametrize(
    ("body", "error", "param"),
    [
        ({"model": "m"}, InvalidRequest, "input"),
        ({"input": "x", "frobnicate": 1}, InvalidRequest, "frobnicate"),
        ({"input": "x", "background": True}, Unprocessable, "background"),
        ({"input": "x", "conversation": "conv_1"}, Unprocessable, "conversation"),
        ({"input": "x", "reasoning": {"effort": "high"}}, Unprocessable, "reasoning"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, Unprocessable, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, InvalidRequest, "tools[0].name"),
        ({"input": "x", "include": ["file_search_call.results"]}, Unprocessable, "include[0]"),
        ({"input": "x", "truncation": "auto"}, Unprocessable, "truncation"),
        ({"input": "x", "max_output_tokens": 0}, InvalidRequest, "max_output_tokens"),
        ({"input": [{"role": "robot", "content": "x"}]}, InvalidRequest, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            Unprocessable,
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, Unprocessable, "input[0].type"),
        (
            {"input": [{"type": "function_call_output", "call_id": "nope", "output": "1"}]},
            InvalidRequest,
            "input[0].call_id",
        ),
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, InvalidRequest, None),
        ({"input": "x", "metadata": {str(i): "v" for i in range(17)}}, InvalidRequest, "metadata"),
        ({"input": "x", "tools": [{}]}, InvalidRequest, "tools[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            InvalidRequest,
            "input[0].content[0].text",
        ),
        ({"input": [{"role": "user", "content": ["hi"]}]}, InvalidRequest, "input[0].content[0]"),
    ],
)
def test_bad_and_unsupported_requests_name_the_parameter(
    body: dict[str, Any], error: type[LmfError], param: str | None
) -> None:
    with pytest.raises(error) as refused:
        chat_of(body)
    assert type(refused.value) is error
    if param is not None:
        assert refused.value.param == param
        assert param.split("[")[0] in refused.value.message
    else:
        assert "text.format" in (refused.value.param or "")


def test_the_chat_paths_errors_are_told_in_the_responses_apis_words() -> None:
    from lmfoundry.responses.service import _rename

    cases = [
        ("max_tokens", "max_tokens: set max_tokens to at most 9.", "max_output_tokens"),
        (
            "response_format.json_schema",
            "response_format.json_schema: too deep",
            "text.format.schema",
        ),
        (
            "tools[0].function.parameters",
            "tools[0].function.parameters: bad",
            "tools[0].parameters",
        ),
        ("messages", "messages: the prompt is long; shorten the messages.", "input"),
    ]
    for param, message, renamed in cases:
        error = InvalidRequest(message, param=param)
        _rename(error)
        assert error.param == renamed
        assert error.message.startswith(renamed) and param not in error.message


def test_a_chat_completion_becomes_output_items() -> None:
    text = {"message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}
    output, status = output_of({"choices": [text]})
    assert status == "completed"
    (message,) = output
    assert message["type"] == "message" and message["id"].startswith("msg_")
    assert message["content"][0] == {
        "type": "output_text",
        "text": "Paris",
        "annotations": [],
        "logprobs": [],
    }
    call = {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    called = {
        "message": {"role": "assistant", "content": None, "tool_calls": [call]},
        "finish_reason": "tool_calls",
    }
    (item,), _ = output_of({"choices": [called]})
    assert (item["type"], item["call_id"], item["name"], item["arguments"]) == (
        "function_call",
        "call_9",
        "f",
        "{}",
    )
    cut = {"message": {"role": "assistant", "content": "Par"}, "finish_reason": "length"}
    assert output_of({"choices": [cut]})[1] == "incomplete"


def sse_bytes(*chunks: dict[str, Any]) -> list[bytes]:
    out = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    # two events in one read, and one event split across reads, as a socket may deliver them
    joined = b"".join(out) + b"data: [DONE]\n\n"
    return [joined[:10], joined[10:-7], joined[-7:]]


def translate(reads: list[bytes]) -> tuple[list[dict[str, Any]], ResponseEvents]:
    events = ResponseEvents("resp_1", parse({"input": "x"}).echo(), "", 0)

    async def run() -> list[dict[str, Any]]:
        async def source() -> AsyncIterator[bytes]:
            for read in reads:
                yield read

        out = []
        async for chunk in chat_chunks(source()):
            out += events.chunk(chunk)
        return out + events.finish()

    return asyncio.run(run()), events


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"model": MODEL, "choices": [choice], **extra}


def test_a_chat_stream_becomes_response_events() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    reads = sse_bytes(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Par"}),
        chunk({"content": "is"}),
        chunk({}, "stop", usage=usage),
    )
    events, state = translate(reads)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[6]["text"] == "Paris"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["model"] == MODEL
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["output_tokens"] == 2
    assert final["output"][0]["content"][0]["text"] == "Paris"
    assert state.response == final


def test_a_streamed_tool_call_becomes_function_call_events() -> None:
    head = {
        "index": 0,
        "id": "call_7",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    args = {"index": 0, "function": {"arguments": '{"city":"Paris"}'}}
    usage = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
    events, _ = translate(
        sse_bytes(
            chunk({"role": "assistant", "content": ""}),
            chunk({"tool_calls": [head]}),
            chunk({"tool_calls": [args]}),
            chunk({}, "tool_calls", usage=usage),
        )
    )
    kinds = [e["type"] for e in events]
    assert kinds[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    item = events[-1]["response"]["output"][0]
    assert (item["type"], item["call_id"], item["arguments"]) == (
        "function_call",
        "call_7",
        '{"city":"Paris"}',
    )
    assert events[2]["item"]["id"] == item["id"] == events[3]["item_id"]


# -- against a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("responses") / "home")
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def target(server: LiveServer) -> tuple[str, str]:
    with server.client() as c:
        deployment = c.get(f"/api/v1/projects/default/serverless-deployments/{NAME}").json()
        keys = c.get(f"/api/v1/projects/default/serverless-deployments/{NAME}/keys").json()
    return deployment["target_url"], keys["primary_key"]


@pytest.fixture(scope="module")
def client(target: tuple[str, str]) -> openai.OpenAI:
    url, key = target
    return openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)


@pytest.mark.slow
def test_a_response_answers_as_chat_completions_does(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model=MODEL,
        input=QUESTION,
        instructions="Answer in one sentence.",
        max_output_tokens=24,
        temperature=0,
    )
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": QUESTION},
        ],
        max_tokens=24,
        temperature=0,
    )
    assert reply.object == "response" and reply.id.startswith("resp_")
    assert reply.status == "completed" and reply.model == MODEL
    assert reply.output_text == chat.choices[0].message.content  # greedy: the same answer
    assert "Paris" in reply.output_text
    assert reply.usage is not None and chat.usage is not None
    assert reply.usage.input_tokens == chat.usage.prompt_tokens
    assert reply.usage.output_tokens == chat.usage.completion_tokens
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    assert reply.instructions == "Answer in one sentence." and reply.max_output_tokens == 24

    short = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=1)
    assert short.status == "incomplete" and short.incomplete_details is not None
    assert short.incomplete_details.reason == "max_output_tokens"
    assert short.usage is not None and short.usage.output_tokens == 1


@pytest.mark.slow
def test_previous_response_id_continues_the_conversation_and_streams(
    client: openai.OpenAI,
) -> None:
    first = client.responses.create(
        model=MODEL, input="My name is Ada. Say hello to me.", max_output_tokens=64, temperature=0
    )
    follow = "What is my name?"
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=follow,
        max_output_tokens=64,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    # The model read the whole conversation: the same as chat completions given it all.
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "My name is Ada. Say hello to me."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": follow},
        ],
        max_tokens=64,
        temperature=0,
    )
    assert second.output_text == chat.choices[0].message.content
    assert second.usage is not None and chat.usage is not None
    assert second.usage.input_tokens == chat.usage.prompt_tokens

    events = list(
        client.responses.create(
            model=MODEL,
            previous_response_id=first.id,
            input=follow,
            max_output_tokens=64,
            temperature=0,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == second.output_text
    done = events[-1].response
    assert done.output_text == streamed and done.usage is not None
    assert done.usage.input_tokens == second.usage.input_tokens
    # a streamed response is stored too, and continues as well
    third = client.responses.create(
        model=MODEL, previous_response_id=done.id, input="Thanks.", max_output_tokens=8
    )
    assert third.usage is not None and third.usage.input_tokens > done.usage.total_tokens

    with client.responses.stream(
        model=MODEL, input=QUESTION, max_output_tokens=24, temperature=0
    ) as helper:
        final = helper.get_final_response()
    assert "Paris" in final.output_text


@pytest.mark.slow
def test_stored_responses_are_read_deleted_and_private_to_their_deployment(
    server: LiveServer, client: openai.OpenAI, target: tuple[str, str]
) -> None:
    reply = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=8)
    read = client.responses.retrieve(reply.id)
    assert read.id == reply.id and read.output_text == reply.output_text
    items = client.responses.input_items.list(reply.id)
    assert [i.type for i in items.data] == ["message"]

    other_url, other_key = server.deploy("responses-other", "other-smol")
    other = openai.OpenAI(base_url=other_url + "v1", api_key=other_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(reply.id)
    with pytest.raises(openai.NotFoundError, match="previous_response_id"):
        other.responses.create(model=MODEL, previous_response_id=reply.id, input="And?")
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(reply.id)
    # the other deployment's key on this deployment's URL: refused before any lookup
    url, _ = target
    wrong = httpx.get(
        f"{url}v1/responses/{reply.id}", headers={"Authorization": f"Bearer {other_key}"}
    )
    assert wrong.status_code == 403

    unstored = client.responses.create(model=MODEL, input="Hi.", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)

    deleted = httpx.delete(
        f"{url}v1/responses/{reply.id}", headers={"Authorization": f"Bearer {client.api_key}"}
    )
    assert deleted.json() == {"id": reply.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)
    with pytest.raises(openai.NotFoundError, match="previous_response_id"):
        client.responses.create(model=MODEL, previous_response_id=reply.id, input="And?")


@pytest.mark.slow
def test_refusals_name_the_parameter(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match=r"tools\[0\]\.type"):
        client.responses.create(model=MODEL, input="x", tools=[{"type": "web_search"}])
    with pytest.raises(openai.UnprocessableEntityError, match="background"):
        client.responses.create(model=MODEL, input="x", background=True)
    with pytest.raises(openai.BadRequestError, match="max_output_tokens") as long:
        client.responses.create(model=MODEL, input="x", max_output_tokens=10**6)
    assert "max_tokens" not in str(long.value.body)
    with pytest.raises(openai.BadRequestError, match="nonsense"):
        client.responses.create(model=MODEL, input="x", extra_body={"nonsense": 1})


@pytest.mark.slow
def test_function_tools_and_their_outputs_round_trip(client: openai.OpenAI) -> None:
    call = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        temperature=0,
    )
    (item,) = call.output
    assert item.type == "function_call" and item.name == "get_weather"
    assert item.call_id.startswith("call_") and item.id and item.id.startswith("fc_")
    jsonschema.validate(json.loads(item.arguments), WEATHER["parameters"])  # type: ignore[arg-type]

    answer = client.responses.create(
        model=MODEL,
        previous_response_id=call.id,
        input=[
            {"type": "function_call_output", "call_id": item.call_id, "output": "18 C and sunny"}
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        temperature=0,
        max_output_tokens=40,
    )
    assert answer.output[0].type == "message" and answer.output_text
    # the model read the call and its result: as chat completions given the same history
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": item.call_id,
                        "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": item.call_id, "content": "18 C and sunny"},
        ],
        tools=[{"type": "function", "function": CHAT_WEATHER}],
        temperature=0,
        max_tokens=40,
    )
    assert answer.output_text == chat.choices[0].message.content
    assert answer.usage is not None and chat.usage is not None
    assert answer.usage.input_tokens == chat.usage.prompt_tokens

    events = list(
        client.responses.create(
            model=MODEL,
            input="What is the weather in Paris?",
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            temperature=0,
            stream=True,
        )
    )
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = events[-1]
    assert done.type == "response.completed"
    (streamed,) = done.response.output
    assert streamed.type == "function_call" and streamed.arguments == deltas == item.arguments


@pytest.mark.slow
def test_text_format_json_schema(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": False,
    }
    reply = client.responses.create(
        model=MODEL,
        input="Name the capital of France as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema}},
        temperature=0,
        max_output_tokens=40,
    )
    jsonschema.validate(json.loads(reply.output_text), schema)
    assert reply.text is not None and reply.text.format is not None
    assert reply.text.format.type == "json_schema"


@pytest.mark.slow
def test_usage_report_equals_the_sum_of_the_responses_usage(server: LiveServer) -> None:
    url, key = server.deploy("responses-billing", "metered")
    client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
    received = []
    first = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=6)
    received.append(first.usage)
    received.append(
        client.responses.create(
            model=MODEL, previous_response_id=first.id, input="Again.", max_output_tokens=6
        ).usage
    )
    for event in client.responses.create(
        model=MODEL, input="Count to three.", max_output_tokens=8, stream=True
    ):
        if event.type in ("response.completed", "response.incomplete"):
            received.append(event.response.usage)
    received.append(
        client.responses.create(
            model=MODEL,
            input="Weather in Rome?",
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
        ).usage
    )
    assert all(u is not None for u in received) and len(received) == 4
    rows = json.loads(cli(server, "usage", "--json", "--project", "responses-billing"))
    billed = next(r for r in rows if r["target"] == "metered")
    assert billed["requests"] == 4
    assert billed["prompt_tokens"] == sum(u.input_tokens for u in received if u)
    assert billed["completion_tokens"] == sum(u.output_tokens for u in received if u)


@pytest.mark.slow
def test_responses_on_an_online_endpoint(server: LiveServer, target: tuple[str, str]) -> None:
    endpoints = "/api/v1/projects/default/online-endpoints"
    with server.client() as c:
        assert c.post(endpoints, json={"name": "resp-ep"}).status_code == 201
        put = c.put(
            f"{endpoints}/resp-ep/deployments/blue", json={"model": MODEL, "instance_count": 1}
        )
        assert put.status_code == 200, put.text
        for _ in range(600):
            state = c.get(f"{endpoints}/resp-ep/deployments/blue").json()
            if state["provisioning_state"] in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        assert state["provisioning_state"] == "succeeded", state
        assert c.put(f"{endpoints}/resp-ep/traffic", json={"blue": 100}).status_code == 200
        url = c.get(f"{endpoints}/resp-ep").json()["target_url"]
        key = c.get(f"{endpoints}/resp-ep/keys").json()["primary_key"]
    client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
    first = client.responses.create(
        model=MODEL, input=QUESTION, max_output_tokens=24, temperature=0
    )
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input="And of Italy?",
        max_output_tokens=24,
        temperature=0,
    )
    assert second.output_text and client.responses.retrieve(second.id).id == second.id
    serverless = openai.OpenAI(base_url=target[0] + "v1", api_key=target[1], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        serverless.responses.retrieve(first.id)  # a serverless key never sees an endpoint's
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


@pytest.mark.slow
def test_an_agent_framework_agent_on_the_default_chat_client_calls_a_function(
    target: tuple[str, str],
) -> None:
    pytest.importorskip("agent_framework")
    pytest.importorskip("agent_framework_openai")
    from agent_framework import Agent
    from agent_framework.openai import OpenAIChatClient

    url, key = target
    called: list[str] = []

    def get_weather(city: str) -> str:
        """The current weather in a city."""
        called.append(city)
        return f"18 degrees and sunny in {city}"

    chat_client = OpenAIChatClient(model=MODEL, base_url=url + "v1", api_key=key)
    agent = Agent(chat_client, "You answer questions about the weather.", tools=[get_weather])

    async def run() -> tuple[Any, str, list[str]]:
        session = agent.create_session()
        first = await agent.run(
            "What is the weather in Paris?",
            session=session,
            options={"tool_choice": "required", "temperature": 0},
        )
        # the session continues on the server: its next run sends previous_response_id
        stream = agent.run(
            "Thank you. Say goodbye.", session=session, stream=True, options={"temperature": 0}
        )
        kinds = [  # the Responses events under the agent's and the chat client's updates
            getattr(update.raw_representation.raw_representation, "type", None)
            async for update in stream
        ]
        final = await stream.get_final_response()
        assert str(session.service_session_id).startswith("resp_"), session.service_session_id
        return first, final.text, kinds

    response, goodbye, kinds = asyncio.run(run())
    assert called, "the agent ran no function"
    assert len(called) <= 2, called  # it ran the call the model made, and stopped
    assert response.text and not response.text.lstrip().startswith("{")
    assert goodbye and kinds[-1] == "response.completed", kinds
    assert "response.output_text.delta" in kinds


@pytest.mark.slow
def test_langchain_on_the_responses_api(target: tuple[str, str]) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    url, key = target
    llm = langchain_openai.ChatOpenAI(
        base_url=url + "v1",
        api_key=key,
        model=MODEL,
        temperature=0,
        max_tokens=24,
        use_responses_api=True,
    )
    answer = llm.invoke(QUESTION)
    assert str(answer.response_metadata.get("id", "")).startswith("resp_")
    assert "Paris" in answer.text
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    assert "".join(chunk.text for chunk in llm.stream(QUESTION)) == answer.text

    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"18 degrees in {city}"

    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city"}


def test_an_error_the_chat_stream_ends_with_becomes_error_and_response_failed() -> None:
    failed = {"error": {"code": "engine_failed", "message": "The instance died.", "status": 503}}
    events = ResponseEvents("resp_1", parse({"input": "x"}).echo(), MODEL, 0)
    out = events.chunk(chunk({"content": "Pa"})) + events.fail(failed)
    assert [e["type"] for e in out][-2:] == ["error", "response.failed"]
    assert out[-2]["code"] == "engine_failed" and out[-2]["message"] == "The instance died."
    assert out[-1]["response"]["status"] == "failed"
    assert out[-1]["response"]["error"]["message"] == "The instance died."
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
