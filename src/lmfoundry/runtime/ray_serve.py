"""Instances as Ray Serve replicas (`LMFOUNDRY_RAY_ADDRESS`): the `Backend` interface of
`runtime.local`, on a Ray cluster.

Each instance group is one Serve application built from `lmfoundry.runtime.ray_replica:build`
with `num_replicas` = the group's size. The supervisor (`lmfoundry up`) owns the cluster's
Serve config and applies it declaratively, as `serve deploy` and KubeRay's RayService do
(`PUT /api/serve/applications/` on the Ray dashboard): the import path and arguments of an
unchanged group stay the same, so Serve leaves its replicas running when another group is
added, resized or removed, and resizing one starts or stops only the difference. (Serve's
imperative `serve.run` gives every call a new code version and restarts all replicas.)

Requests go from the gateway to a replica through a Serve deployment handle, streaming. The
traffic split, auth, quotas and metering stay in our gateway: Serve has no weighted split
between deployments, and weight changes must not touch replicas at all.

Gateways started with `--no-supervisor` route through handles too; for a serverless group
nobody runs yet they record a demand in the database (as with local instances), which the
supervisor answers by deploying it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from lmfoundry.engines.base import Delta, GenerationRequest
from lmfoundry.errors import EngineFailed, InvalidRequest, Unavailable
from lmfoundry.runtime.backend import InstanceInfo
from lmfoundry.runtime.directory import InstanceDirectory
from lmfoundry.runtime.periodic import Periodic
from lmfoundry.runtime.retry import INSTANCES
from lmfoundry.runtime.spec import InstanceSpec

log = logging.getLogger("lmfoundry.runtime")

APP_PREFIX = "lmf-"
IMPORT_PATH = "lmfoundry.runtime.ray_replica:build"
DEPLOYMENT = "Instance"  # ray_replica.DEPLOYMENT (not imported: it imports ray.serve)
POLL_SECONDS = 0.25
SUPERVISE_SECONDS = 1.0
TOUCH_SECONDS = 5.0


def app_name(key: str) -> str:
    return f"{APP_PREFIX}{key}"


@dataclass
class Replica:
    """A Serve replica as the gateway and the instance listing see it."""

    id: str
    state: str
    pid: int | None
    started_at: float | None
    active: int = 0  # Serve routes among replicas; the gateway does not count per replica

    def alive(self) -> bool:
        return self.state == "RUNNING"


class RayCluster:
    """The connection to a Ray cluster: a driver for deployment handles, and the dashboard's
    REST API for the Serve config and for Ray Jobs."""

    def __init__(self, address: str, dashboard_url: str | None) -> None:
        self.address = address
        self._dashboard_url = dashboard_url
        self._connected = False
        self._lock = asyncio.Lock()
        self._init_lock = threading.Lock()  # ray.init from the loop's thread pool or a job pass
        self.http: httpx.AsyncClient | None = None

    @property
    def dashboard_url(self) -> str:
        if self._dashboard_url is None:
            raise Unavailable("Not connected to the Ray cluster yet; retry shortly.")
        return self._dashboard_url

    def ensure_dashboard(self) -> None:
        """Connect (blocking) if the dashboard's address is not known yet."""
        if self._dashboard_url is None:
            self._dashboard_url = self._init()

    async def connect(self) -> None:
        async with self._lock:
            if self._connected:
                return
            dashboard = await asyncio.to_thread(self._init)
            if self._dashboard_url is None:
                self._dashboard_url = dashboard
            self.http = httpx.AsyncClient(base_url=self.dashboard_url, timeout=30.0)
            self._connected = True
            log.info("connected to Ray at %s (dashboard %s)", self.address, self.dashboard_url)

    def _init(self) -> str:
        with self._init_lock:
            return self._init_locked()

    def _init_locked(self) -> str:
        import ray

        try:
            context = ray.init(
                address=self.address,
                namespace="lmfoundry",
                log_to_driver=False,
                ignore_reinit_error=True,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError) as exc:
            raise Unavailable(
                f"Could not connect to the Ray cluster at LMFOUNDRY_RAY_ADDRESS={self.address}: "
                f"{exc}. Start one (`ray start --head`) or unset LMFOUNDRY_RAY_ADDRESS."
            ) from exc
        url = context.dashboard_url or ""
        if not url:
            raise Unavailable(
                "The Ray cluster has no dashboard, which lmfoundry needs to deploy Serve "
                "applications and submit jobs: start it with `ray start --head "
                "--include-dashboard=true` (the `ray[default]` extra), or set "
                "LMFOUNDRY_RAY_DASHBOARD_URL."
            )
        return url if url.startswith("http") else f"http://{url}"

    async def applications(self) -> dict[str, Any]:
        await self.connect()
        assert self.http is not None
        response = await self.http.get("/api/serve/applications/")
        response.raise_for_status()
        return dict(response.json().get("applications") or {})

    async def put_config(self, config: dict[str, Any]) -> None:
        await self.connect()
        assert self.http is not None
        response = await self.http.put("/api/serve/applications/", json=config)
        if response.status_code >= 400:
            raise Unavailable(
                f"Ray Serve refused the deployment config ({response.status_code}): "
                f"{response.text[:300]}"
            )

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()


