"""The onnx engine on a tiny random Phi-3 built to ONNX by onnxruntime-genai's own model
builder (through `lmfoundry.catalog.onnx_build`): real model, real runtime, no mocks.

Each output is compared with onnxruntime-genai's own `Generator` loop on the same token ids.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmfoundry.engines.base import EngineError, GenerationRequest, SamplingParams

pytestmark = pytest.mark.slow

if importlib.util.find_spec("onnxruntime_genai") is None:
    pytest.skip(
        "onnxruntime-genai is not installed (pip install 'lmfoundry[onnx]')",
        allow_module_level=True,
    )

import onnxruntime_genai as og  # noqa: E402

from lmfoundry.engines.onnx import OnnxEngine, OnnxTokenizer  # noqa: E402
from tests.engines.failure import check_decode_failure  # noqa: E402
from tests.engines.requests import run  # noqa: E402

QUESTIONS = [
    "The model reads a long story",
    "A small cat",
    "Our team counts every request again",
    "La señora mange déjà vu",
    "The gateway streams",
    "Ein Hund trägt naïve code on the CPU.",
]


@pytest.fixture(scope="module")
def tiny_onnx(tiny_phi3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lmfoundry.catalog.onnx_build import BUILD_DEPS, build_onnx

    missing = [m for m in BUILD_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(
            f"the ONNX model builder needs {', '.join(missing)} "
            "(pip install 'lmfoundry[onnx-build,train]')"
        )
    root = tmp_path_factory.mktemp("onnx")
    return build_onnx(
        tiny_phi3, root / "tiny-phi3-onnx", model_id="tiny", models_dir=root, log=lambda _: None
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_onnx: Path) -> OnnxTokenizer:
    return OnnxTokenizer(tiny_onnx)


@pytest.fixture(scope="module")
def reference(tiny_onnx: Path) -> Any:
    return og.Model(str(tiny_onnx))


@pytest.fixture
async def engine(tiny_onnx: Path) -> AsyncIterator[OnnxEngine]:
    eng = OnnxEngine(tiny_onnx, max_sequences=4)
    yield eng
    await eng.aclose()


def chat(tokenizer: OnnxTokenizer, text: str) -> list[int]:
    return tokenizer.encode(tokenizer.render([{"role": "user", "content": text}]))


def og_loop(model: Any, prompt: list[int], max_tokens: int, **search: Any) -> list[int]:
    """onnxruntime-genai's own generation loop: the generated ids, end token excluded."""
    params = og.GeneratorParams(model)
    search.setdefault("do_sample", False)
    params.set_search_options(max_length=len(prompt) + max_tokens, **search)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompt, dtype=np.int32))
    ids: list[int] = []
    eos = {2, 6}  # <|endoftext|>, <|end|> (the tiny model's generation_config)
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if token in eos:
            break
        ids.append(token)
    return ids


def decode(tokenizer: OnnxTokenizer, ids: list[int]) -> str:
    text: str = tokenizer._tokenizer.decode(ids, skip_special_tokens=True)
    return text.rstrip("\ufffd")


async def test_greedy_output_is_onnxruntime_genais_own(
    engine: OnnxEngine, tokenizer: OnnxTokenizer, reference: Any
) -> None:
    for question in QUESTIONS[:3]:
        prompt = chat(tokenizer, question)
        expected = og_loop(reference, prompt, 24)
        text, last = await run(engine, prompt)
        assert text == decode(tokenizer, expected)
        assert last.completion_tokens == len(expected)
        assert last.finish_reason == ("length" if len(expected) == 24 else "stop")


async def test_concurrent_requests_give_the_sequential_texts(
    engine: OnnxEngine, tokenizer: OnnxTokenizer
) -> None:
    prompts = [chat(tokenizer, q) for q in QUESTIONS]  # different lengths; 6 > max_sequences
    sequential = [await run(engine, p, max_tokens=16 + i) for i, p in enumerate(prompts)]
    concurrent = await asyncio.gather(
        *(run(engine, p, max_tokens=16 + i) for i, p in enumerate(prompts))
    )
    assert [t for t, _ in concurrent] == [t for t, _ in sequential]
    assert [d.completion_tokens for _, d in concurrent] == [
        d.completion_tokens for _, d in sequential
    ]
    stats = engine.stats()
    assert stats["requests"] == 12
    assert stats["batch_tokens"] > stats["batch_steps"]  # some steps decoded several requests
    assert stats["active"] == 0


async def test_stop_string_cuts_the_text(
    engine: OnnxEngine, tokenizer: OnnxTokenizer, reference: Any
) -> None:
    prompt = chat(tokenizer, QUESTIONS[0])
    full = decode(tokenizer, og_loop(reference, prompt, 40))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    text, last = await run(engine, prompt, max_tokens=40, stop=[stop, "never-in-it"])
    assert text == full[: full.index(stop)]
    assert last.finish_reason == "stop"
    assert stop not in text


