"""An instance process: one engine behind a small HTTP server on a unix socket.

    python -m lmfoundry.runtime.worker --socket PATH --spec JSON

`GET /health` answers once the model is loaded; `POST /generate` takes a
`GenerationRequest` and streams newline-delimited JSON deltas, ending with one that has a
`finish_reason` (or an `error`). The gateway closing the connection cancels the sequence.
The process exits when its parent (the server) goes away, so a killed server never leaves
instances behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lmfoundry.engines.base import Engine, EngineError, GenerationRequest
from lmfoundry.engines.registry import create_engine
from lmfoundry.runtime.spec import InstanceSpec

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Exit when the server dies: the kernel's parent-death signal, plus a watchdog thread for
    the moment between fork and prctl and for platforms without prctl."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def build_app(engine: Engine, spec: InstanceSpec, started: float) -> Starlette:
    async def health(_: Request) -> Response:
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return JSONResponse(
            {
                "status": "ok",
                "pid": os.getpid(),
                "engine": spec.engine,
                "model_path": spec.model_path,
                "uptime_s": round(time.monotonic() - started, 3),
                "peak_rss_mb": round(rss_kb / 1024, 1),
                **engine.stats(),
            }
        )

    async def generate(request: Request) -> Response:
        try:
            gen = GenerationRequest.from_dict(await request.json())
        except (KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"error": {"message": f"bad generate request: {exc}"}}, 400)
        return StreamingResponse(_stream(engine, gen), media_type="application/x-ndjson")

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/generate", generate, methods=["POST"]),
        ]
    )


async def _stream(engine: Engine, gen: GenerationRequest) -> AsyncIterator[str]:
    deltas = engine.generate(gen)
    try:
        async for delta in deltas:
            item: dict[str, Any] = {"text": delta.text, "n": delta.completion_tokens}
            if delta.finish_reason:
                item["finish_reason"] = delta.finish_reason
            yield json.dumps(item) + "\n"
    except EngineError as exc:
        yield (
            json.dumps({"error": {"message": exc.message, "param": exc.param, "kind": "invalid"}})
            + "\n"
        )
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmfoundry-instance")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--parent", type=int, default=os.getppid())
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)

    spec = InstanceSpec.from_json(args.spec)
    started = time.monotonic()
    try:
        engine = create_engine(spec.engine, spec.model_path, spec.options_dict)
    except Exception as exc:  # noqa: BLE001 - report any load failure to the supervisor
        print(f"instance failed to load {spec.model_path}: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)

    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)
    config = uvicorn.Config(
        build_app(engine, spec, started),
        uds=args.socket,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    asyncio.run(server.serve())
    asyncio.run(engine.aclose())


if __name__ == "__main__":
    main()
