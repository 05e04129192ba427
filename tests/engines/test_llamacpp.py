"""The llamacpp engine on the bundled SmolLM2-135M GGUF: real model, no mocks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lmfoundry.catalog.bundled import smollm2_path
from lmfoundry.engines.base import Delta, EngineError, GenerationRequest, SamplingParams
from lmfoundry.engines.gguf import GGUFTokenizer
from lmfoundry.engines.llamacpp import LlamaCppEngine
from tests.engines.failure import check_decode_failure

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
    """llama-cpp-python's high-level API on the same file. Flash attention on, as in the
    engine (llama.cpp's default, `auto`): with it off the logits differ in the last bits and
    greedy output drifts apart after a dozen tokens on this model."""
    import llama_cpp

    llm = llama_cpp.Llama(str(MODEL_PATH), n_ctx=2048, flash_attn=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture
async def engine() -> AsyncIterator[LlamaCppEngine]:
    eng = LlamaCppEngine(MODEL_PATH, max_sequences=8, kv_tokens=4096, prefix_cache=0)
    yield eng
    await eng.aclose()


def chat(tokenizer: GGUFTokenizer, text: str) -> list[int]:
    return tokenizer.encode(tokenizer.render([{"role": "user", "content": text}]))


async def run(engine: LlamaCppEngine, prompt: list[int], **params: Any) -> tuple[str, Delta]:
    params.setdefault("max_tokens", 24)
    params.setdefault("temperature", 0.0)
    request = GenerationRequest(prompt=prompt, params=SamplingParams(**params))
    parts: list[str] = []
    last: Delta | None = None
    async with asyncio.timeout(60):  # a hung engine fails here, not at pytest's timeout
        async for delta in engine.generate(request):
            assert last is None or last.finish_reason is None
            parts.append(delta.text)
            last = delta
    assert last is not None and last.finish_reason is not None
    return "".join(parts), last


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
    engine: LlamaCppEngine, tokenizer: GGUFTokenizer, reference: Any
) -> None:
    prompt = chat(tokenizer, QUESTIONS[1])
    expected, n = reference_greedy(reference, prompt, 24)
    text, last = await run(engine, prompt, max_tokens=24)
    assert text == expected.decode()
    assert last.completion_tokens == n
    assert last.finish_reason == ("length" if n == 24 else "stop")


async def test_concurrent_requests_match_running_alone(
    engine: LlamaCppEngine, tokenizer: GGUFTokenizer
) -> None:
    prompts = [chat(tokenizer, q) for q in QUESTIONS]
    together = await asyncio.gather(*(run(engine, p, max_tokens=16) for p in prompts))
    assert engine.stats()["decode_calls"] < sum(d.completion_tokens for _, d in together)
    alone = [await run(engine, p, max_tokens=16) for p in prompts]
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert [d.completion_tokens for _, d in together] == [d.completion_tokens for _, d in alone]
    assert len({t for t, _ in alone}) == len(prompts)


async def test_max_tokens_and_stop_sequences(
    engine: LlamaCppEngine, tokenizer: GGUFTokenizer
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

    # A stop string that is cut off at the end stays held back until it is disambiguated:
    # the text before it is emitted, the stop string never is.
    text, last = await run(engine, prompt, max_tokens=24, stop=[full[cut - 3 : cut + 4]])
    assert text == full[: cut - 3]
    assert last.finish_reason == "stop"

    # Generation that ends at max_tokens while the end of the text may begin a stop string
    # releases the held-back tail after the rest, in order (a stop that never completes).
    text, last = await run(engine, prompt, max_tokens=7)
    dangling = text[-2:] + "\u0000never"
    held, last = await run(engine, prompt, max_tokens=7, stop=[dangling])
    assert (held, last.finish_reason) == (text, "length")


async def test_seeded_sampling_is_reproducible(
    engine: LlamaCppEngine, tokenizer: GGUFTokenizer
) -> None:
    prompt = chat(tokenizer, "Write a short poem about the sea.")
    sampled = dict(temperature=0.8, top_p=0.95, top_k=40, max_tokens=16)
    first, _ = await run(engine, prompt, seed=1234, **sampled)
    again, _ = await run(engine, prompt, seed=1234, **sampled)
    assert first == again
    others = await asyncio.gather(*(run(engine, prompt, seed=s, **sampled) for s in (1, 2, 3)))
    assert any(text != first for text, _ in others)
    # Penalties run on the same chain.
    penalised, _ = await run(
        engine,
        prompt,
        seed=1234,
        repeat_penalty=1.3,
        frequency_penalty=0.5,
        presence_penalty=0.5,
        **sampled,
    )
    assert penalised


async def test_closing_the_stream_cancels_the_sequence(
    engine: LlamaCppEngine, tokenizer: GGUFTokenizer
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
    deadline = time.monotonic() + 10
    while engine.stats()["active"] and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stats = engine.stats()
    assert stats["active"] == 0
    assert stats["kv_used"] == 0 and stats["kv_reserved"] == 0
    assert stats["completion_tokens"] < 50

    text, last = await run(engine, chat(tokenizer, QUESTIONS[0]), max_tokens=5)
    assert last.completion_tokens == 5 and text


async def test_prompt_longer_than_the_kv_pool(tokenizer: GGUFTokenizer) -> None:
    eng = LlamaCppEngine(MODEL_PATH, max_sequences=2, kv_tokens=256)
    try:
        prompt = chat(tokenizer, "hello " * 300)
        with pytest.raises(EngineError) as info:
            await run(eng, prompt)
        assert info.value.param == "messages"
        assert str(len(prompt)) in info.value.message and "256" in info.value.message

        # A prompt that fits leaves room for fewer tokens than asked: it stops at the pool.
        fits = prompt[-250:]
        _, last = await run(eng, fits, max_tokens=50)
        room = 256 - len(fits)
        if last.finish_reason == "length":
            assert last.completion_tokens == room
        else:
            assert last.completion_tokens < room

        with pytest.raises(EngineError) as info:
            await run(eng, fits, max_tokens=0)
        assert info.value.param == "max_tokens"
        request = GenerationRequest(
            prompt=fits, params=SamplingParams(max_tokens=4), adapter="support-bot"
        )
        with pytest.raises(EngineError) as info:
            async for _ in eng.generate(request):
                pass
        assert info.value.param == "adapter"
        assert eng.stats()["active"] == 0 and eng.stats()["queued"] == 0
    finally:
        await eng.aclose()


async def test_json_grammar(engine: LlamaCppEngine, tokenizer: GGUFTokenizer) -> None:
    from llama_cpp.llama_grammar import JSON_GBNF

    prompt = chat(tokenizer, 'Return a JSON object with a key "a" whose value is 1.')
    text, last = await run(engine, prompt, max_tokens=96, grammar=JSON_GBNF)
    assert last.finish_reason == "stop"
    assert isinstance(json.loads(text), dict)

    with pytest.raises(EngineError) as info:
        await run(engine, prompt, grammar="root ::= nonsense")
    assert info.value.param == "response_format"


async def test_utf8_is_never_split(
    engine: LlamaCppEngine, tokenizer: GGUFTokenizer, reference: Any
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
    assert len([d for d in deltas if d.text]) < deltas[-1].completion_tokens
    # The same as decoding all the bytes at once; an incomplete character at the end (cut
    # by max_tokens) is dropped.
    expected, n = reference_greedy(reference, prompt, 19)
    assert deltas[-1].completion_tokens == n
    assert text == expected.decode("utf-8", errors="ignore")
    counts = [d.completion_tokens for d in deltas]
    assert counts == sorted(counts)


async def test_prefix_cache_reuses_a_shared_prompt(tokenizer: GGUFTokenizer) -> None:
    eng = LlamaCppEngine(MODEL_PATH, max_sequences=4, kv_tokens=1024, prefix_cache=2)
    try:
        system = "You are a terse assistant. " + "Always answer in one sentence. " * 30
        prompts = [
            tokenizer.encode(
                tokenizer.render(
                    [{"role": "system", "content": system}, {"role": "user", "content": q}]
                )
            )
            for q in QUESTIONS[:3]
        ]
        first, _ = await run(eng, prompts[0], max_tokens=8)
        together = await asyncio.gather(*(run(eng, p, max_tokens=8) for p in prompts[1:]))
        stats = eng.stats()
        assert stats["prompt_tokens_cached"] >= 2 * 150  # both reused the system prompt
        assert stats["cached_sequences"] <= 2 and stats["active"] == 0
        assert stats["kv_used"] == stats["kv_reserved"] <= stats["kv_total"]
        assert first and all(text for text, _ in together)
        # (Not bit-identical to a full prefill: llama.cpp's flash attention rounds a short
        # suffix chunk differently from a long one, as it does for any chunked prefill.)

        # Cached entries give way to live requests: one request reserves the whole pool
        # (prompt + max_tokens) and stops at the first space.
        long_prompt = chat(tokenizer, "Tell me everything about the sea.")
        _, last = await run(
            eng, long_prompt, max_tokens=1024 - len(long_prompt) - 1, stop=[" ", "\n"]
        )
        assert last.finish_reason == "stop"
        stats = eng.stats()
        assert stats["evictions"] >= 2 and stats["kv_used"] <= stats["kv_total"]
    finally:
        await eng.aclose()


async def test_a_decode_loop_that_raises_ends_every_request_at_once(
    tokenizer: GGUFTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = LlamaCppEngine(MODEL_PATH, max_sequences=2, kv_tokens=4096, prefix_cache=0)
    try:
        prompt = chat(tokenizer, "Write a very long story about a dragon.")
        params = SamplingParams(max_tokens=500, temperature=0.0)
        requests = [GenerationRequest(prompt=prompt, params=params) for _ in range(4)]
        await check_decode_failure(eng, "_step", requests, monkeypatch)
    finally:
        await eng.aclose()
