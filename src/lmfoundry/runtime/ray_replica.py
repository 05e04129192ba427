"""An instance as a Ray Serve replica: the same engine a local worker process holds
(`runtime.worker`), behind a Serve deployment instead of a unix socket.

The `ray` backend deploys one Serve application per instance group from the import path
`lmfoundry.runtime.ray_replica:build` with the group's spec as its argument, so Serve sees
the same code version on every deploy and a change of `num_replicas` starts or stops only
the replicas it adds or removes. All adapters of a base ride on its replicas: the request
names the adapter and the engine loads it on first use (as in a local instance).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from lmfoundry.engines.base import GenerationRequest
from lmfoundry.engines.capabilities import create_engine
from lmfoundry.runtime.spec import InstanceSpec
from lmfoundry.runtime.worker import health, items

DEPLOYMENT = "Instance"


class Instance:
    def __init__(self, spec: str) -> None:
        self.spec = InstanceSpec.from_json(spec)
        self.started = time.monotonic()
        self.engine = create_engine(self.spec.engine, self.spec.model_path, self.spec.options_dict)

    async def generate(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The items of one request, as a local instance sends them (`runtime.worker`)."""
        async with contextlib.aclosing(
            items(self.engine, GenerationRequest.from_dict(payload))
        ) as answer:
            async for item in answer:
                yield item

    async def health(self) -> dict[str, Any]:
        return health(self.engine, self.spec, self.started)

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose engine failed is replaced."""
        if self.engine.failure is not None:
            raise RuntimeError(self.engine.failure)

    async def __del__(self) -> None:
        await self.engine.aclose()


def build(args: dict[str, Any]) -> serve.Application:
    """The application builder `serve deploy` configs name: `args` is `{"spec": JSON}`."""
    return serve.deployment(name=DEPLOYMENT)(Instance).bind(args["spec"])
