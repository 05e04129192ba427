"""Instances seen from a gateway process that supervises none (`lmfoundry up
--no-supervisor`): it routes to the instances the supervisor publishes in the database,
and asks the supervisor for groups that are not running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Sequence

from lmfoundry.engines.base import Delta, GenerationRequest
from lmfoundry.errors import EngineFailed, Unavailable
from lmfoundry.runtime.backend import InstanceInfo
from lmfoundry.runtime.client import InstanceLost
from lmfoundry.runtime.directory import InstanceDirectory, Published
from lmfoundry.runtime.instance import Client, instance_client
from lmfoundry.runtime.llama_server import LlamaServerClient
from lmfoundry.runtime.retry import INSTANCES
from lmfoundry.runtime.spec import InstanceSpec

log = logging.getLogger("lmfoundry.runtime")

REFRESH_SECONDS = 0.5  # how stale a gateway's view of the instances may be
TOUCH_SECONDS = 5.0  # how often a gateway tells the supervisor a group is still in use
WAIT_POLL_SECONDS = 0.1


class RemoteInstance:
    def __init__(self, published: Published, client: Client) -> None:
        self.id = published.id
        self.published = published
        self.client = client
        self.active = 0
        self.lost = False

    def alive(self) -> bool:
        return not self.lost

    def info(self, group: str) -> InstanceInfo:
        return InstanceInfo(
            id=self.id,
            group=group,
            state=self.published.state,
            pid=self.published.pid,
            active=self.active,
            restarts=0,
            started_at=None,
            last_error=None,
        )


class RemoteGroup:
    def __init__(
        self,
        backend: RemoteBackend,
        key: str,
        spec: InstanceSpec,
        name: str,
        instance_count: int,
        scale_to_zero: bool,
    ) -> None:
        self.backend = backend
        self.scale_to_zero = scale_to_zero  # serverless: ask the supervisor to start it
        self.key = key
        self.spec = spec
        self.name = name
        self.instance_count = instance_count
        self.in_use = 0
        self.instances: list[RemoteInstance] = []
        self._refreshed = 0.0
        self._touched = 0.0

    async def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._refreshed < REFRESH_SECONDS:
            return
        self._refreshed = now
        published = await asyncio.to_thread(self.backend.directory.ready, self.key)
        known = {i.id: i for i in self.instances}
        self.instances = [
            known[p.id]
            if p.id in known and not known[p.id].lost
            else RemoteInstance(p, self.backend.client(p.address, self.spec))
            for p in published
        ]

    async def _touch(self) -> None:
        """Ask for the group (scale from zero), or say it is still in use."""
        now = time.monotonic()
        if now - self._touched < TOUCH_SECONDS:
            return
        self._touched = now
        await asyncio.to_thread(
            self.backend.directory.demand, self.key, json.loads(self.spec.to_json()), self.name
        )

    async def acquire(self) -> RemoteInstance:
        if self.scale_to_zero:  # endpoint groups are started by the supervisor's fleet
            await self._touch()
        await self._refresh()
        deadline = time.monotonic() + self.backend.start_timeout
        while not [i for i in self.instances if i.alive()]:
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"No instance of {self.name} became ready; check the "
                    "supervisor (`lmfoundry up`) and its logs.",
                    headers={"Retry-After": "5"},
                )
            await asyncio.sleep(WAIT_POLL_SECONDS)
            await self._refresh(force=True)
        return min((i for i in self.instances if i.alive()), key=lambda i: i.active)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        self.in_use += 1
        try:
            attempt = 0
            while True:
                attempt += 1
                instance = await self.acquire()
                started = False
                instance.active += 1
                try:
                    async for delta in instance.client.generate(request):
                        started = True
                        yield delta
                    return
                except InstanceLost as exc:
                    instance.lost = True
                    if not INSTANCES.again(attempt, started, self.ready()):
                        raise EngineFailed(
                            f"Instance {instance.id} of {self.name} failed while answering "
                            f"({exc}); its supervisor restarts it. Retry the request in a few "
                            "seconds.",
                            headers={"Retry-After": "2"},
                        ) from exc
                finally:
                    instance.active -= 1
        finally:
            self.in_use -= 1

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One vector per input (token ids) from an instance's embeddings mode; a lost
        instance's request moves to another (nothing reached the caller)."""
        self.in_use += 1
        try:
            attempt = 0
            while True:
                attempt += 1
                instance = await self.acquire()
                client = instance.client
                if not isinstance(client, LlamaServerClient):
                    raise Unavailable(f"The {self.spec.engine} engine does not compute embeddings.")
                instance.active += 1
                try:
                    return await client.embed(inputs)
                except InstanceLost as exc:
                    instance.lost = True
                    if not INSTANCES.again(attempt, ready=self.ready()):
                        raise EngineFailed(
                            f"Instance {instance.id} of {self.name} failed while embedding "
                            f"({exc}); its supervisor restarts it. Retry the request in a few "
                            "seconds.",
                            headers={"Retry-After": "2"},
                        ) from exc
                finally:
                    instance.active -= 1
        finally:
            self.in_use -= 1

    def ready(self) -> bool:
        return any(i.alive() for i in self.instances)

    async def start_all(self) -> None:
        await self.acquire()

    async def scale(self, instance_count: int) -> None:
        self.instance_count = instance_count  # the supervisor sizes the group; gateways only route


class RemoteBackend:
    """The `LocalBackend` interface for gateway processes."""

    def __init__(self, directory: InstanceDirectory, start_timeout: float) -> None:
        self.directory = directory
        self.start_timeout = start_timeout
        self.groups: dict[str, RemoteGroup] = {}
        self._clients: dict[str, Client] = {}

    def client(self, address: str, spec: InstanceSpec) -> Client:
        if address not in self._clients:
            self._clients[address] = instance_client(spec, address)
        return self._clients[address]

    def group(
        self,
        spec: InstanceSpec,
        name: str,
        instance_count: int = 1,
        scale_to_zero: bool = True,
        key: str | None = None,
    ) -> RemoteGroup:
        key = key or spec.key
        if key not in self.groups:
            self.groups[key] = RemoteGroup(self, key, spec, name, instance_count, scale_to_zero)
        return self.groups[key]

    def group_keys(self) -> list[str]:
        return list(self.groups)

    async def remove(self, key: str) -> None:
        self.groups.pop(key, None)  # the supervisor stops instances; gateways forget them

    def start(self) -> None:
        return None

    def supervising(self) -> bool:
        return False  # the supervisor is another process, met only through the database

    async def engine_metrics(self) -> dict[str, dict[str, float]]:
        return {}  # the supervisor exports them: summed over processes, each counts once

    async def shutdown(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()

    def describe(self) -> list[InstanceInfo]:
        return [
            InstanceInfo(
                id=p.id,
                group=p.group_key,
                state=p.state,
                pid=p.pid,
                active=0,
                restarts=0,
                started_at=None,
                last_error=None,
            )
            for p in self.directory.all()
        ]
