"""The transformers engine on a tiny random Phi-3: the same tokens as transformers' own
`generate` (and PEFT's, with adapters), whether requests run alone or batched together."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.train]

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from lmfoundry.engines import transformers as transformers_engine  # noqa: E402
from lmfoundry.engines.base import EngineError, GenerationRequest, SamplingParams  # noqa: E402
from lmfoundry.engines.capabilities import create_engine  # noqa: E402
from lmfoundry.engines.hf import HFTokenizer, IncrementalDetokenizer  # noqa: E402
from lmfoundry.engines.sampling import PENALTY_LAST_N  # noqa: E402
from lmfoundry.engines.transformers import TransformersEngine  # noqa: E402
from tests.engines.failure import check_decode_failure  # noqa: E402

QUESTIONS = [
    "Hello there",
    "A small cat reads a long story.",
    "Ein Hund trägt déjà vu, again and again 🙂",
    "x",
]


class RecordingDetokenizer(IncrementalDetokenizer):
    """The engine's detokenizer, keeping each request's generated token ids for the tests."""

    created: list[RecordingDetokenizer] = []

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.created.append(self)


@pytest.fixture(autouse=True)
def record_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transformers_engine, "IncrementalDetokenizer", RecordingDetokenizer)


@dataclass
class Result:
    text: str
    ids: list[int]
    completion_tokens: int
    finish_reason: str | None
    deltas: list[str]


async def run(
    engine: TransformersEngine, prompt: list[int], adapter: Path | None = None, **params: Any
) -> Result:
    params.setdefault("max_tokens", 24)
    params.setdefault("temperature", 0.0)
    request = GenerationRequest(
        prompt=prompt,
        params=SamplingParams(**params),
        adapter=str(adapter) if adapter else None,
    )
    # The request's detokenizer is created when the first `__anext__` submits it, with no
    # await in between, so it is the one at this index even when requests run concurrently.
    index = len(RecordingDetokenizer.created)
    deltas: list[str] = []
    last = None
    async with asyncio.timeout(60):  # a hung engine fails here, not at pytest's timeout
        async for delta in engine.generate(request):
            assert last is None or last.finish_reason is None
            deltas.append(delta.text)
            last = delta
    assert last is not None
    ids = RecordingDetokenizer.created[index].ids
    return Result("".join(deltas), ids, last.completion_tokens, last.finish_reason, deltas)


@pytest.fixture(scope="module")
def tokenizer(tiny_phi3: Path) -> HFTokenizer:
    return HFTokenizer(tiny_phi3)


@pytest.fixture(scope="module")
def prompts(tokenizer: HFTokenizer) -> list[list[int]]:
    return [tokenizer.encode(tokenizer.render([{"role": "user", "content": q}])) for q in QUESTIONS]


@pytest.fixture(scope="module")
def hf_model(tiny_phi3: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(tiny_phi3).eval()


@pytest.fixture
def engine(tiny_phi3: Path) -> Iterator[TransformersEngine]:
    eng = TransformersEngine(tiny_phi3, max_sequences=8)
    yield eng
    eng.close()


def reference(
    model: Any, prompt: list[int], max_tokens: int, end_ids: set[int], **kwargs: Any
) -> tuple[list[int], str]:
    """transformers' greedy `generate`: token ids up to the first end token, finish reason."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False, **kwargs
        )
    ids = out[0, len(prompt) :].tolist()
    for i, token in enumerate(ids):
        if token in end_ids:
            return ids[:i], "stop"
    return ids, "length"


def decoded(engine: TransformersEngine, ids: list[int]) -> str:
    # A generation that ends inside a multi-byte character drops those bytes (no U+FFFD).
    return str(engine.tokenizer.decode(ids, skip_special_tokens=True)).rstrip("\ufffd")


async def test_greedy_matches_transformers_generate(
    engine: TransformersEngine, hf_model: Any, prompts: list[list[int]]
) -> None:
    for prompt in prompts:
        ids, finish = reference(hf_model, prompt, 24, engine._end_ids)
        result = await run(engine, prompt, max_tokens=24)
        assert result.ids == ids
        assert (result.completion_tokens, result.finish_reason) == (len(ids), finish)
        assert result.text == decoded(engine, ids)