async def test_max_tokens_is_honoured(
    engine: OnnxEngine, tokenizer: OnnxTokenizer, reference: Any
) -> None:
    prompt = chat(tokenizer, QUESTIONS[2])
    assert len(og_loop(reference, prompt, 40)) > 5
    text, last = await run(engine, prompt, max_tokens=5)
    assert last.completion_tokens == 5
    assert last.finish_reason == "length"
    assert text == decode(tokenizer, og_loop(reference, prompt, 5))


async def test_seeded_sampling_is_reproducible_and_onnxruntime_genais_own(
    engine: OnnxEngine, tokenizer: OnnxTokenizer, reference: Any
) -> None:
    prompt = chat(tokenizer, QUESTIONS[1])
    sampling = {"temperature": 0.9, "top_p": 0.95, "seed": 7}
    one, _ = await run(engine, prompt, max_tokens=30, **sampling)
    two, _ = await run(engine, prompt, max_tokens=30, **sampling)
    assert one == two
    expected = og_loop(
        reference,
        prompt,
        30,
        do_sample=True,
        temperature=0.9,
        top_p=0.95,
        top_k=0,
        random_seed=7,
    )
    assert one == decode(tokenizer, expected)
    # unseeded sampling (batched by og's Engine) samples: three draws are not all alike
    draws = await asyncio.gather(
        *(run(engine, prompt, max_tokens=30, temperature=0.9) for _ in range(3))
    )
    assert len({text for text, _ in draws}) > 1


async def test_closing_the_stream_cancels_the_request(
    engine: OnnxEngine, tokenizer: OnnxTokenizer, reference: Any
) -> None:
    prompt = chat(tokenizer, QUESTIONS[0])
    assert len(og_loop(reference, prompt, 400)) == 400  # it would run to max_tokens
    request = GenerationRequest(
        prompt=prompt, params=SamplingParams(max_tokens=400, temperature=0.0)
    )
    stream = engine.generate(request)
    first = await anext(stream)
    assert first.completion_tokens >= 1
    await stream.aclose()
    for _ in range(200):
        if engine.stats()["active"] == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.stats()["active"] == 0
    assert engine.stats()["completion_tokens"] < 400
    # the engine goes on serving, with the same answers as before
    text, _ = await run(engine, prompt)
    assert text == decode(tokenizer, og_loop(reference, prompt, 24))


async def test_unsupported_parameters_are_refused(
    engine: OnnxEngine, tokenizer: OnnxTokenizer
) -> None:
    prompt = chat(tokenizer, QUESTIONS[0])
    with pytest.raises(EngineError) as refused:
        await run(engine, prompt, presence_penalty=0.5)
    assert refused.value.param == "presence_penalty"
    with pytest.raises(EngineError) as refused:
        await run(engine, prompt, grammar='root ::= "a"')
    assert refused.value.param == "response_format"
    with pytest.raises(EngineError):
        await run(engine, [10_000])  # outside the vocabulary
    with pytest.raises(EngineError) as refused:
        await run(engine, prompt, temperature=0.5, top_p=1.5)
    assert "top_p" in refused.value.message


def test_gateway_tokenizer_matches_transformers_chat_template(
    tiny_onnx: Path, tokenizer: OnnxTokenizer
) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tiny_onnx))
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "La señora mange déjà vu 🙂"},
    ]
    expected = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(expected, dict) or hasattr(expected, "input_ids"):
        expected = expected["input_ids"]
    assert tokenizer.encode(tokenizer.render(messages)) == list(expected)
    assert tokenizer.context_length == 4096  # genai_config.json's context_length


def test_catalog_sees_an_onnx_folder(tiny_onnx: Path) -> None:
    from lmfoundry.catalog.service import inspect_weights
    from lmfoundry.engines.capabilities import create_tokenizer

    info = inspect_weights(tiny_onnx)
    assert (info.format, info.engine, info.architecture) == ("onnx", "onnx", "phi3")
    assert info.chat_template and "<|assistant|>" in info.chat_template
    assert create_tokenizer("onnx", str(tiny_onnx), None, None).context_length == 4096


async def test_a_decode_loop_that_raises_ends_every_request_at_once(
    tiny_onnx: Path, tokenizer: OnnxTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = OnnxEngine(tiny_onnx, max_sequences=2)
    try:
        params = SamplingParams(max_tokens=500, temperature=0.0)
        requests = [
            GenerationRequest(prompt=chat(tokenizer, q), params=params) for q in QUESTIONS[:4]
        ]
        await check_decode_failure(eng, "_step", requests, monkeypatch)
    finally:
        await eng.aclose()
