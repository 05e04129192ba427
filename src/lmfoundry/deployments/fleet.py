"""The fleet: makes running instances match the endpoint deployments in the database.

Deployments whose models share weights (a base model and LoRA adapters of it) share one
instance group sized to the largest `instance_count` among them: adapters are loaded per
request on top of the shared base, so two fine-tunes of one base cost little more memory
than one. A change of weights is a rollout: the new group starts and becomes ready before
requests move to it, and the old one stops once its last request is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from lmfoundry.catalog.service import ResolvedModel
from lmfoundry.deployments.endpoints import EndpointService
from lmfoundry.deployments.resolve import ModelResolver
from lmfoundry.deployments.targets import DeploymentState
from lmfoundry.errors import LmfError, RateLimited, Unavailable
from lmfoundry.runtime.backend import Backend, Group
from lmfoundry.runtime.periodic import Periodic
from lmfoundry.runtime.spec import InstanceSpec

log = logging.getLogger("lmfoundry.fleet")

RECONCILE_SECONDS = 5.0


@dataclass
class Running:
    """A deployment as it is served right now."""

    state: DeploymentState
    model: ResolvedModel
    group: Group
    in_flight: int = 0

    @property
    def capacity(self) -> int:
        per_instance = self.state.request_settings["max_concurrent_requests_per_instance"]
        return per_instance * self.state.instance_count

    def claim(self) -> None:
        """Count a request in, or refuse it at once when the deployment is full (429)."""
        if self.in_flight >= self.capacity:
            raise RateLimited(
                f"Deployment {self.state.name!r} is at its limit of {self.capacity} concurrent "
                f"requests (max_concurrent_requests_per_instance x instance_count); retry "
                "shortly or raise either.",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1


@dataclass
class Fleet:
    endpoints: EndpointService
    resolver: ModelResolver
    backend: Backend
    spec_for: Callable[[ResolvedModel], InstanceSpec]  # the gateway's instance_spec
    owner: bool = True  # the supervisor owns instances; a gateway's fleet only routes
    running: dict[int, Running] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self._loop = Periodic(
            "reconciling endpoint deployments", RECONCILE_SECONDS, self.reconcile, log
        )

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def changed(self) -> None:
        """Called after a change to deployments: reconcile now rather than at the next tick."""
        self._loop.wake()

    async def reconcile(self) -> None:
        async with self._lock:
            desired = await asyncio.to_thread(self.endpoints.desired)
            wanted = {d.id: d for d in desired}
            plans: dict[int, tuple[DeploymentState, ResolvedModel, InstanceSpec]] = {}
            for state in desired:
                try:
                    model = await asyncio.to_thread(
                        self.resolver.resolve, state.project_id, state.model
                    )
                except LmfError as exc:
                    await self._mark(state, "failed", exc.message)
                    continue
                plans[state.id] = (state, model, self.spec_for(model))
            plans = _share_adapter_files(plans)
            sizes: dict[str, int] = {}
            for state, _, spec in plans.values():
                sizes[spec.key] = max(sizes.get(spec.key, 0), state.instance_count)
            await asyncio.gather(
                *(
                    self._apply(state, model, spec, sizes[spec.key])
                    for state, model, spec in plans.values()
                )
            )
            for gone in set(self.running) - set(wanted):
                del self.running[gone]
            await self._release_unused()

    async def _apply(
        self, state: DeploymentState, model: ResolvedModel, spec: InstanceSpec, instance_count: int
    ) -> None:
        current = self.running.get(state.id)
        group = self.backend.group(
            spec,
            name=model.card.base_model or model.card.id,
            instance_count=instance_count,
            scale_to_zero=False,
            key=f"ep-{spec.key}",
        )
        try:
            if group.instance_count != instance_count or len(group.instances) != instance_count:
                await group.scale(instance_count)
            await group.start_all()
        except LmfError as exc:
            await self._mark(state, "failed", exc.message)
            return
        except OSError as exc:
            await self._mark(state, "failed", str(exc))
            return
        if current is None or current.group is not group or current.state != state:
            # Ready before it takes traffic: requests in flight finish where they started
            # (and count down on the Running they started on).
            self.running[state.id] = Running(state=state, model=model, group=group)
        await self._mark(state, "succeeded", None)

    async def _mark(self, state: DeploymentState, value: str, error: str | None) -> None:
        if not self.owner:
            return
        await asyncio.to_thread(self.endpoints.set_state, state.id, state.generation, value, error)

    async def _release_unused(self) -> None:
        if not self.owner:
            return
        used = {r.group.key for r in self.running.values()}
        for key in [k for k in self.backend.group_keys() if k.startswith("ep-") and k not in used]:
            asyncio.create_task(self.backend.remove(key))  # noqa: RUF006 - drains, then stops

    def serving(self, state: DeploymentState) -> Running:
        running = self.running.get(state.id)
        if running is None:
            raise Unavailable(
                f"Deployment {state.name!r} is still starting (provisioning); retry shortly.",
                headers={"Retry-After": "5"},
            )
        return running


Plan = tuple[DeploymentState, ResolvedModel, InstanceSpec]


def _share_adapter_files(plans: dict[int, Plan]) -> dict[int, Plan]:
    """Deployments of one base whose engine loads adapter files at start (llama-server's
    `loras`) get one spec naming all of them, so they share instances; each request picks
    its own adapter. Adding an adapter changes the spec: a rollout, as for new weights."""

    def base(spec: InstanceSpec) -> InstanceSpec:
        options = {k: v for k, v in spec.options_dict.items() if k != "loras"}
        return InstanceSpec.make(spec.engine, spec.model_path, options)

    loras: dict[str, set[str]] = {}
    for _, _, spec in plans.values():
        named = spec.options_dict.get("loras")
        if named:
            loras.setdefault(base(spec).key, set()).update(named)
    shared: dict[int, Plan] = {}
    for key, (state, model, spec) in plans.items():
        union = loras.get(base(spec).key)
        if union:
            options = {**base(spec).options_dict, "loras": sorted(union)}
            spec = InstanceSpec.make(spec.engine, spec.model_path, options)
        shared[key] = (state, model, spec)
    return shared
