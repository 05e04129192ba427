"""Instances: prefix reuse, memory, adapters on a shared base, and cold start.

    .venv/bin/python benchmarks/instances.py [--models-dir DIR] [--json out.json]

Each figure against its baseline in the same run:

  prefix reuse   time to first token of a request whose 1,000-token system prompt another
                 request already prefilled, on llama-server with its prompt cache (what
                 lmfoundry sends, `cache_prompt`) on (baseline: the same server with it off
                 for the request, which prefills it again)
  memory         resident memory of one llama-server instance process while it serves 1, 4
                 and 16 concurrent sequences (baseline: the instance idle after loading)
  adapters       resident memory of one transformers instance with 1 and with 4 LoRA adapters
                 of SmolLM2 loaded and used (baseline: the base model alone)
  cold start     first token of the first request to a serverless deployment scaled to zero,
                 through `lmfoundry up` (baseline: the same request once the instance is warm)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))


from lmfoundry.catalog.bundled import smollm2_path
from lmfoundry.engines.base import GenerationRequest, SamplingParams
from lmfoundry.engines.gguf import GGUFTokenizer

TOKEN = "lmf_pat_" + "i" * 43
SYSTEM = " ".join(f"Rule {i}: answer politely and briefly, citing rule {i}." for i in range(90))


def rss() -> int:
    """Resident memory of this process, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def first_token(engine: Any, prompt: list[int], max_tokens: int = 1) -> float:
    start = time.perf_counter()
    request = GenerationRequest(prompt=prompt, params=SamplingParams(max_tokens, temperature=0))
    async for _ in engine.generate(request):
        return time.perf_counter() - start
    return time.perf_counter() - start


async def complete(engine: Any, prompt: list[int], max_tokens: int = 4) -> None:
    """Run a request to its end (a sequence cut off early is not kept for reuse)."""
    request = GenerationRequest(prompt=prompt, params=SamplingParams(max_tokens, temperature=0))
    async for _ in engine.generate(request):
        pass


def server_rss(engine: Any) -> int:
    """Resident memory of an engine's llama-server process, bytes."""
    for line in Path(f"/proc/{engine.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def prefix_reuse() -> dict[str, Any]:
    from lmfoundry.runtime.llama_server import LlamaServerEngine, completion_body

    tok = GGUFTokenizer(smollm2_path(), None, 8192)

    def prompt(question: str) -> list[int]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        return tok.encode(tok.render(messages))

    first, second = prompt("What is rule 3?"), prompt("What is rule 7?")
    shared = next((i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), 0)
    out: dict[str, Any] = {"shared_prefix_tokens": shared}
    engine = LlamaServerEngine(smollm2_path(), max_sequences=1)
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=engine.socket), timeout=60) as http:
            for label, cache in (("no_reuse", False), ("reuse", True)):
                for tokens in (first, second):  # the second request's first token is timed
                    request = GenerationRequest(tokens, SamplingParams(1, temperature=0))
                    body = {**completion_body(request), "stream": False, "cache_prompt": cache}
                    start = time.perf_counter()
                    http.post("http://llama-server/completion", json=body).raise_for_status()
                    elapsed = time.perf_counter() - start
                out[f"ttft_{label}_ms"] = round(1000 * elapsed, 1)
    finally:
        engine.close()
    out["speedup"] = round(out["ttft_no_reuse_ms"] / out["ttft_reuse_ms"], 2)
    return out


