"""Managed online endpoints: deployments with instance counts, a traffic split and a mirror.

This module keeps the desired state in the database; `deployments.fleet.Fleet` makes the
instances match it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from lmfoundry.access.audit import record
from lmfoundry.access.keys import KeyStore
from lmfoundry.access.models import Keys, ProjectAccess, Role
from lmfoundry.access.service import check_name
from lmfoundry.deployments.models import DeploymentView, EndpointView
from lmfoundry.deployments.resolve import ModelResolver
from lmfoundry.deployments.targets import (
    Deployment,
    DeploymentState,
    Target,
    TargetCache,
    TargetKind,
)
from lmfoundry.errors import Conflict, InvalidRequest, NotFound
from lmfoundry.quotas.service import DEFAULT_REQUESTS_PER_MINUTE, DEFAULT_TOKENS_PER_MINUTE
from lmfoundry.quotas.window import Limits
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import EndpointDeployment, OnlineEndpoint

if TYPE_CHECKING:
    from lmfoundry.quotas.projects import ProjectQuotas

KIND: TargetKind = "endpoint"
MAX_INSTANCES = 16
DEFAULT_REQUEST_SETTINGS = {
    "request_timeout_ms": 90_000,  # Azure's LLM deployments use 90 s; its 5 s default is for
    "max_concurrent_requests_per_instance": 16,  # classic models. 16 = the engine's batch.
}
SETTING_LIMITS = {
    "request_timeout_ms": (1, 3_600_000),
    "max_concurrent_requests_per_instance": (1, 1024),
}


def check_split(kind: str, split: dict[str, int], names: set[str]) -> dict[str, int]:
    """Validate a traffic (sums to 0 or 100) or mirror (one deployment, <= 50%) split."""
    for name, value in split.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
            raise InvalidRequest(
                f"{kind}: {name} must be a whole percentage 0-100.", param=f"{kind}.{name}"
            )
        if name not in names:
            known = ", ".join(sorted(names)) or "none yet"
            raise InvalidRequest(
                f"{kind}: there is no deployment {name!r} on this endpoint (deployments: {known}).",
                param=f"{kind}.{name}",
            )
    total = sum(split.values())
    if kind == "traffic" and total not in (0, 100):
        raise InvalidRequest(
            f"traffic must add up to 100 (or 0 to stop all traffic); these add up to {total}.",
            param="traffic",
        )
    if kind == "mirror_traffic":
        live = [n for n, v in split.items() if v]
        if len(live) > 1:
            raise InvalidRequest(
                "mirror_traffic can mirror to one deployment only.", param="mirror_traffic"
            )
        if total > 50:
            raise InvalidRequest(
                f"mirror_traffic is at most 50% (got {total}).", param="mirror_traffic"
            )
    return {n: v for n, v in split.items() if v}


class EndpointService:
    project_quotas: ProjectQuotas | None = None  # a deployment holds instance_count instances

    def __init__(
        self,
        db: Database,
        resolver: ModelResolver,
        keys: KeyStore,
        base_url: str,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.resolver = resolver
        self.keys = keys
        self.base_url = base_url.rstrip("/")
        self.on_change = on_change or (lambda: None)  # wakes the fleet's reconciler
        # name -> target, read on every inference request (deployments/targets.py)
        self.targets = TargetCache(self._read_target)

    def scoring_uri(self, name: str) -> str:
        return f"{self.base_url}/endpoints/{name}/score"

    # -- endpoints ---------------------------------------------------------------------------

    def _endpoint_view(self, s: Any, row: OnlineEndpoint, project: str) -> EndpointView:
        deployments = s.scalars(
            select(EndpointDeployment)
            .where(EndpointDeployment.endpoint_id == row.id)
            .order_by(EndpointDeployment.name)
        ).all()
        return EndpointView(
            name=row.name,
            project=project,
            auth_mode=row.auth_mode,
            description=row.description,
            scoring_uri=self.scoring_uri(row.name),
            target_url=f"{self.base_url}/endpoints/{row.name}/",
            traffic=row.traffic,
            mirror_traffic=row.mirror_traffic,
            tokens_per_minute=row.tokens_per_minute,
            requests_per_minute=row.requests_per_minute,
            provisioning_state=_endpoint_state(deployments),
            deployments=[d.name for d in deployments],
            created_by=row.created_by,
            created_at=row.created_at,
        )

    def create(
        self,
        access: ProjectAccess,
        name: str,
        auth_mode: str = "key",
        description: str = "",
        tokens_per_minute: int | None = None,
        requests_per_minute: int | None = None,
    ) -> EndpointView:
        access.require(Role.developer, "create endpoints")
        check_name("endpoint", name)
        if auth_mode != "key":
            raise InvalidRequest(
                "auth_mode must be 'key' (keys are the only auth mode lmfoundry endpoints have).",
                param="auth_mode",
            )
        for field_name, value in (
            ("tokens_per_minute", tokens_per_minute),
            ("requests_per_minute", requests_per_minute),
        ):
            if value is not None and value < 1:
                raise InvalidRequest(f"{field_name} must be at least 1.", param=field_name)
        with self.db.session() as s:
            if s.scalar(select(OnlineEndpoint).where(OnlineEndpoint.name == name)):
                raise Conflict(
                    f"An endpoint named {name!r} already exists; names are "
                    "unique because they are part of the URL.",
                    param="name",
                )
            row = OnlineEndpoint(
                project_id=access.project_id,
                name=name,
                auth_mode=auth_mode,
                description=description,
                traffic={},
                mirror_traffic={},
                tokens_per_minute=tokens_per_minute or DEFAULT_TOKENS_PER_MINUTE,
                requests_per_minute=requests_per_minute or DEFAULT_REQUESTS_PER_MINUTE,
                created_by=access.principal.name,
            )
            s.add(row)
            try:
                s.flush()
            except IntegrityError as exc:
                raise Conflict(f"An endpoint named {name!r} already exists.", param="name") from exc
            self.keys.create(s, KIND, row.id)
            record(s, access.principal.name, access.project_id, "endpoint.create", name, {})
            return self._endpoint_view(s, row, access.project)

    def get(self, access: ProjectAccess, name: str) -> EndpointView:
        with self.db.session() as s:
            return self._endpoint_view(s, self._endpoint(s, access, name), access.project)

    def _endpoint(self, s: Any, access: ProjectAccess, name: str) -> OnlineEndpoint:
        row = s.scalar(
            select(OnlineEndpoint).where(
                OnlineEndpoint.project_id == access.project_id, OnlineEndpoint.name == name
            )
        )
        if row is None:
            raise NotFound(
                f"Online endpoint {name!r} not found in project {access.project!r}; "
                "`lmfoundry endpoints list` shows them."
            )
        return row

    def update(self, access: ProjectAccess, name: str, changes: dict[str, Any]) -> EndpointView:
        access.require(Role.developer, "change endpoints")
        allowed = {"description", "tokens_per_minute", "requests_per_minute"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidRequest(
                f"Cannot change {', '.join(sorted(unknown))} here; traffic "
                "and mirror_traffic have their own calls.",
                param=sorted(unknown)[0],
            )
        for key in ("tokens_per_minute", "requests_per_minute"):
            if key in changes and (changes[key] is None or changes[key] < 1):
                raise InvalidRequest(f"{key} must be at least 1.", param=key)
        with self.targets.changing(), self.db.session() as s:
            row = self._endpoint(s, access, name)
            before = {k: getattr(row, k) for k in changes}
            for key, value in changes.items():
                setattr(row, key, value)
            record(
                s,
                access.principal.name,
                access.project_id,
                "endpoint.update",
                name,
                {"before": before, "after": changes},
            )
            return self._endpoint_view(s, row, access.project)

    def delete(self, access: ProjectAccess, name: str) -> None:
        access.require(Role.developer, "delete endpoints")
        with self.targets.changing(), self.db.session() as s:
            row = self._endpoint(s, access, name)
            for dep in s.scalars(
                select(EndpointDeployment).where(EndpointDeployment.endpoint_id == row.id)
            ):
                s.delete(dep)
            self.keys.delete(s, KIND, row.id)
            s.delete(row)
            record(s, access.principal.name, access.project_id, "endpoint.delete", name, {})
        self.on_change()

    def set_split(
        self, access: ProjectAccess, name: str, kind: str, split: dict[str, int]
    ) -> EndpointView:
        """`kind` is `traffic` or `mirror_traffic`."""
        access.require(Role.developer, f"set {kind}")
        with self.targets.changing(), self.db.session() as s:
            row = self._endpoint(s, access, name)
            names = set(
                s.scalars(
                    select(EndpointDeployment.name).where(EndpointDeployment.endpoint_id == row.id)
                )
            )
            clean = check_split(kind, split, names)
            other = row.mirror_traffic if kind == "traffic" else row.traffic
            traffic, mirror = (clean, other) if kind == "traffic" else (other, clean)
            for mirrored in mirror:
                if traffic.get(mirrored):
                    raise InvalidRequest(
                        f"{mirrored} gets live traffic; a mirror must be a deployment with "
                        "0% live traffic.",
                        param=kind,
                    )
            before = getattr(row, kind)
            setattr(row, kind, clean)
            record(
                s,
                access.principal.name,
                access.project_id,
                f"endpoint.set_{kind}",
                name,
                {"before": before, "after": clean},
            )
            return self._endpoint_view(s, row, access.project)

    def read_keys(self, access: ProjectAccess, name: str) -> Keys:
        access.require(Role.developer, "read keys")
        with self.db.session() as s:
            return self.keys.read_existing(s, KIND, self._endpoint(s, access, name).id)

    def regenerate_key(self, access: ProjectAccess, name: str, slot: str) -> Keys:
        access.require(Role.developer, "regenerate keys")
        with self.db.session() as s:
            row = self._endpoint(s, access, name)
            keys = self.keys.regenerate(s, KIND, row.id, slot)
            record(
                s,
                access.principal.name,
                access.project_id,
                "endpoint.regenerate_key",
                name,
                {"key_type": slot},
            )
            return keys

    # -- deployments -------------------------------------------------------------------------

    @staticmethod
    def _deployment_view(row: EndpointDeployment, endpoint: str) -> DeploymentView:
        return DeploymentView(
            name=row.name,
            endpoint=endpoint,
            model=row.model,
            instance_count=row.instance_count,
            request_settings=row.request_settings,
            provisioning_state=row.provisioning_state,
            error=row.error,
            generation=row.generation,
            created_by=row.created_by,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def put_deployment(
        self,
        access: ProjectAccess,
        endpoint: str,
        name: str,
        model: str,
        instance_count: int = 1,
        request_settings: dict[str, int] | None = None,
    ) -> DeploymentView:
        """Create or update a deployment. A new model starts new instances before the old
        ones stop (a rollout); a new instance count scales in place."""
        access.require(Role.developer, "deploy models")
        check_name("deployment", name)
        if not 1 <= instance_count <= MAX_INSTANCES:
            raise InvalidRequest(
                f"instance_count must be between 1 and {MAX_INSTANCES}.", param="instance_count"
            )
        settings = dict(DEFAULT_REQUEST_SETTINGS)
        for key, value in (request_settings or {}).items():
            if key not in SETTING_LIMITS:
                raise InvalidRequest(
                    f"request_settings.{key} is not a setting; use "
                    f"{', '.join(sorted(SETTING_LIMITS))}.",
                    param=f"request_settings.{key}",
                )
            low, high = SETTING_LIMITS[key]
            if not isinstance(value, int) or not low <= value <= high:
                raise InvalidRequest(
                    f"request_settings.{key} must be between {low} and {high}.",
                    param=f"request_settings.{key}",
                )
            settings[key] = value
        with self.targets.changing(), self.db.session() as s:
            endpoint_row = self._endpoint(s, access, endpoint)
            served = self.resolver.resolve(access.project_id, model)  # 404/503 named here
            del served
            row = s.scalar(
                select(EndpointDeployment).where(
                    EndpointDeployment.endpoint_id == endpoint_row.id,
                    EndpointDeployment.name == name,
                )
            )
            if self.project_quotas is not None and (
                row is None or instance_count > row.instance_count
            ):
                self.project_quotas.check_instances(
                    s, access, instance_count, except_deployment=row.id if row else None
                )
            if row is None:
                row = EndpointDeployment(
                    endpoint_id=endpoint_row.id,
                    name=name,
                    model=model,
                    instance_count=instance_count,
                    request_settings=settings,
                    provisioning_state="creating",
                    generation=1,
                    created_by=access.principal.name,
                )
                s.add(row)
                action = "endpoint.deployment.create"
            else:
                if row.model != model:
                    row.generation += 1
                row.model = model
                row.instance_count = instance_count
                row.request_settings = settings
                row.provisioning_state = "updating"
                row.error = None
                action = "endpoint.deployment.update"
            s.flush()
            record(
                s,
                access.principal.name,
                access.project_id,
                action,
                f"{endpoint}/{name}",
                {"model": model, "instance_count": instance_count},
            )
            view = self._deployment_view(row, endpoint)
        self.on_change()
        return view

    def list_deployments(self, access: ProjectAccess, endpoint: str) -> list[DeploymentView]:
        with self.db.session() as s:
            row = self._endpoint(s, access, endpoint)
            deps = s.scalars(
                select(EndpointDeployment)
                .where(EndpointDeployment.endpoint_id == row.id)
                .order_by(EndpointDeployment.name)
            )
            return [self._deployment_view(d, endpoint) for d in deps]

    def get_deployment(self, access: ProjectAccess, endpoint: str, name: str) -> DeploymentView:
        with self.db.session() as s:
            return self._deployment_view(self._deployment(s, access, endpoint, name), endpoint)

    def _deployment(
        self, s: Any, access: ProjectAccess, endpoint: str, name: str
    ) -> EndpointDeployment:
        endpoint_row = self._endpoint(s, access, endpoint)
        row = s.scalar(
            select(EndpointDeployment).where(
                EndpointDeployment.endpoint_id == endpoint_row.id, EndpointDeployment.name == name
            )
        )
        if row is None:
            raise NotFound(f"Endpoint {endpoint!r} has no deployment {name!r}.")
        return row

    def delete_deployment(self, access: ProjectAccess, endpoint: str, name: str) -> None:
        access.require(Role.developer, "delete deployments")
        with self.targets.changing(), self.db.session() as s:
            row = self._deployment(s, access, endpoint, name)
            endpoint_row = self._endpoint(s, access, endpoint)
            if endpoint_row.traffic.get(name) or endpoint_row.mirror_traffic.get(name):
                raise Conflict(
                    f"{name} still gets traffic on {endpoint}; set its traffic "
                    "(and mirror traffic) to 0 first."
                )
            s.delete(row)
            record(
                s,
                access.principal.name,
                access.project_id,
                "endpoint.deployment.delete",
                f"{endpoint}/{name}",
                {},
            )
        self.on_change()

    # -- for the fleet and the data plane ----------------------------------------------------

    def desired(self) -> list[DeploymentState]:
        with self.db.session() as s:
            rows = s.execute(
                select(EndpointDeployment, OnlineEndpoint).join(
                    OnlineEndpoint, OnlineEndpoint.id == EndpointDeployment.endpoint_id
                )
            ).all()
            return [_state(d, e) for d, e in rows]

    def set_state(
        self, deployment_id: int, generation: int, state: str, error: str | None = None
    ) -> None:
        with self.db.session() as s:
            row = s.get(EndpointDeployment, deployment_id)
            if row is not None and row.generation == generation:
                row.provisioning_state = state
                row.error = error

    def serving_target(self, name: str) -> Target:
        """The endpoint as the data plane serves it (cached; see TargetCache)."""
        return self.targets.get(name)

    def _read_target(self, name: str) -> Target:
        with self.db.session() as s:
            row = s.scalar(select(OnlineEndpoint).where(OnlineEndpoint.name == name))
            if row is None:
                raise NotFound(
                    f"No online endpoint named {name!r}; check the URL "
                    "(`lmfoundry endpoints list`)."
                )
            deps = s.scalars(
                select(EndpointDeployment).where(EndpointDeployment.endpoint_id == row.id)
            ).all()
            return Target(
                kind=KIND,
                id=row.id,
                name=row.name,
                project_id=row.project_id,
                limits=Limits(row.tokens_per_minute, row.requests_per_minute),
                deployments={
                    d.name: Deployment(d.name, d.model, state=_state(d, row)) for d in deps
                },
                traffic=dict(row.traffic),
                mirror=dict(row.mirror_traffic),
            )

    # (last in the class: below it, `list` in an annotation would name this method)
    def list(self, access: ProjectAccess) -> list[EndpointView]:
        with self.db.session() as s:
            rows = s.scalars(
                select(OnlineEndpoint)
                .where(OnlineEndpoint.project_id == access.project_id)
                .order_by(OnlineEndpoint.name)
            )
            return [self._endpoint_view(s, r, access.project) for r in rows]


def _state(row: EndpointDeployment, endpoint: OnlineEndpoint) -> DeploymentState:
    return DeploymentState(
        id=row.id,
        endpoint=endpoint.name,
        name=row.name,
        project_id=endpoint.project_id,
        model=row.model,
        instance_count=row.instance_count,
        request_settings={**DEFAULT_REQUEST_SETTINGS, **row.request_settings},
        generation=row.generation,
    )


def _endpoint_state(deployments: list[EndpointDeployment]) -> str:
    states = {d.provisioning_state for d in deployments}
    if not states or states == {"succeeded"}:
        return "succeeded"
    for state in ("failed", "creating", "updating", "deleting"):
        if state in states:
            return state
    return "succeeded"
