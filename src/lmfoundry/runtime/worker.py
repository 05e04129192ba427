"""An instance process: one engine behind a unix socket.

    python -m lmfoundry.runtime.worker --socket PATH --spec JSON

It speaks the newline-delimited JSON of `runtime.client`: `{"op": "health"}` answers once
the model is loaded; `{"op": "generate", "request": {...}}` streams the deltas of a
`GenerationRequest`, ending with one that has a `finish_reason` (or an `error`). The gateway
closing the connection mid-answer cancels the sequence. The process exits when its parent
(the server) goes away, so a killed server never leaves instances behind.

When the engine fails for good (its decode loop died), every request of it ends with an
`engine_failed` error item, the health check says `failed`, and the process exits with
`EXIT_ENGINE_FAILED` once those items are sent, so that the supervisor starts a new one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import AsyncGenerator
from typing import Any

from lmfoundry.engines.base import Engine, EngineDown, EngineError, GenerationRequest
from lmfoundry.engines.capabilities import create_engine
from lmfoundry.runtime.client import LINE_LIMIT
from lmfoundry.runtime.lifeline import die_with_parent
from lmfoundry.runtime.spec import InstanceSpec

STOP_GRACE_SECONDS = 5.0
FAILURE_POLL_SECONDS = 0.1  # how soon a failed engine is noticed
FAILURE_GRACE_SECONDS = 1.0  # for the failed requests' error items to reach the gateway
EXIT_ENGINE_FAILED = 70  # EX_SOFTWARE

log = logging.getLogger("lmfoundry.instance")


class Worker:
    def __init__(self, engine: Engine, spec: InstanceSpec, started: float) -> None:
        self.engine = engine
        self.spec = spec
        self.started = started
        self.connections: set[asyncio.Task[Any]] = set()
        self._waiting: set[asyncio.Task[Any]] = set()  # connections between two requests
        self.stopping = False

    def health(self) -> dict[str, Any]:
        return health(self.engine, self.spec, self.started)

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        try:
            while not self.stopping:
                line = await self._next_line(reader, task)
                if not line:
                    return  # the gateway closed it
                try:
                    message = json.loads(line)
                    op = message["op"]
                except (ValueError, KeyError, TypeError) as exc:
                    await _send(writer, _error(f"bad message: {exc}", "bad_request"))
                    return
                if op == "health":
                    await _send(writer, self.health())
                elif op == "generate":
                    if not await self._generate(message.get("request"), reader, writer):
                        return  # the gateway went away mid-answer
                else:
                    await _send(writer, _error(f"unknown op {op!r}", "bad_request"))
                    return
        except (ConnectionError, ValueError):
            pass  # a gateway gone, or a line over the limit: drop the connection
        finally:
            writer.close()
            if task is not None:
                self.connections.discard(task)

    async def _next_line(
        self, reader: asyncio.StreamReader, task: asyncio.Task[Any] | None
    ) -> bytes:
        """A connection's next request; `stop_waiting` cancels the wait."""
        if task is None:
            return await reader.readline()
        self._waiting.add(task)
        try:
            return await reader.readline()
        finally:
            self._waiting.discard(task)

    def stop_waiting(self) -> None:
        """Stopping: close the connections that wait for their next request now (a gateway's
        pooled ones); those answering one finish it first."""
        self.stopping = True
        for task in self._waiting:
            task.cancel()

    async def _generate(
        self, raw: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Stream one request; False if the connection closed before its end."""
        try:
            request = GenerationRequest.from_dict(raw)
        except (KeyError, TypeError, ValueError) as exc:
            await _send(writer, _error(f"bad generate request: {exc}", "bad_request"))
            return True
        streaming = asyncio.create_task(self._stream(request, writer))
        # The gateway sends nothing while it reads an answer: anything read here is EOF.
        closed = asyncio.create_task(reader.read(1))
        done, _ = await asyncio.wait({streaming, closed}, return_when=asyncio.FIRST_COMPLETED)
        if streaming in done:
            closed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closed
            streaming.result()
            return True
        streaming.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await streaming
        return False

    async def _stream(self, request: GenerationRequest, writer: asyncio.StreamWriter) -> None:
        async with contextlib.aclosing(items(self.engine, request)) as answer:
            async for item in answer:
                await _send(writer, item)


def health(engine: Engine, spec: InstanceSpec, started: float) -> dict[str, Any]:
    """What an instance says of itself (a local worker or a Ray Serve replica)."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    failure = engine.failure
    return {
        "status": "ok" if failure is None else "failed",
        "failure": failure,
        "pid": os.getpid(),
        "engine": spec.engine,
        "model_path": spec.model_path,
        "uptime_s": round(time.monotonic() - started, 3),
        "peak_rss_mb": round(rss_kb / 1024, 1),
        **engine.stats(),
    }


async def items(engine: Engine, request: GenerationRequest) -> AsyncGenerator[dict[str, Any], None]:
    """A request's answer as the wire's items: the text of each delta, the completion tokens
    so far and the finish reason at the end; or, last, one `error` item: `invalid` if the
    engine refuses the request, `engine_failed` if the engine can answer nothing more,
    `failed` if this request failed in an engine that goes on."""
    deltas = engine.generate(request)
    try:
        async for delta in deltas:
            yield delta.to_item()
    except EngineError as exc:
        yield _error(exc.message, "invalid", exc.param)
    except EngineDown as exc:
        yield _error(_reason(exc), "engine_failed")
    except Exception as exc:  # the gateway must hear why, not see the line drop
        log.exception("a request failed in the instance")
        yield _error(_reason(exc), "failed")
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]


