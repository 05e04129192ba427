"""Serving throughput: lmfoundry against bare llama-server (llama.cpp's own server, the same
binary lmfoundry runs as its GGUF engine, with the same flags, threads and slots) and against
llama-cpp-python's OpenAI server, same GGUF file; and lmfoundry's `onnx` engine against its
`llamacpp` engine on the same model.

    .venv/bin/python benchmarks/serving.py [--concurrency 1 4 8 16] [--requests 16]
        [--max-tokens 64] [--servers llama-server llama_cpp.server lmfoundry onnx]
        [--json out.json]

The servers run on loopback, started here, one after the other, with the same thread count:

  llama-server      the binary `scripts/install` built (or LMFOUNDRY_LLAMA_SERVER), on a TCP
                    port, with the command line lmfoundry gives its instances: the primary
                    baseline, what a user would run instead
  llama_cpp.server  `python -m llama_cpp.server` on the bundled SmolLM2-135M GGUF
  lmfoundry         `lmfoundry up` and its serverless deployment of the same file (llamacpp
                    engine): key check, quota reservation and settlement, metering all on
  onnx              `lmfoundry up` and a serverless deployment of SmolLM2 built to int4 ONNX by
                    `lmfoundry catalog build-onnx` (onnx engine); the build (about a minute and a
                    half) is cached under --onnx-cache. Skipped when onnxruntime-genai or the
                    builder's dependencies are missing.
  adapter           `lmfoundry up` with two serverless deployments: the base SmolLM2 and a
                    registered rank-8 LoRA adapter of it (random weights, made once under
                    --onnx-cache), which lmfoundry converts to a GGUF LoRA and serves on the
                    base's llama-server; the adapter against its base (target: at least 0.8x)

The same load generator drives all of them: at each concurrency, `--rounds` rounds of
`--requests` streaming chat requests per client slot (fixed prompts, greedy, `max_tokens`
fixed), each on a connection of its own (llama-server closes idle connections after a streamed
answer). Bare llama-server and lmfoundry run at the same time and take their rounds in turn
(A B, B A, ...), as do the adapter and its base, so that the machine's slow minutes fall on
both (on this shared two-core machine a round swings by 30% and more). Reported per
concurrency, the median round: aggregate output tokens/s, time to first token p50/p99,
end-to-end latency p50/p99; then the ratios, lmfoundry over llama-server first, each the
median of the rounds' ratios to the round beside them, against the targets (tokens/s at
least 0.95x, TTFT p50 at 1 client within +10 ms).
Needs `pip install sse-starlette starlette-context` for llama-cpp-python's server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from lmfoundry.catalog.bundled import smollm2_path
from lmfoundry.config import Settings
from lmfoundry.runtime import llama_server

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works to a child.",
    "List ten things to pack for a beach holiday and say why.",
    "Describe the water cycle in detail.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain what a computer program is.",
    "Give advice to someone starting to learn the piano.",
    "Describe a busy market in the morning.",
]
TOKEN = "lmf_pat_" + "b" * 43
SERVERS = ("llama-server", "llama_cpp.server", "lmfoundry", "onnx", "adapter")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


async def one(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], prompt: str, max_tokens: int
) -> dict[str, float]:
    body = {
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    first = None
    tokens = 0
    async with http.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                tokens += 1  # one content delta per generated token on both servers
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "e2e": end - start, "tokens": tokens}


async def load(
    url: str, headers: dict[str, str], concurrency: int, per_slot: int, max_tokens: int
) -> dict[str, Any]:
    results: list[dict[str, float]] = []
    fresh = httpx.Limits(max_keepalive_connections=0)  # a connection per request
    async with httpx.AsyncClient(timeout=600, limits=fresh) as http:
        await one(http, url, headers, PROMPTS[0], 4)  # warm: the model is loaded

        async def slot(n: int) -> None:
            for i in range(per_slot):
                prompt = PROMPTS[(n + i) % len(PROMPTS)] + f" ({n}-{i})"
                results.append(await one(http, url, headers, prompt, max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(slot(n) for n in range(concurrency)))
        wall = time.perf_counter() - start

    def pct(key: str, q: float) -> float:
        values = sorted(r[key] for r in results)
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "concurrency": concurrency,
        "requests": len(results),
        "tokens": sum(r["tokens"] for r in results),
        "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "ttft_p50_ms": round(1000 * statistics.median(r["ttft"] for r in results), 1),
        "ttft_p99_ms": round(1000 * pct("ttft", 0.99), 1),
        "e2e_p50_ms": round(1000 * statistics.median(r["e2e"] for r in results), 1),
        "e2e_p99_ms": round(1000 * pct("e2e", 0.99), 1),
    }


def llama_server_command(threads: int, port: int) -> list[str]:
    """Bare llama-server with the command line of an lmfoundry instance (its default slots
    and KV cells), listening on a TCP port instead of a unix socket."""
    settings = Settings()
    options = {
        "n_threads": threads,
        "max_sequences": settings.engine_max_sequences,
        "kv_tokens": settings.engine_kv_tokens,
    }
    binary = llama_server.find_binary()
    command = [*llama_server.command(binary, str(smollm2_path()), "127.0.0.1", options)]
    return [*command, "--port", str(port)]


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one concurrency as one row: the median of each figure, counts summed, and
    each round's tokens/s and TTFT p50 (the ratios pair them round by round)."""
    row: dict[str, Any] = {"concurrency": runs[0]["concurrency"], "rounds": len(runs)}
    for key in ("requests", "tokens"):
        row[key] = sum(r[key] for r in runs)
    for key in runs[0]:
        if key not in row:
            row[key] = round(statistics.median(r[key] for r in runs), 1)
    row["round_tokens_per_s"] = [r["tokens_per_s"] for r in runs]
    row["round_ttft_p50_ms"] = [r["ttft_p50_ms"] for r in runs]
    return row


