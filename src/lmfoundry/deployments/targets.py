"""Targets as the data plane serves them: what a request is sent to (a serverless deployment
or an online endpoint), its quota, and the deployments that may answer it.

`ServerlessService.serving_target` and `EndpointService.serving_target` build one `Target`
from the database; both cache it and forget it on every change made through this process
(through another gateway process, within `TARGET_CACHE_SECONDS`).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from cachetools import TTLCache

from lmfoundry.errors import NotFound, Unavailable
from lmfoundry.quotas.service import Quota
from lmfoundry.quotas.window import Limits

TargetKind = Literal["serverless", "endpoint"]
TARGET_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class DeploymentState:
    """An online endpoint's deployment as the fleet runs it."""

    id: int
    endpoint: str
    name: str
    project_id: int
    model: str
    instance_count: int
    request_settings: dict[str, int]
    generation: int


@dataclass(frozen=True)
class Deployment:
    """One deployment a target's requests may go to. A serverless deployment is its own
    only deployment; an online endpoint's come with the `state` the fleet runs."""

    name: str
    model: str  # a catalog id or a registered `name:version`
    price_input_per_1k: float | None = None  # USD; None: the model card's price
    price_output_per_1k: float | None = None
    state: DeploymentState | None = None  # an endpoint deployment's; None: serverless


@dataclass(frozen=True)
class Target:
    """What a data-plane request is sent to: the key must open it, its quota admits the
    request, and its traffic split picks the deployment that answers."""

    kind: TargetKind
    id: int
    name: str
    project_id: int
    limits: Limits
    deployments: dict[str, Deployment]
    traffic: dict[str, int]  # deployment -> percent of requests
    mirror: dict[str, int] = field(default_factory=dict)  # deployment -> percent copied

    @property
    def quota(self) -> Quota:
        return Quota(f"{self.kind}:{self.id}", self.name, self.limits)

    def pick(self, header: str | None, rng: random.Random) -> tuple[Deployment, Deployment | None]:
        """The deployment that answers, by the traffic split or the
        `azureml-model-deployment` header, and the one that gets a mirrored copy (if any)."""
        if header:
            chosen = self.deployments.get(header)
            if chosen is None:
                known = ", ".join(sorted(self.deployments)) or "none"
                raise NotFound(
                    f"Endpoint {self.name!r} has no deployment {header!r} "
                    f"(azureml-model-deployment header); deployments: {known}."
                )
            return chosen, None  # a targeted request bypasses the split and the mirror
        live = {n: v for n, v in self.traffic.items() if v and n in self.deployments}
        if not live:
            raise Unavailable(
                f"Endpoint {self.name!r} sends 0% of traffic to every deployment; set "
                "traffic (e.g. `lmfoundry endpoints traffic NAME blue=100`) or target one "
                "with the azureml-model-deployment header.",
                headers={"Retry-After": "10"},
            )
        names = sorted(live)
        chosen = self.deployments[rng.choices(names, [live[n] for n in names])[0]]
        mirror = None
        for name, share in self.mirror.items():
            if name in self.deployments and rng.uniform(0, 100) < share:
                mirror = self.deployments[name]
        return chosen, mirror


class TargetCache:
    """Targets by name for `TARGET_CACHE_SECONDS`, read on every request; `changing()` goes
    around every change so that this process never serves a stale one."""

    def __init__(self, read: Callable[[str], Target]) -> None:
        self._read = read
        self._targets: TTLCache[str, Target] = TTLCache(1024, TARGET_CACHE_SECONDS)
        self._lock = threading.Lock()  # cachetools caches are not thread-safe

    def get(self, name: str) -> Target:
        with self._lock:
            cached = self._targets.get(name)
        if cached is not None:
            return cached
        target = self._read(name)
        with self._lock:
            self._targets[name] = target
        return target

    def forget(self) -> None:
        with self._lock:
            self._targets.clear()

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Around a change: forget before, and again once it is committed (a request in
        between may have read the old rows)."""
        self.forget()
        try:
            yield
        finally:
            self.forget()
