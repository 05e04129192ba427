"""Gateway overhead: what auth + quota + routing + metering cost per request.

Runs, in one go and on loopback:
  bare       a bare ASGI app (Starlette) that answers POST with the body echo would return
  off        `lmfoundry up` with the echo engine, quotas and metering switched off
  on         the same server with quotas and metering on (the default)
and sends the same 1,000 chat requests to each, one at a time (latency) and 16 at a time
(throughput). Prints a table with p50/p99 latency, requests/s and the ratios, and writes
JSON with --json.

    .venv/bin/python benchmarks/gateway_overhead.py [--requests 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import ADMIN_TOKEN, free_port, start_server, stop_server  # noqa: E402

BODY = {
    "messages": [{"role": "user", "content": "hello gateway overhead benchmark"}],
    "max_tokens": 16,
}

BARE_APP = """
import json, time, uuid
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def chat(request):
    body = await request.json()
    text = body["messages"][-1]["content"]
    answer = {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
              "created": int(time.time()), "model": "echo",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                   "tool_calls": None},
                           "finish_reason": "stop", "logprobs": None}],
              "usage": {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}}
    return Response(json.dumps(answer), media_type="application/json")

app = Starlette(routes=[Route("/chat/completions", chat, methods=["POST"])])
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def load(
    url: str, headers: dict[str, str], requests: int, concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for _ in range(20):  # warm up connections, instances and caches
            (await client.post(url, json=BODY, headers=headers)).raise_for_status()

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                response = await client.post(url, json=BODY, headers=headers)
                latencies.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
        "requests_per_s": requests / elapsed,
    }


def run_bare(requests: int) -> dict[str, dict[str, float]]:
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "bare_app.py").write_text(BARE_APP)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare_app:app",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=folder,
        )
        try:
            url = f"http://127.0.0.1:{port}/chat/completions"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.post(url, json=BODY, timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            return {f"c{c}": asyncio.run(load(url, {}, requests, c)) for c in (1, 16)}
        finally:
            server.terminate()
            server.wait()


def run_lmfoundry(requests: int, enabled: bool) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as folder:
        flag = "true" if enabled else "false"
        server = start_server(
            Path(folder) / "home",
            env={
                "LMFOUNDRY_QUOTAS_ENABLED": flag,
                "LMFOUNDRY_METERING_ENABLED": flag,
                "LMFOUNDRY_LOG_LEVEL": "warning",
            },
        )
        try:
            with server.client() as c:
                c.post(
                    "/api/v1/projects/default/serverless-deployments",
                    json={
                        "name": "bench",
                        "model": "echo",
                        "requests_per_minute": 1_000_000,
                        "tokens_per_minute": 100_000_000,
                    },
                ).raise_for_status()
                key = c.get("/api/v1/projects/default/serverless-deployments/bench/keys").json()[
                    "primary_key"
                ]
            url = f"{server.url}/serverless/bench/chat/completions"
            return {f"c{c}": asyncio.run(load(url, {"api-key": key}, requests, c)) for c in (1, 16)}
        finally:
            stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("LMFOUNDRY_ADMIN_TOKEN", ADMIN_TOKEN)
    results = {
        "bare": run_bare(args.requests),
        "off": run_lmfoundry(args.requests, enabled=False),
        "on": run_lmfoundry(args.requests, enabled=True),
    }
    print(f"{'setup':<6} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for name, by_conc in results.items():
        for conc, r in by_conc.items():
            print(
                f"{name:<6} {conc[1:]:>4} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                f"{r['requests_per_s']:8.0f}"
            )
    ratios = {
        "added_p50_ms_vs_bare": results["on"]["c1"]["p50_ms"] - results["bare"]["c1"]["p50_ms"],
        "added_p50_ms_quotas_metering": results["on"]["c1"]["p50_ms"]
        - results["off"]["c1"]["p50_ms"],
        "throughput_on_over_off_c16": results["on"]["c16"]["requests_per_s"]
        / results["off"]["c16"]["requests_per_s"],
        "throughput_on_over_bare_c16": results["on"]["c16"]["requests_per_s"]
        / results["bare"]["c16"]["requests_per_s"],
    }
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
