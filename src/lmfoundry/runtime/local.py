"""Groups of local instances (`runtime.instance`: llama-server or worker processes),
supervised by the server.

A group holds the instances of one `InstanceSpec`: serverless groups start on the first
request and stop after an idle period; endpoint groups keep `instance_count` instances running.
The supervisor loop restarts instances that die and stops idle ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmfoundry.engines.base import Delta, GenerationRequest
from lmfoundry.errors import EngineFailed, Unavailable
from lmfoundry.runtime import llama_server
from lmfoundry.runtime.backend import InstanceInfo
from lmfoundry.runtime.directory import STALE_SECONDS, InstanceDirectory, Published
from lmfoundry.runtime.instance import LocalInstance
from lmfoundry.runtime.periodic import Periodic
from lmfoundry.runtime.retry import INSTANCES
from lmfoundry.runtime.spec import InstanceSpec, socket_dir

log = logging.getLogger("lmfoundry.runtime")

SUPERVISE_SECONDS = 0.5
HEARTBEAT_SECONDS = STALE_SECONDS / 4  # an unchanged instance list is published this often


class InstanceGroup:
    """The instances of one spec."""

    def __init__(
        self,
        backend: LocalBackend,
        key: str,
        spec: InstanceSpec,
        name: str,
        instance_count: int,
        scale_to_zero: bool,
    ) -> None:
        self.backend = backend
        self.key = key
        self.spec = spec
        self.name = name
        self.instance_count = instance_count
        self.scale_to_zero = scale_to_zero
        self.instances: list[LocalInstance] = []
        self.last_used = time.monotonic()
        self.in_use = 0
        self._next_index = 0
        self._resize()

    def _resize(self) -> None:
        while len(self.instances) < self.instance_count:
            self.instances.append(
                LocalInstance(
                    self.key,
                    self.name,
                    self.spec,
                    self._next_index,
                    self.backend.sockets,
                    self.backend.logs,
                    self.backend.homes,
                )
            )
            self._next_index += 1

    async def acquire(self) -> LocalInstance:
        """A ready instance with the fewest active requests, starting instances if needed."""
        self.last_used = time.monotonic()
        ready = [i for i in self.instances if i.ready()]
        if not ready:
            results = await asyncio.gather(
                *(i.ensure_started(self.backend.start_timeout) for i in self.instances),
                return_exceptions=True,
            )
            ready = [i for i in self.instances if i.ready()]
            if not ready:
                error = next((r for r in results if isinstance(r, BaseException)), None)
                if isinstance(error, Unavailable):
                    raise error
                raise Unavailable(
                    f"No healthy instance for {self.name}: {error}", headers={"Retry-After": "5"}
                )
        return min(ready, key=lambda i: i.active)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Run on the least busy instance. If that instance dies before the first delta, the
        request moves to another ready one, so a lost instance costs no request that had
        not started answering."""
        self.in_use += 1
        try:
            attempt = 0
            while True:
                attempt += 1
                instance = await self.acquire()
                started = False
                try:
                    async for delta in instance.generate(request):
                        started = True
                        yield delta
                    return
                except EngineFailed:
                    if not INSTANCES.again(attempt, started, self.ready()):
                        raise
                    log.warning(
                        "instance %s failed before answering; retrying elsewhere", instance.id
                    )
        finally:
            self.in_use -= 1
            self.last_used = time.monotonic()

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """Embed on the least busy instance; nothing has reached the caller if that one
        dies, so the request moves to another ready one."""
        self.in_use += 1
        try:
            attempt = 0
            while True:
                attempt += 1
                instance = await self.acquire()
                try:
                    return await instance.embed(inputs)
                except EngineFailed:
                    if not INSTANCES.again(attempt, ready=self.ready()):
                        raise
                    log.warning("instance %s failed embedding; retrying elsewhere", instance.id)
        finally:
            self.in_use -= 1
            self.last_used = time.monotonic()

    def ready(self) -> bool:
        """Whether an instance can take a request now, without a start."""
        return any(i.ready() for i in self.instances)

    async def start_all(self) -> None:
        """Start every instance and wait until all are ready (deployments start eagerly)."""
        self.last_used = time.monotonic()
        results = await asyncio.gather(
            *(i.ensure_started(self.backend.start_timeout) for i in self.instances),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def scale(self, instance_count: int) -> None:
        """Grow by starting instances; shrink by stopping the idlest ones once drained."""
        self.instance_count = instance_count
        if len(self.instances) < instance_count:
            self._resize()
            await self.start_all()
            return
        while len(self.instances) > instance_count:
            victim = min(reversed(self.instances), key=lambda i: i.active)
            self.instances.remove(victim)
            while victim.active:
                await asyncio.sleep(0.05)
            await victim.stop()

    async def supervise(self, idle_seconds: float) -> None:
        idle = time.monotonic() - self.last_used
        for instance in self.instances:
            if (
                instance.state in ("ready", "starting")
                and not instance.alive()
                and (instance.process is not None or instance.state == "ready")
            ):
                instance.mark_dead()
            if self.scale_to_zero and idle > idle_seconds and self.in_use == 0:
                if instance.state == "ready":
                    log.info("stopping idle instance %s", instance.id)
                    await instance.stop()
                continue
            if instance.state == "failed" and (not self.scale_to_zero or idle < idle_seconds):
                instance.restarts += 1
                with contextlib.suppress(Exception):
                    await instance.ensure_started(self.backend.start_timeout)

    async def stop(self) -> None:
        await asyncio.gather(*(i.stop() for i in self.instances), return_exceptions=True)


class LocalBackend:
    """Runs instances as child processes of the server."""

    def __init__(
        self,
        home: Path,
        start_timeout: float,
        idle_seconds: float,
        directory: InstanceDirectory | None = None,
    ) -> None:
        self.directory = directory  # publishes instances for gateway processes
        self.sockets = socket_dir(home)
        self.logs = home / "logs" / "instances"
        self.homes = home / "run" / "instances"
        self.start_timeout = start_timeout
        self.idle_seconds = idle_seconds
        self.groups: dict[str, InstanceGroup] = {}
        self._loop = Periodic("supervising instances", SUPERVISE_SECONDS, self._supervise, log)
        self._starting: set[asyncio.Task[Any]] = set()
        self._published: list[Published] | None = None
        self._published_at = 0.0

    def group(
        self,
        spec: InstanceSpec,
        name: str,
        instance_count: int = 1,
        scale_to_zero: bool = True,
        key: str | None = None,
    ) -> InstanceGroup:
        """The group for `key` (default: the spec's own key, shared by every serverless
        deployment of the same weights), created on first use."""
        key = key or spec.key
        group = self.groups.get(key)
        if group is None:
            group = InstanceGroup(self, key, spec, name, instance_count, scale_to_zero)
            self.groups[key] = group
        return group

    def group_keys(self) -> list[str]:
        return list(self.groups)

    async def remove(self, key: str) -> None:
        """Stop a group's instances once their requests are done, and forget it."""
        group = self.groups.pop(key, None)
        if group is None:
            return
        while group.in_use:
            await asyncio.sleep(0.05)
        await group.stop()

    def start(self) -> None:
        self._loop.start()

    def supervising(self) -> bool:
        return self._loop.running()

    async def _supervise(self) -> None:
        if self.directory is not None:
            try:
                await self._share()
            except Exception:  # the database may be briefly unavailable: next tick
                log.exception("publishing instances failed")
        for group in list(self.groups.values()):
            try:
                await group.supervise(self.idle_seconds)
            except Exception:  # one group's trouble does not stop the others' supervision
                log.exception("supervising %s failed", group.name)

    async def _share(self) -> None:
        """Publish this supervisor's instances and start groups gateways asked for."""
        directory = self.directory
        if directory is None:
            return
        published = [
            Published(
                id=i.id,
                group_key=g.key,
                address=str(i.socket),
                state=i.state,
                pid=i.process.pid if i.process is not None else None,
            )
            for g in self.groups.values()
            for i in g.instances
            if i.state != "stopped"
        ]
        # A changed list at once; an unchanged one as a heartbeat, often enough that readers
        # never take it for a dead supervisor's (each write is a transaction, twice a second
        # otherwise, and costs the decoding threads CPU they wait for).
        now = time.monotonic()
        due = published != self._published or now - self._published_at >= HEARTBEAT_SECONDS
        demands = await asyncio.to_thread(self._exchange, directory, published if due else None)
        if due:
            self._published, self._published_at = published, now
        now_wall, now_mono = datetime.now(UTC), time.monotonic()
        for key, spec, name, last_used in demands:
            group = self.groups.get(key)
            if group is None:
                wanted = InstanceSpec.make(spec["engine"], spec["model_path"], spec.get("options"))
                group = self.group(wanted, name, key=key)
                task = asyncio.create_task(group.acquire())
                task.add_done_callback(_log_failure)
                self._starting.add(task)
                task.add_done_callback(self._starting.discard)
            used = now_mono - (now_wall - last_used).total_seconds()
            group.last_used = max(group.last_used, used)

    def _exchange(
        self, directory: InstanceDirectory, published: list[Published] | None
    ) -> list[tuple[str, dict[str, Any], str, datetime]]:
        """Publish (unless None) and read the gateways' demands: one trip to a thread."""
        if published is not None:
            directory.publish(published)
        return directory.demands(self.idle_seconds)

    async def shutdown(self) -> None:
        await self._loop.stop()
        await asyncio.gather(*(g.stop() for g in self.groups.values()), return_exceptions=True)
        if self.directory is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.directory.withdraw)

    def describe(self) -> list[InstanceInfo]:
        return [i.info(g.name) for g in self.groups.values() for i in g.instances]

    async def engine_metrics(self) -> dict[str, dict[str, float]]:
        """llama-server's gauges of every ready GGUF instance, asked at once (1 s each); an
        instance that does not answer is left out of this scrape."""
        asked = [
            (i.id, i._client)
            for g in list(self.groups.values())
            for i in list(g.instances)
            if i.state == "ready" and isinstance(i._client, llama_server.LlamaServerClient)
        ]
        answers = await asyncio.gather(
            *(client.engine_metrics() for _, client in asked), return_exceptions=True
        )
        return {
            id: answer
            for (id, _), answer in zip(asked, answers, strict=True)
            if isinstance(answer, dict)
        }


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("starting a group a gateway asked for failed: %s", task.exception())