class RayGroup:
    """The Serve application of one instance spec."""

    def __init__(
        self,
        backend: RayBackend,
        key: str,
        spec: InstanceSpec,
        name: str,
        instance_count: int,
        scale_to_zero: bool,
    ) -> None:
        self.backend = backend
        self.key = key
        self.app = app_name(key)
        self.spec = spec
        self.name = name
        self.instance_count = instance_count  # Ray Serve replicas wanted
        self.scale_to_zero = scale_to_zero
        self.deployed = 0  # replicas in the config the supervisor last applied
        self.in_use = 0
        self.last_used = time.monotonic()
        self.status: dict[str, Any] = {}  # the application's status from the dashboard
        self._replicas: list[Replica] = []
        self._handle: Any = None
        self._touched = 0.0

    @property
    def instances(self) -> list[Replica]:
        return self._replicas

    def observe(self, status: dict[str, Any] | None) -> None:
        """Take the application's latest status (from the backend's poll)."""
        self.status = status or {}
        deployment = (self.status.get("deployments") or {}).get(DEPLOYMENT) or {}
        self._replicas = [
            Replica(
                id=str(r.get("replica_id")),
                state=str(r.get("state")),
                pid=r.get("pid"),
                started_at=r.get("start_time_s"),
            )
            for r in deployment.get("replicas") or []
        ]

    def running(self) -> int:
        return sum(1 for r in self._replicas if r.alive())

    def ready(self) -> bool:
        return self.running() > 0

    def config(self) -> dict[str, Any]:
        settings = self.backend.replica_settings
        return {
            "name": self.app,
            "route_prefix": None,  # reached through handles only, never Serve's HTTP proxy
            "import_path": IMPORT_PATH,
            "args": {"spec": self.spec.to_json()},
            "deployments": [
                {
                    "name": DEPLOYMENT,
                    "num_replicas": self.deployed,
                    # a replica's engine batches its sequences; Serve must not cap them lower
                    "max_ongoing_requests": settings.max_ongoing_requests,
                    "ray_actor_options": {"num_cpus": settings.num_cpus},
                    "health_check_period_s": 5.0,
                    "graceful_shutdown_timeout_s": 30.0,
                }
            ],
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def start_all(self) -> None:
        """Deployed with all its replicas running (the supervisor deploys; a gateway waits)."""
        self.last_used = time.monotonic()
        if self.backend.owner and self.deployed != self.instance_count:
            self.deployed = self.instance_count
            await self.backend.apply()
        await self._wait_ready(self.instance_count)

    async def scale(self, instance_count: int) -> None:
        self.instance_count = instance_count
        await self.start_all()

    async def _wait_ready(self, replicas: int) -> None:
        deadline = time.monotonic() + self.backend.start_timeout
        while True:
            await self.backend.refresh()
            state = self.status.get("status")
            if state == "RUNNING" and self.running() >= replicas:
                return
            if state == "DEPLOY_FAILED":
                message = (self.status.get("deployments") or {}).get(DEPLOYMENT, {}).get(
                    "message"
                ) or self.status.get("message")
                raise Unavailable(
                    f"Ray Serve could not start {self.name}: {str(message)[:500]}",
                    headers={"Retry-After": "5"},
                )
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"{self.name} had {self.running()} of {replicas} Ray Serve replicas running "
                    f"after {self.backend.start_timeout:.0f} s (application status {state}); "
                    "check `serve status` on the cluster or raise "
                    "LMFOUNDRY_INSTANCE_START_TIMEOUT.",
                    headers={"Retry-After": "5"},
                )
            if not self.backend.owner and self.scale_to_zero:
                await self._touch()
            await asyncio.sleep(POLL_SECONDS)

    async def _touch(self) -> None:
        """A gateway asks the supervisor for a serverless group, or says it is in use."""
        directory = self.backend.directory
        now = time.monotonic()
        if directory is None or now - self._touched < TOUCH_SECONDS:
            return
        self._touched = now
        await asyncio.to_thread(
            directory.demand, self.key, json.loads(self.spec.to_json()), self.name
        )

    async def _ready_handle(self) -> Any:
        self.last_used = time.monotonic()
        if self.scale_to_zero:
            if self.backend.owner:
                if self.deployed == 0:
                    self.deployed = max(1, self.instance_count)
                    await self.backend.apply()
            else:
                await self._touch()
        if self.running() == 0:
            await self._wait_ready(1)
        if self._handle is None:
            from ray import serve

            self._handle = await asyncio.to_thread(serve.get_app_handle, self.app)
        return self._handle.options(stream=True)

    # -- requests ----------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Stream from a replica Serve picks. A request whose replica dies before the first
        delta moves to another one (as with local instances)."""
        from ray.exceptions import RayError

        self.in_use += 1
        try:
            attempt = 0
            while True:
                attempt += 1
                handle = await self._ready_handle()
                response = handle.generate.remote(request.to_dict())
                started = False
                try:
                    async for item in response:
                        if "error" in item:
                            error = item["error"]
                            if error.get("kind") == "invalid":
                                raise InvalidRequest(error["message"], param=error.get("param"))
                            if error.get("kind") == "engine_failed":
                                # Its health check now fails, and Serve replaces the replica.
                                raise EngineFailed(
                                    f"A replica of {self.name} failed while answering "
                                    f"({error['message']}); it is being replaced. Retry the "
                                    "request in a few seconds.",
                                    headers={"Retry-After": "2"},
                                )
                            raise EngineFailed(
                                f"A replica of {self.name} refused the request: {error['message']}",
                                headers={"Retry-After": "1"},
                            )
                        started = True
                        yield Delta.from_item(item)
                    return
                except RayError as exc:
                    # Serve replaces a dead replica itself: no readiness to wait for here.
                    if not INSTANCES.again(attempt, started):
                        raise EngineFailed(
                            "The Ray Serve replica serving this request failed while answering; "
                            f"retry the request. ({type(exc).__name__})",
                            headers={"Retry-After": "2"},
                        ) from exc
                    log.warning("replica of %s failed before answering; retrying", self.name)
                    await self.backend.refresh(force=True)
                finally:
                    response.cancel()  # the caller went away: stop the sequence in the replica
        finally:
            self.in_use -= 1
            self.last_used = time.monotonic()

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        raise Unavailable(
            "Embeddings models run on local instances only, not yet on Ray Serve replicas; "
            "serve this deployment from an `lmfoundry up` without LMFOUNDRY_RAY_ADDRESS."
        )


@dataclass(frozen=True)
class ReplicaSettings:
    max_ongoing_requests: int = 64
    num_cpus: float = 0.0  # llama.cpp sets its own threads; Ray's CPU accounting would cap replicas


class RayBackend:
    """Runs instances as Ray Serve replicas."""

    def __init__(
        self,
        cluster: RayCluster,
        start_timeout: float,
        idle_seconds: float,
        owner: bool,
        directory: InstanceDirectory | None = None,
        replica_settings: ReplicaSettings | None = None,
    ) -> None:
        self.cluster = cluster
        self.start_timeout = start_timeout
        self.idle_seconds = idle_seconds
        self.owner = owner
        self.directory = directory
        self.replica_settings = replica_settings or ReplicaSettings()
        self.groups: dict[str, RayGroup] = {}
        self._apply_lock = asyncio.Lock()
        self._refreshed = 0.0
        self._refreshing: asyncio.Lock = asyncio.Lock()
        self._loop = Periodic(
            "supervising Ray Serve applications", SUPERVISE_SECONDS, self._supervise_pass, log
        )

    def group(
        self,
        spec: InstanceSpec,
        name: str,
        instance_count: int = 1,
        scale_to_zero: bool = True,
        key: str | None = None,
    ) -> RayGroup:
        key = key or spec.key
        group = self.groups.get(key)
        if group is None:
            group = RayGroup(self, key, spec, name, instance_count, scale_to_zero)
            self.groups[key] = group
        return group

    def group_keys(self) -> list[str]:
        return list(self.groups)

    async def remove(self, key: str) -> None:
        group = self.groups.get(key)
        if group is None:
            return
        while group.in_use:
            await asyncio.sleep(0.05)
        self.groups.pop(key, None)
        if self.owner:
            await self.apply()

    # -- the Serve config --------------------------------------------------------------------

    async def apply(self) -> None:
        """Apply the config of every deployed group (the whole of the cluster's Serve config:
        lmfoundry owns it, as `serve deploy` would)."""
        async with self._apply_lock:
            applications = [g.config() for g in self.groups.values() if g.deployed > 0]
            await self.cluster.put_config(
                {"proxy_location": "Disabled", "applications": applications}
            )
        await self.refresh(force=True)

    async def refresh(self, force: bool = False) -> None:
        """Read every application's status (at most every POLL_SECONDS unless forced)."""
        async with self._refreshing:
            if not force and time.monotonic() - self._refreshed < POLL_SECONDS:
                return
            try:
                applications = await self.cluster.applications()
            except httpx.HTTPError as exc:
                log.warning("reading Ray Serve's status failed: %s", exc)
                return
            self._refreshed = time.monotonic()
        for group in self.groups.values():
            group.observe(applications.get(group.app))

    # -- supervision -------------------------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    def supervising(self) -> bool:
        return self._loop.running()

    async def engine_metrics(self) -> dict[str, dict[str, float]]:
        return {}  # replicas are Ray actors: Ray's own metrics cover them

    async def _supervise_pass(self) -> None:
        try:
            await self.cluster.connect()
            await self.refresh()
            if self.owner:
                await self._supervise()
        except Unavailable as exc:  # the cluster is away: its own message, no traceback
            log.warning("%s", exc.message)

    async def _supervise(self) -> None:
        """Scale idle serverless groups to zero; deploy the groups gateways asked for."""
        changed = False
        now = time.monotonic()
        if self.directory is not None:
            await asyncio.to_thread(self.directory.beat)  # for --no-supervisor gateways' /readyz
            demands = await asyncio.to_thread(self.directory.demands, self.idle_seconds)
            for key, spec, name, _ in demands:
                wanted = InstanceSpec.make(spec["engine"], spec["model_path"], spec.get("options"))
                group = self.group(wanted, name, key=key)
                group.last_used = now
                if group.deployed == 0:
                    group.deployed = 1
                    changed = True
        for group in self.groups.values():
            idle = now - group.last_used
            if (
                group.scale_to_zero
                and group.deployed
                and not group.in_use
                and (idle > self.idle_seconds)
            ):
                log.info("scaling idle %s to zero", group.name)
                group.deployed = 0
                group._handle = None
                changed = True
        if changed:
            await self.apply()

    async def shutdown(self) -> None:
        await self._loop.stop()
        if self.owner and self.groups:
            # like local instances, replicas do not outlive the supervisor that owns them
            for group in self.groups.values():
                group.deployed = 0
            with contextlib.suppress(Exception):
                await self.apply()
        await self.cluster.aclose()

    def describe(self) -> list[InstanceInfo]:
        return [
            InstanceInfo(
                id=f"{g.app}#{r.id}",
                group=g.name,
                state="ready" if r.alive() else r.state.lower(),
                pid=r.pid,
                active=r.active,
                restarts=0,
                started_at=r.started_at,
                last_error=None,
            )
            for g in self.groups.values()
            for r in g.instances
        ]