async def test_concurrent_requests_batch_and_match_each_alone(
    engine: TransformersEngine, prompts: list[list[int]]
) -> None:
    alone = [await run(engine, p, max_tokens=32) for p in prompts]
    steps = engine.stats()["decode_steps"]
    batched = engine.stats()["batch_tokens"]
    together = await asyncio.gather(*(run(engine, p, max_tokens=32) for p in prompts))
    assert [r.ids for r in together] == [r.ids for r in alone]
    assert [r.text for r in together] == [r.text for r in alone]
    stats = engine.stats()
    mean_batch = (stats["batch_tokens"] - batched) / (stats["decode_steps"] - steps)
    assert mean_batch > 3  # the four sequences decoded in the same forward passes
    assert (stats["active"], stats["queued"]) == (0, 0)


async def test_end_of_sequence_from_generation_config(
    tiny_phi3: Path, tmp_path: Path, hf_model: Any, prompts: list[list[int]]
) -> None:
    """A token listed as eos in generation_config.json ends the answer: finish "stop", the
    end token neither counted nor shown."""
    full, _ = reference(hf_model, prompts[1], 24, set())
    end = full[5]
    model_dir = shutil.copytree(tiny_phi3, tmp_path / "model")
    gen_config = json.loads((model_dir / "generation_config.json").read_text())
    gen_config["eos_token_id"] = [end]
    (model_dir / "generation_config.json").write_text(json.dumps(gen_config))
    eng = TransformersEngine(model_dir)
    try:
        result = await run(eng, prompts[1], max_tokens=24)
    finally:
        await eng.aclose()
    first = full.index(end)
    assert result.ids == full[:first]
    assert (result.completion_tokens, result.finish_reason) == (first, "stop")


async def test_stop_sequences_and_max_tokens(
    engine: TransformersEngine, prompts: list[list[int]]
) -> None:
    full = await run(engine, prompts[0], max_tokens=30)
    text = full.text
    # A stop string from the middle of the answer, spanning a token boundary.
    start = next(
        i
        for i in range(6, len(text) - 4)
        if "\ufffd" not in text[i : i + 4] and text.find(text[i : i + 4]) == i
    )
    stop = text[start : start + 4]
    result = await run(engine, prompts[0], max_tokens=30, stop=[stop, "never appears"])
    assert result.text == text[:start] and result.finish_reason == "stop"
    # The token that completed the stop string counts; nothing after it was generated.
    needed = next(n for n in range(1, 31) if stop in decoded(engine, full.ids[:n]))
    assert result.completion_tokens == needed
    assert all(stop not in d for d in result.deltas)

    short = await run(engine, prompts[0], max_tokens=5)
    assert (short.completion_tokens, short.finish_reason) == (5, "length")
    assert short.ids == full.ids[:5] and short.text == decoded(engine, full.ids[:5])


async def test_sampling_parameters(
    engine: TransformersEngine, hf_model: Any, prompts: list[list[int]]
) -> None:
    prompt = prompts[2]
    greedy = await run(engine, prompt)
    # Filters that leave one candidate make sampling greedy, whatever the temperature.
    for params in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}):
        result = await run(engine, prompt, temperature=1.5, seed=3, **params)
        assert result.ids == greedy.ids, params

    # Repetition penalty as transformers applies it (all tokens so far: the prompt and
    # answer together are under the engine's 64-token penalty window here).
    assert len(prompt) + 24 <= PENALTY_LAST_N
    ids, _ = reference(hf_model, prompt, 24, engine._end_ids, repetition_penalty=1.8)
    penalized = await run(engine, prompt, repeat_penalty=1.8)
    assert penalized.ids == ids != greedy.ids
    # A large presence penalty forbids any token seen before, the prompt's included.
    fresh = await run(engine, prompt, presence_penalty=100.0)
    assert len(set(fresh.ids)) == len(fresh.ids) and not set(fresh.ids) & set(prompt)


