"""Tools, `n`, `logprobs`, the legacy completions API and the Azure SDK's pass-through, against
a real `lmfoundry up` process and the bundled SmolLM2 (whose chat template knows no tools:
its calls come from constrained decoding), driven by the official clients."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import UserMessage
from azure.core.credentials import AzureKeyCredential

from tests.conftest import LiveServer, start_server, stop_server
from tests.metering.test_usage import cli

pytestmark = pytest.mark.slow

PROJECT = "features"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("features") / "home")
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def target(server: LiveServer) -> tuple[str, str]:
    return server.deploy(PROJECT, "tools")


@pytest.fixture(scope="module")
def client(target: tuple[str, str]) -> openai.OpenAI:
    url, key = target
    return openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)


def test_tool_round_trip(client: openai.OpenAI) -> None:
    call = client.chat.completions.create(
        model="m", messages=ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=0
    )
    choice = call.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (tool_call,) = choice.message.tool_calls or []
    assert tool_call.id.startswith("call_") and tool_call.type == "function"
    assert tool_call.function.name in ("get_weather", "get_time")
    arguments = json.loads(tool_call.function.arguments)
    schema = (WEATHER if tool_call.function.name == "get_weather" else TIME)["function"]
    jsonschema.validate(arguments, schema["parameters"])  # type: ignore[index]

    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": tool_call.id, "content": "18 degrees and sunny"},
    ]
    # `auto` after the result: SmolLM2 answers in text (an agent loop ends) and uses it.
    answer = client.chat.completions.create(
        model="m", messages=history, tools=[WEATHER, TIME], temperature=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert "18" in (answer.choices[0].message.content or "")
    assert not answer.choices[0].message.tool_calls
    # The call and its result reached the prompt: it is longer than the question alone.
    alone = client.chat.completions.create(model="m", messages=ASK, max_tokens=1)
    assert answer.usage is not None and alone.usage is not None
    assert answer.usage.prompt_tokens > alone.usage.prompt_tokens + 10

    streamed = client.chat.completions.create(
        model="m",
        messages=history,
        tools=[WEATHER, TIME],
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == answer.choices[0].message.content


def test_a_named_function_streams_as_openai_streams_calls(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].index == 0 and calls[0].id and calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert json.loads(arguments)["city"]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_required_yields_a_valid_call_20_times_of_20(client: openai.OpenAI) -> None:
    cities = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo"]
    questions = [
        "What is the weather in {}?",
        "Is it cold in {} now?",
        "Tell me the time in {}.",
        "Should I take an umbrella in {} today?",
    ]
    for i in range(20):
        question = questions[i % 4].format(cities[i % 5])
        reply = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": question}],
            tools=[WEATHER, TIME],
            tool_choice="required",
            temperature=0.8,
            seed=i,
        )
        (tool_call,) = reply.choices[0].message.tool_calls or []
        spec = {"get_weather": WEATHER, "get_time": TIME}[tool_call.function.name]
        jsonschema.validate(
            json.loads(tool_call.function.arguments), spec["function"]["parameters"]
        )  # type: ignore[index]


def test_auto_answers_text_or_a_valid_call(client: openai.OpenAI) -> None:
    for question in ("Hello! Who are you?", "What is the weather in Rome?"):
        reply = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": question}],
            tools=[WEATHER],
            temperature=0,
            max_tokens=48,
        )
        choice = reply.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            json.loads(choice.message.tool_calls[0].function.arguments)
        else:
            assert choice.message.content and not choice.message.content.lstrip().startswith("{")


def test_n_choices_and_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Name a colour."}],
        n=3,
        temperature=1.0,
        max_tokens=12,
        logprobs=True,
        top_logprobs=3,
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage is not None
    tokens = 0
    for choice in reply.choices:
        content = choice.logprobs.content if choice.logprobs else None
        assert content, "one logprob entry per generated token"
        assert "".join(t.token for t in content) == choice.message.content
        assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in content)
        tokens += len(content)
    # The usage counts every choice's tokens (and the prompt once). A choice that ended on the
    # model's end token was billed for it (llama-server evaluated it), but it has no text and
    # so no logprob entry.
    ended = sum(1 for c in reply.choices if c.finish_reason == "stop")
    assert tokens <= reply.usage.completion_tokens <= tokens + ended

    streamed = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Name a colour."}],
        n=2,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    last = None
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
        last = chunk
    assert texts[0] and texts[0] == texts[1]  # greedy: the same twice
    assert last is not None and last.usage is not None
    assert last.usage.completion_tokens % 2 == 0


def test_legacy_completions(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    reply = client.completions.create(
        model="m", prompt=prompt, max_tokens=8, temperature=0, logprobs=2
    )
    choice = reply.choices[0]
    assert reply.object == "text_completion" and choice.text
    assert choice.finish_reason in ("stop", "length")
    assert choice.logprobs is not None
    assert "".join(choice.logprobs.tokens or []) == choice.text
    assert all(len(t) <= 2 for t in choice.logprobs.top_logprobs or [])
    assert reply.usage is not None and reply.usage.completion_tokens == len(
        choice.logprobs.tokens or []
    )

    echoed = client.completions.create(
        model="m", prompt=prompt, max_tokens=8, temperature=0, echo=True
    )
    assert echoed.choices[0].text == prompt + choice.text

    streamed = client.completions.create(
        model="m", prompt=prompt, max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text

    with pytest.raises(openai.UnprocessableEntityError, match="suffix"):
        client.completions.create(model="m", prompt=prompt, suffix="!", max_tokens=4)


def test_langchain_bind_tools_calls_the_named_tool(target: tuple[str, str]) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    url, key = target
    llm = langchain_openai.ChatOpenAI(
        base_url=url + "v1", api_key=key, model="SmolLM2-135M-Instruct", temperature=0
    )

    def get_weather(city: str, unit: str = "celsius") -> str:
        """The current weather in a city."""
        return f"18 degrees {unit} in {city}"

    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    assert "city" in call["args"] and set(call["args"]) <= {"city", "unit"}


def test_azure_sdk_model_extras_and_api_versions(target: tuple[str, str]) -> None:
    url, key = target
    client = ChatCompletionsClient(endpoint=url, credential=AzureKeyCredential(key))
    seen: dict[str, str] = {}
    reply = client.complete(
        messages=[UserMessage("How many feet are in a mile?")],
        model_extras={"key1": "value1"},
        max_tokens=16,
        raw_response_hook=lambda response: seen.update(response.http_response.headers),
    )
    assert reply.choices[0].message.content
    assert seen["x-lmfoundry-ignored-parameters"] == "key1"
    for version in ("2024-05-01-preview", "2024-06-01", "2024-08-01-preview"):
        answer = httpx.post(
            url + "chat/completions",
            params={"api-version": version},
            headers={"api-key": key},
            json={"messages": ASK, "max_tokens": 4},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text


def test_usage_counts_tool_calls_choices_and_completions_exactly(server: LiveServer) -> None:
    url, key = server.deploy("billing", "metered")
    client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
    received = []
    reply = client.chat.completions.create(
        model="m", messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0
    )
    received.append(reply.usage)
    reply = client.chat.completions.create(model="m", messages=ASK, n=3, max_tokens=6)
    received.append(reply.usage)
    for chunk in client.chat.completions.create(
        model="m",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage:
            received.append(chunk.usage)
    received.append(client.completions.create(model="m", prompt="Once upon", max_tokens=5).usage)
    rows = json.loads(cli(server, "usage", "--json", "--project", "billing"))
    billed = next(r for r in rows if r["target"] == "metered")
    assert billed["requests"] == 4
    assert billed["prompt_tokens"] == sum(u.prompt_tokens for u in received if u)
    assert billed["completion_tokens"] == sum(u.completion_tokens for u in received if u)


def test_an_agent_framework_agent_calls_a_python_function(target: tuple[str, str]) -> None:
    pytest.importorskip("agent_framework")
    import asyncio

    from agent_framework import Agent
    from agent_framework.openai import OpenAIChatCompletionClient

    url, key = target
    called: list[str] = []

    def get_weather(city: str) -> str:
        """The current weather in a city."""
        called.append(city)
        return f"18 degrees and sunny in {city}"

    client = OpenAIChatCompletionClient(
        model="SmolLM2-135M-Instruct", base_url=url + "v1", api_key=key
    )
    agent = Agent(client, "You answer questions about the weather.", tools=[get_weather])

    async def run() -> str:
        response = await agent.run(
            "What is the weather in Paris?", options={"tool_choice": "required", "temperature": 0}
        )
        return response.text

    text = asyncio.run(run())
    assert called and len(called) <= 2, called  # it ran the call the model made, and stopped
    assert text and not text.lstrip().startswith("{")
