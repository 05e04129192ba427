"""An instance as a Ray Serve replica: the same engine a local worker process holds
(`runtime.worker`), behind a Serve deployment instead of a unix socket.

The `ray` backend deploys one Serve application per instance group from the import path
`lmfoundry.runtime.ray_replica:build` with the group's spec as its argument, so Serve sees
the same code version on every deploy and a change of `num_replicas` starts or stops only
the replicas it adds or removes. All adapters of a base ride on its replicas: the request
names the adapter and the engine loads it on first use (as in a local instance).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from lmfoundry.engines.base import EngineError, GenerationRequest
from lmfoundry.engines.registry import create_engine
from lmfoundry.runtime.spec import InstanceSpec

DEPLOYMENT = "Instance"


class Instance:
    def __init__(self, spec: str) -> None:
        self.spec = InstanceSpec.from_json(spec)
        self.started = time.monotonic()
        self.engine = create_engine(self.spec.engine, self.spec.model_path, self.spec.options_dict)

    async def generate(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The deltas of one request, as the worker's NDJSON lines (`runtime.client` reads
        the same shape): text, completion tokens so far, and the finish reason at the end;
        or one `error` item for a request the engine refuses."""
        deltas = self.engine.generate(GenerationRequest.from_dict(payload))
        try:
            async for delta in deltas:
                item: dict[str, Any] = {"text": delta.text, "n": delta.completion_tokens}
                if delta.finish_reason:
                    item["finish_reason"] = delta.finish_reason
                yield item
        except EngineError as exc:
            yield {"error": {"message": exc.message, "param": exc.param}}
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]

    async def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "pid": os.getpid(),
            "engine": self.spec.engine,
            "model_path": self.spec.model_path,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **self.engine.stats(),
        }

    async def __del__(self) -> None:
        await self.engine.aclose()


def build(args: dict[str, Any]) -> serve.Application:
    """The application builder `serve deploy` configs name: `args` is `{"spec": JSON}`."""
    return serve.deployment(Instance, name=DEPLOYMENT).bind(args["spec"])