def paired(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[float, float]:
    """(tokens/s ratio, TTFT p50 difference in ms): the median over rounds of each round's
    figure against the other server's round beside it in time. On a shared two-core machine
    a round's speed swings by 30% and more with the neighbours' load; two rounds taken one
    after the other swing together, so their ratio holds still where the medians do not."""
    ratios = [
        a / b for a, b in zip(ours["round_tokens_per_s"], theirs["round_tokens_per_s"], strict=True)
    ]
    deltas = [
        a - b for a, b in zip(ours["round_ttft_p50_ms"], theirs["round_ttft_p50_ms"], strict=True)
    ]
    return round(statistics.median(ratios), 2), round(statistics.median(deltas), 1)


def interleaved(
    args: argparse.Namespace, targets: dict[str, tuple[str, dict[str, str]]]
) -> dict[str, list[dict[str, Any]]]:
    """Every target at each concurrency, round after round in turn (A B, B A, A B, ...), so
    that a slow minute of the machine falls on all of them alike; the median round is
    reported, and rows of one call are marked to be compared round by round."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    group = id(out)
    for c in args.concurrency:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        order = list(targets.items())
        for _ in range(args.rounds):
            for name, (url, headers) in order:
                runs[name].append(
                    asyncio.run(load(url, headers, c, args.requests, args.max_tokens))
                )
            order.reverse()
        for name in targets:
            out[name].append({**median_run(runs[name]), "interleaved": group})
    return out


def run_against_llama_server(
    args: argparse.Namespace, threads: int
) -> dict[str, list[dict[str, Any]]]:
    """Bare llama-server and lmfoundry up at once (an idle llama-server takes no CPU), their
    rounds interleaved; with `--stream-interval-ms`, one lmfoundry per interval
    (`lmfoundry` for the first, `lmfoundry@<N>ms` for the others)."""
    port = free_port()
    command = llama_server_command(threads, port)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    intervals = args.stream_interval_ms or [None]
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", process)
        with contextlib.ExitStack() as stack:
            targets = {"llama-server": (f"http://127.0.0.1:{port}/v1/chat/completions", {})}
            for i, interval in enumerate(intervals):
                base, auth = stack.enter_context(lmfoundry_server(threads, interval))
                name = "lmfoundry" if i == 0 else f"lmfoundry@{interval:g}ms"
                targets[name] = deployment(base, auth, "smollm2-135m-instruct", None)
            return interleaved(args, targets)
    finally:
        process.terminate()
        process.wait(30)


def run_llama_cpp_server(args: argparse.Namespace, threads: int) -> list[dict[str, Any]]:
    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "8192",
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
        # queue concurrent requests instead of cutting the running stream off (its default)
        "--interrupt_requests", "False",
    ]  # fmt: skip
    return _serve_and_load(args, command, port)


def _serve_and_load(
    args: argparse.Namespace, command: list[str], port: int
) -> list[dict[str, Any]]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", process)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return interleaved(args, {"server": (url, {})})["server"]
    finally:
        process.terminate()
        process.wait(30)


def onnx_folder(cache: Path) -> Path:
    """The bundled SmolLM2 built to int4 ONNX (once; later runs reuse the folder)."""
    from lmfoundry.catalog.onnx_build import build_onnx

    folder = cache / "SmolLM2-135M-Instruct-onnx"
    if not (folder / "genai_config.json").exists():
        gguf = smollm2_path()
        if gguf is None:
            raise RuntimeError("the bundled SmolLM2 GGUF is not installed")
        build_onnx(gguf, folder, model_id="SmolLM2-135M-Instruct", models_dir=cache)
    return folder


@contextlib.contextmanager
def lmfoundry_server(
    threads: int, stream_interval_ms: float | None = None, import_root: Path | None = None
) -> Iterator[tuple[str, dict[str, str]]]:
    """`lmfoundry up` on a fresh home, keys, quotas and metering on: (base URL, admin auth).
    `stream_interval_ms`: LMFOUNDRY_STREAM_INTERVAL_MS (default: the setting's default);
    `import_root`: a folder models may be registered from by path (LMFOUNDRY_IMPORT_ROOTS)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMFOUNDRY_")}
        env.update(
            LMFOUNDRY_HOME=home,
            LMFOUNDRY_PORT=str(port),
            LMFOUNDRY_ADMIN_TOKEN=TOKEN,
            LMFOUNDRY_ENGINE_THREADS=str(threads),
        )
        if stream_interval_ms is not None:
            env["LMFOUNDRY_STREAM_INTERVAL_MS"] = str(stream_interval_ms)
        if import_root is not None:
            env["LMFOUNDRY_IMPORT_ROOTS"] = str(import_root)
        process = subprocess.Popen(
            [sys.executable, "-m", "lmfoundry", "up"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/healthz", process)
            yield base, {"Authorization": f"Bearer {TOKEN}"}
        finally:
            process.terminate()
            process.wait(30)


def deployment(base: str, auth: dict[str, str], name: str, model: str | None) -> tuple[str, dict]:
    """(chat URL, headers) of serverless deployment `name`, created for `model` if given."""
    if model is not None:
        created = httpx.post(
            f"{base}/api/v1/projects/default/serverless-deployments",
            json={"name": name, "model": model},
            headers=auth,
            timeout=600,  # an adapter is converted to GGUF on its first resolution
        )
        created.raise_for_status()
    keys = httpx.get(
        f"{base}/api/v1/projects/default/serverless-deployments/{name}/keys", headers=auth
    ).json()
    return f"{base}/serverless/{name}/v1/chat/completions", {"api-key": keys["primary_key"]}


def run_lmfoundry(
    args: argparse.Namespace, threads: int, onnx: Path | None = None
) -> list[dict[str, Any]]:
    with lmfoundry_server(threads) as (base, auth):
        name, model = "smollm2-135m-instruct", None
        if onnx is not None:  # the same model on the onnx engine, in its own deployment
            imported = httpx.post(
                f"{base}/api/v1/catalog/import",
                json={"path": str(onnx), "id": "SmolLM2-135M-Instruct-onnx"},
                headers=auth,
            ).json()
            assert imported["engine"] == "onnx", imported
            name, model = "smollm2-onnx", imported["id"]
        return interleaved(args, {name: deployment(base, auth, name, model)})[name]


def lora_adapter(cache: Path) -> Path:
    """A LoRA adapter of SmolLM2 (rank 8 on the attention projections, random non-zero
    weights: what a fine-tune costs to serve does not depend on what it learnt, but its
    answers' lengths do, so the weights are small enough to keep them the base's), on the
    Hugging Face form of the bundled GGUF that fine-tuning uses. Made once under `cache`."""
    folder = cache / "SmolLM2-135M-Instruct-lora-r8-small"
    if (folder / "adapter_config.json").exists():
        return folder
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from finetune_throughput import base_dir
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir(cache)), config)
    with torch.no_grad():  # small: the text stays the base's, so answers are as long
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.mul_(0.02)
    model.save_pretrained(folder)
    return folder


def run_adapter(args: argparse.Namespace, threads: int) -> dict[str, list[dict[str, Any]]]:
    """The base and a registered adapter of it, each a serverless deployment of one server;
    the adapter runs on the base's llama-server (`--lora`, chosen per request)."""
    adapter = lora_adapter(args.onnx_cache)
    with lmfoundry_server(threads, import_root=adapter.parent) as (base, auth):
        registered = httpx.post(
            f"{base}/api/v1/projects/default/models",
            json={"name": "smol-lora", "path": str(adapter), "base_model": "SmolLM2-135M-Instruct"},
            headers=auth,
        )
        registered.raise_for_status()
        return interleaved(
            args,
            {
                "adapter base": deployment(base, auth, "smollm2-135m-instruct", None),
                "adapter": deployment(base, auth, "smol-lora", "smol-lora:1"),
            },
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=2, help="per client slot and round")
    parser.add_argument(
        "--rounds", type=int, default=7, help="rounds per concurrency, taken in turn"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--servers", nargs="+", choices=SERVERS, default=list(SERVERS), help="what to measure"
    )
    parser.add_argument(
        "--onnx-cache",
        type=Path,
        default=Path.home() / ".cache" / "lmfoundry-benchmarks",
        help="where the ONNX build of SmolLM2 is kept between runs",
    )
    parser.add_argument(
        "--stream-interval-ms",
        type=float,
        nargs="+",
        help="LMFOUNDRY_STREAM_INTERVAL_MS of the lmfoundry server(s) against llama-server; "
        "several values: one server each, in the same rounds (default: the setting's default)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    if "llama-server" in args.servers and "lmfoundry" in args.servers:
        results.update(run_against_llama_server(args, args.threads))
    if "llama_cpp.server" in args.servers:
        results["llama_cpp.server"] = run_llama_cpp_server(args, args.threads)
    elif "lmfoundry" in args.servers:
        results["lmfoundry"] = run_lmfoundry(args, args.threads)
    elif "llama-server" in args.servers:
        port = free_port()
        results["llama-server"] = _serve_and_load(
            args, llama_server_command(args.threads, port), port
        )
    if "onnx" in args.servers:
        from lmfoundry.catalog.onnx_build import check_build_deps
        from lmfoundry.errors import Unavailable

        try:
            check_build_deps()
        except Unavailable as exc:
            print(f"onnx: skipped ({exc.message})")
        else:
            results["onnx"] = run_lmfoundry(args, args.threads, onnx_folder(args.onnx_cache))
    if "adapter" in args.servers:
        results.update(run_adapter(args, args.threads))
    header = f"{'server':<16} {'conc':>4} {'tok/s':>7} {'ttft p50':>9} {'ttft p99':>9} "
    print(header + f"{'e2e p50':>9} {'e2e p99':>9}   (ms)")
    for name, rows in results.items():
        for r in rows:
            print(
                f"{name:<16} {r['concurrency']:>4} {r['tokens_per_s']:>7.1f} "
                f"{r['ttft_p50_ms']:>9.0f} {r['ttft_p99_ms']:>9.0f} "
                f"{r['e2e_p50_ms']:>9.0f} {r['e2e_p99_ms']:>9.0f}"
            )
    ratios: dict[str, dict[str, float]] = {}
    for label, (ours, theirs) in {
        "lmfoundry / llama-server": ("lmfoundry", "llama-server"),
        "lmfoundry / llama_cpp.server": ("lmfoundry", "llama_cpp.server"),
        **{
            f"{name} / llama-server": (name, "llama-server")
            for name in (results if "llama-server" in results else ())
            if name.startswith("lmfoundry@")
        },
        "onnx / llamacpp engine": ("onnx", "lmfoundry"),
        "adapter / its base": ("adapter", "adapter base"),
    }.items():
        if ours not in results or theirs not in results:
            continue
        into = ratios[label] = {}
        for a, b in zip(results[ours], results[theirs], strict=True):
            c = a["concurrency"]
            if a.get("interleaved") == b.get("interleaved") is not None:  # taken in turn
                tps, ttft = paired(a, b)
            else:
                tps = round(a["tokens_per_s"] / b["tokens_per_s"], 2)
                ttft = round(a["ttft_p50_ms"] - b["ttft_p50_ms"], 1)
            into[f"tokens_per_s_c{c}"] = tps
            into[f"ttft_p50_delta_ms_c{c}"] = ttft
            into[f"ttft_p99_c{c}"] = round(a["ttft_p99_ms"] / b["ttft_p99_ms"], 2)
        print(f"{label}: " + ", ".join(f"{k} {v}" for k, v in into.items()))
    primary = ratios.get("lmfoundry / llama-server", {})
    for c in args.concurrency:
        if f"tokens_per_s_c{c}" in primary:
            tps, ttft = primary[f"tokens_per_s_c{c}"], primary[f"ttft_p50_delta_ms_c{c}"]
            ok = tps >= 0.95 and (c != 1 or ttft <= 10)
            print(
                f"target at {c} client(s): tok/s {tps:.2f}x (>= 0.95x)"
                + (f", TTFT p50 {ttft:+.1f} ms (<= +10 ms)" if c == 1 else "")
                + (" met" if ok else " MISSED")
            )
    lora = ratios.get("adapter / its base", {})
    for c in args.concurrency:
        if f"tokens_per_s_c{c}" in lora:
            tps = lora[f"tokens_per_s_c{c}"]
            verdict = "met" if tps >= 0.8 else "MISSED"
            print(f"target for an adapter at {c} client(s): {tps:.2f}x its base's tok/s {verdict}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "threads": args.threads,
                    "results": results,
                    "ratios": ratios,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