async def test_seed_reproducible(engine: TransformersEngine, prompts: list[list[int]]) -> None:
    params = {"temperature": 1.0, "max_tokens": 24}
    first = await run(engine, prompts[0], seed=7, **params)
    again = await run(engine, prompts[0], seed=7, **params)
    other = await run(engine, prompts[0], seed=8, **params)
    assert first.ids == again.ids
    assert other.ids != first.ids
    # The same seed gives the same tokens while other requests share the batch.
    batched = await asyncio.gather(
        run(engine, prompts[1], seed=1, **params),
        run(engine, prompts[0], seed=7, **params),
        run(engine, prompts[2], **params),
    )
    assert batched[1].ids == first.ids


async def test_cancel_frees_the_slot(tiny_phi3: Path, prompts: list[list[int]]) -> None:
    eng = TransformersEngine(tiny_phi3, max_sequences=1)
    try:
        # Greedy: 364 tokens before this tiny model's end token. Sampled (temperature 0.7),
        # it sometimes ended within a few dozen, before the second request was queued.
        long = eng.generate(
            GenerationRequest(
                prompt=prompts[0], params=SamplingParams(max_tokens=3000, temperature=0.0)
            )
        )
        await anext(long)
        waiting = asyncio.create_task(run(eng, prompts[1], max_tokens=8))
        for _ in range(50):
            await asyncio.sleep(0.01)
            if eng.stats()["queued"]:
                break
        assert (eng.stats()["active"], eng.stats()["queued"]) == (1, 1)
        await long.aclose()  # the client went away
        result = await asyncio.wait_for(waiting, 10)
        assert result.completion_tokens == 8 or result.finish_reason == "stop"
        stats = eng.stats()
        assert (stats["active"], stats["queued"]) == (0, 0)
        assert stats["completion_tokens"] < 3000  # the long request did not run to its end
    finally:
        await eng.aclose()


async def test_bad_requests(
    engine: TransformersEngine, prompts: list[list[int]], tmp_path: Path
) -> None:
    with pytest.raises(EngineError) as info:
        await run(engine, prompts[0], grammar='root ::= "{}"')
    assert info.value.param == "response_format"
    with pytest.raises(EngineError) as info:
        await run(engine, prompts[0], adapter=tmp_path / "missing")
    assert info.value.param == "adapter" and "adapter_config.json" in info.value.message
    with pytest.raises(EngineError) as info:
        await run(engine, [engine.n_vocab])
    assert info.value.param == "messages"
    with pytest.raises(EngineError) as info:
        await run(engine, [1] * engine.context_length)
    assert info.value.param == "messages"


# ---------------------------------------------------------------- adapters


@pytest.fixture(scope="module")
def peft_reference(
    tiny_phi3: Path, tiny_loras: tuple[Path, Path], prompts: list[list[int]]
) -> dict[str, list[list[int]]]:
    """Greedy ids per prompt from PEFT directly: the base with adapters disabled, and each
    adapter made active with `set_adapter`."""
    base = AutoModelForCausalLM.from_pretrained(tiny_phi3).eval()
    model = PeftModel.from_pretrained(base, tiny_loras[0], adapter_name="one")
    model.load_adapter(tiny_loras[1], adapter_name="two")
    ends = set(base.generation_config.eos_token_id)  # <|endoftext|> and <|end|>
    out: dict[str, list[list[int]]] = {}
    with model.disable_adapter():
        out["base"] = [reference(model, p, 16, ends)[0] for p in prompts]
    for name in ("one", "two"):
        model.set_adapter(name)
        out[name] = [reference(model, p, 16, ends)[0] for p in prompts]
    return out