def memory() -> dict[str, Any]:
    from lmfoundry.runtime.llama_server import LlamaServerEngine

    engine = LlamaServerEngine(smollm2_path())
    tok = GGUFTokenizer(smollm2_path(), None, 8192)
    prompt = tok.encode(tok.render([{"role": "user", "content": "Tell me a long story."}]))

    async def serve(n: int) -> int:
        peak = server_rss(engine)

        async def one() -> None:
            nonlocal peak
            request = GenerationRequest(prompt=prompt, params=SamplingParams(64, temperature=0))
            async for _ in engine.generate(request):
                peak = max(peak, server_rss(engine))

        await asyncio.gather(*(one() for _ in range(n)))
        return peak

    out: dict[str, Any] = {"idle_mb": round(server_rss(engine) / 2**20)}
    for n in (1, 4, 16):
        out[f"sequences_{n}_mb"] = round(asyncio.run(serve(n)) / 2**20)
    out["ratio_16_over_idle"] = round(out["sequences_16_mb"] / out["idle_mb"], 2)
    engine.close()
    return out


def adapters(models_dir: Path) -> dict[str, Any]:
    """In a child process, so the llamacpp measurements above do not count."""
    code = f"""
import asyncio, json, sys, tempfile
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from instances import rss, first_token
from finetune_throughput import base_dir
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from lmfoundry.engines.transformers import TransformersEngine
base = base_dir(Path({str(models_dir)!r}))
folder = Path(tempfile.mkdtemp())
for i in range(4):  # four adapters with random (non-zero) LoRA weights
    torch.manual_seed(i)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False))
    model.save_pretrained(folder / f"a{{i}}")
    del model
tok = AutoTokenizer.from_pretrained(base)
prompt = tok.apply_chat_template([{{"role": "user", "content": "Hi"}}], add_generation_prompt=True)
if not isinstance(prompt, list):
    prompt = prompt["input_ids"]
engine = TransformersEngine(base, n_threads=2)
async def use(adapter):
    from lmfoundry.engines.base import GenerationRequest, SamplingParams
    request = GenerationRequest(prompt=list(prompt), params=SamplingParams(4, temperature=0),
                                adapter=adapter)
    async for _ in engine.generate(request):
        pass
asyncio.run(use(None))
out = {{"base_mb": round(rss() / 2**20)}}
asyncio.run(use(str(folder / "a0")))
out["adapters_1_mb"] = round(rss() / 2**20)
for i in range(1, 4):
    asyncio.run(use(str(folder / f"a{{i}}")))
out["adapters_4_mb"] = round(rss() / 2**20)
out["ratio_4_over_1"] = round(out["adapters_4_mb"] / out["adapters_1_mb"], 3)
print("RESULT " + json.dumps(out))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"adapter measurement failed:\n{done.stdout}\n{done.stderr}")


def cold_start() -> dict[str, Any]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMFOUNDRY_")}
        env.update(LMFOUNDRY_HOME=home, LMFOUNDRY_PORT=str(port), LMFOUNDRY_ADMIN_TOKEN=TOKEN)
        process = subprocess.Popen(
            [sys.executable, "-m", "lmfoundry", "up"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("lmfoundry up did not start")
                time.sleep(0.1)
            name = "smollm2-135m-instruct"
            keys = httpx.get(
                f"{base}/api/v1/projects/default/serverless-deployments/{name}/keys",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ).json()
            url = f"{base}/serverless/{name}/chat/completions"
            headers = {"api-key": keys["primary_key"]}
            cold = _stream_first_token(url, headers)  # no instance yet: it starts now
            warm = min(_stream_first_token(url, headers) for _ in range(3))
        finally:
            process.terminate()
            process.wait(30)
    return {"cold_ms": round(1000 * cold), "warm_ms": round(1000 * warm, 1)}


def _stream_first_token(url: str, headers: dict[str, str]) -> float:
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 8,
        "stream": True,
        "temperature": 0,
    }
    start = time.perf_counter()
    with httpx.stream("POST", url, json=body, headers=headers, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                return time.perf_counter() - start
    return time.perf_counter() - start


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "lmfoundry-bench-models",
        help="Where the converted SmolLM2 folder is kept between runs.",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {
        "prefix_reuse": prefix_reuse(),
        "memory": memory(),
        "adapters": adapters(args.models_dir),
        "cold_start": cold_start(),
    }
    for section, figures in result.items():
        print(f"{section:<13} " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
