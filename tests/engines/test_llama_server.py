"""The llamacpp engine, llama.cpp's own server, on the bundled SmolLM2-135M GGUF: the real
binary `scripts/install` builds, real model, no mocks. What the gateway sends (token ids and
every sampling value) and how it reads the stream back are checked here; the scheduler is
llama.cpp's."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmfoundry.catalog.bundled import smollm2_path
from lmfoundry.engines.base import (
    EngineDown,
    EngineError,
    GenerationRequest,
    SamplingParams,
)
from lmfoundry.engines.gguf import GGUFTokenizer
from lmfoundry.errors import Unavailable
from lmfoundry.runtime import llama_server
from lmfoundry.runtime.llama_server import LlamaServerEngine, ServerMissing
from tests.engines.requests import run

pytestmark = pytest.mark.slow

MODEL = smollm2_path()
if MODEL is None:  # pragma: no cover - the package is a dependency of the test setup
    pytest.skip("the bundled SmolLM2 GGUF is not installed", allow_module_level=True)
assert MODEL is not None
MODEL_PATH: Path = MODEL

QUESTIONS = [
    "What is the capital of France?",
    "Explain gravity in one paragraph.",
    "What is Python?",
    "List three colors.",
]


@pytest.fixture(scope="module")
def tokenizer() -> Iterator[GGUFTokenizer]:
    tok = GGUFTokenizer(MODEL_PATH)
    yield tok
    tok.close()


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    """llama-cpp-python's high-level API on the same file, the same llama.cpp version the
    server is built from. Flash attention on, as in the server (llama.cpp's `auto`)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(MODEL_PATH), n_ctx=2048, flash_attn=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaServerEngine]:
    eng = LlamaServerEngine(MODEL_PATH, max_sequences=4, kv_tokens=4096, n_threads=2)
    yield eng
    eng.close()


def chat(tokenizer: GGUFTokenizer, text: str) -> list[int]:
    return tokenizer.encode(tokenizer.render([{"role": "user", "content": text}]))


def reference_greedy(llm: Any, prompt: list[int], max_tokens: int) -> tuple[bytes, int]:
    import llama_cpp

    tokens: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        tokens.append(token)
        if len(tokens) == max_tokens:
            break
    return llm.detokenize(tokens), len(tokens)


async def test_greedy_matches_llama_cpp_python(
    engine: LlamaServerEngine, tokenizer: GGUFTokenizer, reference: Any
) -> None:
    prompt = chat(tokenizer, QUESTIONS[1])
    expected, n = reference_greedy(reference, prompt, 24)
    text, last = await run(engine, prompt, max_tokens=24)
    assert text == expected.decode()
    assert last.completion_tokens == n
    assert last.finish_reason == ("length" if n == 24 else "stop")


async def test_concurrent_requests_each_get_their_own_answer(
    engine: LlamaServerEngine, tokenizer: GGUFTokenizer
) -> None:
    """Four requests decode together in one batch; no answer carries another's words. (Not
    compared token for token with the same requests alone: llama.cpp's kernels round a batch
    of four differently from a batch of one, and this small model's greedy choice between
    near-tied tokens flips with it, even on the first token.)"""
    words = ["banana", "cherry", "pumpkin", "tomato"]
    prompts = [chat(tokenizer, f'Repeat after me, and say nothing else: "{w}"') for w in words]
    answers = await asyncio.gather(*(run(engine, p, max_tokens=8) for p in prompts))
    texts = [text.lower() for text, _ in answers]
    for word, text in zip(words, texts, strict=True):
        assert not [w for w in words if w != word and w in text], (word, text)
    assert sum(word in text for word, text in zip(words, texts, strict=True)) >= 2, texts
    assert all(d.finish_reason in ("stop", "length") for _, d in answers)


async def test_max_tokens_and_stop_sequences(
    engine: LlamaServerEngine, tokenizer: GGUFTokenizer
) -> None:
    prompt = chat(tokenizer, QUESTIONS[1])
    text, last = await run(engine, prompt, max_tokens=7)
    assert (last.finish_reason, last.completion_tokens) == ("length", 7)

    full, last = await run(engine, prompt, max_tokens=24)
    words = full.split()
    stop = " " + words[len(words) // 2]  # a word from the middle, with its leading space
    cut = full.index(stop)
    text, last = await run(engine, prompt, max_tokens=24, stop=["never appears", stop])
    assert text == full[:cut]
    assert last.finish_reason == "stop"
    assert 0 < last.completion_tokens < 24

    # A stop string that straddles tokens is held back until it is disambiguated: the text
    # before it is emitted, the stop string never is.
    text, last = await run(engine, prompt, max_tokens=24, stop=[full[cut - 3 : cut + 4]])
    assert text == full[: cut - 3]
    assert last.finish_reason == "stop"


async def test_seeded_sampling_is_reproducible(
    engine: LlamaServerEngine, tokenizer: GGUFTokenizer
) -> None:
    prompt = chat(tokenizer, "Write a short poem about the sea.")
    sampled = dict(temperature=0.8, top_p=0.95, top_k=40, max_tokens=16)
    first, _ = await run(engine, prompt, seed=1234, **sampled)
    again, _ = await run(engine, prompt, seed=1234, **sampled)
    assert first == again
    others = await asyncio.gather(*(run(engine, prompt, seed=s, **sampled) for s in (1, 2, 3)))
    assert any(text != first for text, _ in others)
    penalised, _ = await run(
        engine,
        prompt,
        seed=1234,
        repeat_penalty=1.3,
        frequency_penalty=0.5,
        presence_penalty=0.5,
        **sampled,
    )
    assert penalised and penalised != first


async def test_closing_the_stream_stops_the_generation(
    engine: LlamaServerEngine, tokenizer: GGUFTokenizer
) -> None:
    prompt = chat(tokenizer, "Write a very long story about a dragon.")
    request = GenerationRequest(
        prompt=prompt, params=SamplingParams(max_tokens=2000, temperature=0.0)
    )
    stream = engine.generate(request)
    seen = 0
    async for delta in stream:
        assert delta.finish_reason is None
        seen += 1
        if seen == 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    # llama-server sees the connection close and frees the slot (it would otherwise run
    # 2000 tokens, several seconds here).
    deadline = time.monotonic() + 5
    while (await engine.client.health())["active"] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert (await engine.client.health())["active"] == 0

    text, last = await run(engine, chat(tokenizer, QUESTIONS[0]), max_tokens=5)
    assert last.completion_tokens == 5 and text


async def test_refusals_name_the_parameter(
    engine: LlamaServerEngine, tokenizer: GGUFTokenizer
) -> None:
    # Longer than the 4096 cells the slots share: llama-server's 400 becomes a 4xx naming
    # `messages`, not a failure of the instance.
    prompt = chat(tokenizer, "hello " * 4200)
    with pytest.raises(EngineError) as info:
        await run(engine, prompt)
    assert info.value.param == "messages" and "context" in info.value.message
    request = GenerationRequest(
        prompt=chat(tokenizer, "hi"), params=SamplingParams(max_tokens=4), adapter="/x/lora"
    )
    with pytest.raises(EngineError) as info:
        async for _ in engine.generate(request):
            pass
    assert info.value.param == "model"
    assert engine.failure is None
    _, last = await run(engine, chat(tokenizer, QUESTIONS[0]), max_tokens=3)
    assert last.completion_tokens == 3


async def test_json_grammar(engine: LlamaServerEngine, tokenizer: GGUFTokenizer) -> None:
    from llama_cpp.llama_grammar import JSON_GBNF

    prompt = chat(tokenizer, 'Return a JSON object with a key "a" whose value is 1.')
    text, last = await run(engine, prompt, max_tokens=96, grammar=JSON_GBNF)
    assert last.finish_reason == "stop"
    assert isinstance(json.loads(text), dict)

    with pytest.raises(EngineError) as info:
        await run(engine, prompt, grammar="root ::= nonsense")
    assert info.value.param == "response_format"


async def test_utf8_is_never_split(
    engine: LlamaServerEngine, tokenizer: GGUFTokenizer, reference: Any
) -> None:
    # Byte-level BPE: each emoji and CJK character takes two or three tokens.
    prompt = chat(tokenizer, 'Repeat after me: "🌍🚀 你好"')
    request = GenerationRequest(
        prompt=prompt, params=SamplingParams(max_tokens=19, temperature=0.0)
    )
    deltas = [d async for d in engine.generate(request)]
    text = "".join(d.text for d in deltas)
    assert "🌍" in text and "你" in text
    assert "\ufffd" not in text
    expected, n = reference_greedy(reference, prompt, 19)
    assert deltas[-1].completion_tokens == n
    assert text == expected.decode("utf-8", errors="ignore")
    counts = [d.completion_tokens for d in deltas]
    assert counts == sorted(counts)


async def test_a_killed_server_ends_its_requests_and_reports_the_failure(
    tokenizer: GGUFTokenizer,
) -> None:
    eng = LlamaServerEngine(MODEL_PATH, max_sequences=2, kv_tokens=4096, n_threads=2)
    try:
        prompt = chat(tokenizer, "Write a very long story about a dragon.")
        params = SamplingParams(max_tokens=2000, temperature=0.0)
        started = asyncio.Event()

        async def consume() -> BaseException | None:
            try:
                async for _ in eng.generate(GenerationRequest(prompt=prompt, params=params)):
                    started.set()
            except EngineDown as exc:
                return exc
            return None

        tasks = [asyncio.create_task(consume()) for _ in range(2)]
        await asyncio.wait_for(started.wait(), 30)
        os.kill(eng.process.pid, signal.SIGKILL)
        async with asyncio.timeout(5):
            results = await asyncio.gather(*tasks)
        assert all(isinstance(r, EngineDown) for r in results)
        assert eng.failure is not None and "code -9" in eng.failure
        with pytest.raises(EngineDown):
            await run(eng, prompt)
    finally:
        eng.close()


def test_a_model_llama_server_cannot_load_fails_with_its_own_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(Unavailable) as info:
        LlamaServerEngine(broken, start_timeout=60)
    assert "broken.gguf" in info.value.message
    assert "llama-server could not load" in info.value.message


def test_a_missing_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(llama_server.ENV, "/nonexistent/llama-server")
    with pytest.raises(ServerMissing) as info:
        llama_server.find_binary()
    assert "scripts/install" in info.value.message and llama_server.ENV in info.value.message
    monkeypatch.setenv(llama_server.ENV, "/bin/false")
    with pytest.raises(ServerMissing) as info:
        llama_server.find_binary()
    assert "does not run" in info.value.message
    monkeypatch.delenv(llama_server.ENV)
    assert llama_server.binary_version()  # the one scripts/install linked into the venv


def test_instance_sockets_live_in_a_folder_of_this_user_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmfoundry.runtime.spec import socket_dir

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    folder = socket_dir(tmp_path / "home")
    assert folder.parent == tmp_path and (folder.stat().st_mode & 0o777) == 0o700
    folder.chmod(0o777)  # opened up by someone: closed again before any socket is made
    assert (socket_dir(tmp_path / "home").stat().st_mode & 0o777) == 0o700
    argv = llama_server.command(Path("/bin/llama-server"), "m.gguf", str(folder / "a.sock"), {})
    assert argv[argv.index("--host") + 1].endswith(".sock") and "--port" not in argv