async def test_adapters_match_peft(
    engine: TransformersEngine,
    tiny_loras: tuple[Path, Path],
    prompts: list[list[int]],
    peft_reference: dict[str, list[list[int]]],
) -> None:
    adapters = {"base": None, "one": tiny_loras[0], "two": tiny_loras[1]}
    for name, adapter in adapters.items():
        for prompt, ids in zip(prompts, peft_reference[name], strict=True):
            result = await run(engine, prompt, adapter=adapter, max_tokens=16)
            assert result.ids == ids, (name, prompt)
    # Three different models: the adapters change the answers.
    answers = [tuple(map(tuple, peft_reference[name])) for name in adapters]
    assert len(set(answers)) == 3
    assert engine.stats()["adapters"] == 2

    # Concurrent requests with different adapters each get their own adapter's tokens.
    jobs = [(name, i) for i in range(len(prompts)) for name in adapters]
    results = await asyncio.gather(
        *(run(engine, prompts[i], adapter=adapters[name], max_tokens=16) for name, i in jobs)
    )
    for (name, i), result in zip(jobs, results, strict=True):
        assert result.ids == peft_reference[name][i], (name, i)


async def test_adapters_share_the_base_weights(
    engine: TransformersEngine, tiny_loras: tuple[Path, Path], prompts: list[list[int]]
) -> None:
    def storages() -> set[int]:
        """Where the base weights live (PEFT renames the wrapped ones `base_layer`)."""
        return {
            param.untyped_storage().data_ptr()
            for name, param in engine._model.named_parameters()
            if "lora_" not in name
        }

    def adapter_bytes(path: Path) -> int:
        tensors = load_file(str(path / "adapter_model.safetensors"))
        return sum(t.numel() * 4 for t in tensors.values())  # loaded as float32

    base_bytes = engine.stats()["weights_bytes"]
    base_storages = storages()
    await run(engine, prompts[0], adapter=tiny_loras[0], max_tokens=2)
    one = engine.stats()["weights_bytes"]
    await run(engine, prompts[0], adapter=tiny_loras[1], max_tokens=2)
    two = engine.stats()["weights_bytes"]
    # Each adapter adds exactly its own low-rank matrices; the base weights stay where they
    # were, one copy for both adapters.
    assert one - base_bytes == adapter_bytes(tiny_loras[0])
    assert two - one == adapter_bytes(tiny_loras[1])
    assert two < 1.3 * one
    assert storages() == base_storages


async def test_unloadable_adapter_leaves_the_model_intact(
    engine: TransformersEngine,
    tiny_loras: tuple[Path, Path],
    tmp_path: Path,
    prompts: list[list[int]],
    peft_reference: dict[str, list[list[int]]],
) -> None:
    # An adapter whose weights do not fit this model (rank 8 config, rank 4 weights).
    broken = shutil.copytree(tiny_loras[0], tmp_path / "broken")
    config = json.loads((broken / "adapter_config.json").read_text())
    config["r"] = 4
    (broken / "adapter_config.json").write_text(json.dumps(config))
    for adapters in ([broken], [tiny_loras[0], broken]):  # as the first adapter, and a later one
        for adapter in adapters[:-1]:
            await run(engine, prompts[0], adapter=adapter, max_tokens=2)
        with pytest.raises(EngineError) as info:
            await run(engine, prompts[0], adapter=adapters[-1])
        assert info.value.param == "adapter" and "broken" in info.value.message
        base = await run(engine, prompts[0], max_tokens=16)
        assert base.ids == peft_reference["base"][0]
    one = await run(engine, prompts[0], adapter=tiny_loras[0], max_tokens=16)
    assert one.ids == peft_reference["one"][0]


async def test_registry_creates_the_engine(tiny_phi3: Path, prompts: list[list[int]]) -> None:
    eng = create_engine(
        "transformers", str(tiny_phi3), {"max_sequences": 2, "n_threads": torch.get_num_threads()}
    )
    try:
        assert isinstance(eng, TransformersEngine)
        result = await run(eng, prompts[0], max_tokens=4)
        assert result.completion_tokens == 4
    finally:
        await eng.aclose()


async def test_a_decode_loop_that_raises_ends_every_request_at_once(
    tiny_phi3: Path, prompts: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = TransformersEngine(tiny_phi3, max_sequences=2)
    try:
        params = SamplingParams(max_tokens=500, temperature=0.0)
        requests = [GenerationRequest(prompt=p, params=params) for p in prompts]
        await check_decode_failure(eng, "_step", requests, monkeypatch)
    finally:
        await eng.aclose()
