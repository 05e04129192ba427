"""The `Backend` interface: where instances run. Local worker processes (`local`), the
instances another process supervises (`remote`, for gateway processes), or Ray (`ray`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from lmfoundry.engines.base import Delta, GenerationRequest
from lmfoundry.runtime.spec import InstanceSpec


@dataclass
class InstanceInfo:
    """One instance as listings show it (the cluster page, `lmfoundry status`, /metrics),
    whichever backend runs it."""

    id: str
    group: str
    state: str
    pid: int | None
    active: int
    restarts: int
    started_at: float | None
    last_error: str | None
    slots: int | None = None  # requests it decodes at once (llama-server's --parallel)


class Instance(Protocol):
    id: str
    active: int

    def alive(self) -> bool: ...


class Group(Protocol):
    """The instances of one spec (or of one endpoint's shared base)."""

    key: str
    name: str
    instance_count: int
    in_use: int

    @property
    def instances(self) -> Sequence[Instance]: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]: ...

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One pooled, normalised vector per input (token ids), for embeddings models."""
        ...

    def ready(self) -> bool:
        """Whether an instance can take a request now, without waiting for a start."""
        ...

    async def start_all(self) -> None: ...

    async def scale(self, instance_count: int) -> None: ...


class Backend(Protocol):
    def group(
        self,
        spec: InstanceSpec,
        name: str,
        instance_count: int = 1,
        scale_to_zero: bool = True,
        key: str | None = None,
    ) -> Group: ...

    async def remove(self, key: str) -> None: ...

    def group_keys(self) -> list[str]: ...

    def start(self) -> None: ...

    def supervising(self) -> bool:
        """Whether this process's supervision loop runs (False in a gateway without one)."""
        ...

    async def shutdown(self) -> None: ...

    def describe(self) -> list[InstanceInfo]: ...

    async def engine_metrics(self) -> dict[str, dict[str, float]]:
        """Instance id -> the engine's own gauges (llama-server's `requests_processing`,
        `requests_deferred`), for instances this process supervises and can ask."""
        ...