def _reason(exc: BaseException) -> str:
    """A short, one-line account of an engine failure for the caller (no traceback)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return (first or type(exc).__name__)[:300]


def _error(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "param": param, "kind": kind}}


async def _send(writer: asyncio.StreamWriter, item: dict[str, Any]) -> None:
    writer.write(json.dumps(item).encode() + b"\n")
    await writer.drain()


async def serve(worker: Worker, path: str) -> int:
    """Serve until SIGTERM/SIGINT, then let requests in flight finish (a few seconds); or
    until the engine fails, then give its requests' error items a moment to go out. The
    process's exit code: 0, or `EXIT_ENGINE_FAILED`."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await asyncio.start_unix_server(worker.serve_connection, path, limit=LINE_LIMIT)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = asyncio.create_task(_watch_failure(worker.engine, stop))
    async with server:
        await stop.wait()
        server.close()
        worker.stop_waiting()
        failed = worker.engine.failure is not None
        if worker.connections:
            grace = FAILURE_GRACE_SECONDS if failed else STOP_GRACE_SECONDS
            await asyncio.wait(set(worker.connections), timeout=grace)
        for task in worker.connections:  # past the grace (newer Pythons' server waits on them)
            task.cancel()
    watch.cancel()
    await worker.engine.aclose()
    return EXIT_ENGINE_FAILED if failed else 0


async def _watch_failure(engine: Engine, stop: asyncio.Event) -> None:
    """Stop serving once the engine has failed for good, so that the supervisor restarts the
    instance instead of sending it requests it can only refuse."""
    while engine.failure is None:
        await asyncio.sleep(FAILURE_POLL_SECONDS)
    log.error("instance exits: %s", engine.failure)
    stop.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmfoundry-instance")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--parent", type=int, default=os.getppid())
    args = parser.parse_args(argv)
    die_with_parent(args.parent, signal.SIGTERM)

    spec = InstanceSpec.from_json(args.spec)
    started = time.monotonic()
    try:
        engine = create_engine(spec.engine, spec.model_path, spec.options_dict)
    except Exception as exc:  # noqa: BLE001 - report any load failure to the supervisor
        print(f"instance failed to load {spec.model_path}: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)

    sys.exit(asyncio.run(serve(Worker(engine, spec, started), args.socket)))


if __name__ == "__main__":
    main()
