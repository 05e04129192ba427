"""Serverless deployments: a model behind `{base}/serverless/{name}/` with keys and quotas."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from lmfoundry.access.audit import record
from lmfoundry.access.keys import KeyStore
from lmfoundry.access.models import Keys, ProjectAccess, Role
from lmfoundry.access.service import check_name
from lmfoundry.deployments.models import ServerlessView
from lmfoundry.deployments.resolve import ModelResolver
from lmfoundry.deployments.targets import Deployment, Target, TargetCache, TargetKind
from lmfoundry.errors import Conflict, InvalidRequest, NotFound, Unavailable
from lmfoundry.quotas.service import DEFAULT_REQUESTS_PER_MINUTE, DEFAULT_TOKENS_PER_MINUTE
from lmfoundry.quotas.window import Limits
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Project, ServerlessDeployment

if TYPE_CHECKING:
    from lmfoundry.quotas.projects import ProjectQuotas

KIND: TargetKind = "serverless"
MAX_TOKENS_PER_MINUTE = 100_000_000
MAX_REQUESTS_PER_MINUTE = 1_000_000


def _check_quota(field: str, value: int | None, upper: int) -> None:
    if value is not None and not 1 <= value <= upper:
        raise InvalidRequest(f"{field} must be between 1 and {upper:,} (got {value}).", param=field)


def _check_price(field: str, value: float | None) -> None:
    if value is not None and not 0 <= value <= 1000:
        raise InvalidRequest(f"{field} must be between 0 and 1000 USD per 1K tokens.", param=field)


class ServerlessService:
    project_quotas: ProjectQuotas | None = None  # a new deployment holds one instance

    def __init__(
        self, db: Database, resolver: ModelResolver, keys: KeyStore, base_url: str
    ) -> None:
        self.db = db
        self.resolver = resolver
        self.keys = keys
        self.base_url = base_url.rstrip("/")
        # name -> target, read on every inference request (deployments/targets.py)
        self.targets = TargetCache(self._read_target)

    def target_url(self, name: str) -> str:
        return f"{self.base_url}/serverless/{name}/"

    def _view(self, row: ServerlessDeployment, project: str) -> ServerlessView:
        card = self.resolver.card(row.project_id, row.model)
        return ServerlessView(
            name=row.name,
            project=project,
            model=row.model,
            target_url=self.target_url(row.name),
            provisioning_state="succeeded",
            tokens_per_minute=row.tokens_per_minute,
            requests_per_minute=row.requests_per_minute,
            price_input_per_1k=row.price_input_per_1k
            if row.price_input_per_1k is not None
            else card.price_input_per_1k,
            price_output_per_1k=row.price_output_per_1k
            if row.price_output_per_1k is not None
            else card.price_output_per_1k,
            created_by=row.created_by,
            created_at=row.created_at,
        )

    # -- management --------------------------------------------------------------------------

    def create(
        self,
        access: ProjectAccess,
        name: str,
        model: str,
        tokens_per_minute: int | None = None,
        requests_per_minute: int | None = None,
        price_input_per_1k: float | None = None,
        price_output_per_1k: float | None = None,
    ) -> ServerlessView:
        access.require(Role.developer, "create deployments")
        check_name("deployment", name)
        _check_quota("tokens_per_minute", tokens_per_minute, MAX_TOKENS_PER_MINUTE)
        _check_quota("requests_per_minute", requests_per_minute, MAX_REQUESTS_PER_MINUTE)
        _check_price("price_input_per_1k", price_input_per_1k)
        _check_price("price_output_per_1k", price_output_per_1k)
        try:  # a catalog id or a registered name:version; 404 naming both when unknown
            card = self.resolver.resolve(access.project_id, model).card
        except Unavailable as exc:  # weights not on this machine: say how to get them
            raise InvalidRequest(f"Cannot deploy {model}: {exc.message}", param="model") from exc
        with self.db.session() as s:
            if (
                s.scalar(select(ServerlessDeployment).where(ServerlessDeployment.name == name))
                is not None
            ):
                raise Conflict(
                    f"A serverless deployment named {name!r} already exists; "
                    "names are unique because they are part of the target URL.",
                    param="name",
                )
            existing = s.scalar(
                select(ServerlessDeployment).where(
                    ServerlessDeployment.project_id == access.project_id,
                    ServerlessDeployment.model == card.id,
                )
            )
            if existing is not None:
                raise Conflict(
                    f"Deployment {existing.name!r} already serves {card.id} in "
                    f"project {access.project!r} (one serverless deployment per "
                    "model per project); use it, or delete it first.",
                    param="model",
                )
            if self.project_quotas is not None:
                self.project_quotas.check_instances(s, access, 1)
            row = ServerlessDeployment(
                project_id=access.project_id,
                name=name,
                model=card.id,
                tokens_per_minute=tokens_per_minute or DEFAULT_TOKENS_PER_MINUTE,
                requests_per_minute=requests_per_minute or DEFAULT_REQUESTS_PER_MINUTE,
                price_input_per_1k=price_input_per_1k,
                price_output_per_1k=price_output_per_1k,
                created_by=access.principal.name,
            )
            s.add(row)
            try:
                s.flush()
            except IntegrityError as exc:  # a concurrent create won the race
                raise Conflict(
                    f"A serverless deployment named {name!r} already exists.", param="name"
                ) from exc
            self.keys.create(s, KIND, row.id)
            record(
                s,
                access.principal.name,
                access.project_id,
                "serverless.create",
                name,
                {
                    "model": card.id,
                    "tokens_per_minute": row.tokens_per_minute,
                    "requests_per_minute": row.requests_per_minute,
                },
            )
            return self._view(row, access.project)

    def list(self, access: ProjectAccess) -> list[ServerlessView]:
        with self.db.session() as s:
            rows = s.scalars(
                select(ServerlessDeployment)
                .where(ServerlessDeployment.project_id == access.project_id)
                .order_by(ServerlessDeployment.name)
            ).all()
            return [self._view(r, access.project) for r in rows]

    def get(self, access: ProjectAccess, name: str) -> ServerlessView:
        with self.db.session() as s:
            return self._view(self._row(s, access, name), access.project)

    def _row(self, s: Any, access: ProjectAccess, name: str) -> ServerlessDeployment:
        row = s.scalar(
            select(ServerlessDeployment).where(
                ServerlessDeployment.project_id == access.project_id,
                ServerlessDeployment.name == name,
            )
        )
        if row is None:
            raise NotFound(
                f"Serverless deployment {name!r} not found in project "
                f"{access.project!r}; `lmfoundry serverless list` shows them."
            )
        return row

    def update(self, access: ProjectAccess, name: str, changes: dict[str, Any]) -> ServerlessView:
        access.require(Role.developer, "change deployments")
        allowed = {
            "tokens_per_minute",
            "requests_per_minute",
            "price_input_per_1k",
            "price_output_per_1k",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidRequest(
                f"Cannot change {', '.join(sorted(unknown))}; a serverless "
                f"deployment can change {', '.join(sorted(allowed))}.",
                param=sorted(unknown)[0],
            )
        for field in ("tokens_per_minute", "requests_per_minute"):
            if field in changes and changes[field] is None:
                raise InvalidRequest(f"{field} cannot be null; give a number.", param=field)
        _check_quota("tokens_per_minute", changes.get("tokens_per_minute"), MAX_TOKENS_PER_MINUTE)
        _check_quota(
            "requests_per_minute", changes.get("requests_per_minute"), MAX_REQUESTS_PER_MINUTE
        )
        _check_price("price_input_per_1k", changes.get("price_input_per_1k"))
        _check_price("price_output_per_1k", changes.get("price_output_per_1k"))
        with self.targets.changing(), self.db.session() as s:
            row = self._row(s, access, name)
            before = {k: getattr(row, k) for k in changes}
            for key, value in changes.items():
                setattr(row, key, value)
            record(
                s,
                access.principal.name,
                access.project_id,
                "serverless.update",
                name,
                {"before": before, "after": changes},
            )
            return self._view(row, access.project)

    def delete(self, access: ProjectAccess, name: str) -> None:
        access.require(Role.developer, "delete deployments")
        with self.targets.changing(), self.db.session() as s:
            row = self._row(s, access, name)
            self.keys.delete(s, KIND, row.id)
            s.delete(row)
            record(
                s,
                access.principal.name,
                access.project_id,
                "serverless.delete",
                name,
                {"model": row.model},
            )

    def read_keys(self, access: ProjectAccess, name: str) -> Keys:
        access.require(Role.developer, "read keys")
        with self.db.session() as s:
            row = self._row(s, access, name)
            return self.keys.read_existing(s, KIND, row.id)

    def regenerate_key(self, access: ProjectAccess, name: str, slot: str) -> Keys:
        access.require(Role.developer, "regenerate keys")
        with self.db.session() as s:
            row = self._row(s, access, name)
            keys = self.keys.regenerate(s, KIND, row.id, slot)
            record(
                s,
                access.principal.name,
                access.project_id,
                "serverless.regenerate_key",
                name,
                {"key_type": slot},
            )
            return keys

    # -- data plane --------------------------------------------------------------------------

    def serving_target(self, name: str) -> Target:
        """The deployment as the data plane serves it (cached; see TargetCache)."""
        return self.targets.get(name)

    def _read_target(self, name: str) -> Target:
        with self.db.session() as s:
            row = s.scalar(select(ServerlessDeployment).where(ServerlessDeployment.name == name))
            if row is None:
                raise NotFound(
                    f"No serverless deployment named {name!r}; check the target "
                    "URL (`lmfoundry serverless list`)."
                )
            itself = Deployment(
                name=row.name,
                model=row.model,
                price_input_per_1k=row.price_input_per_1k,
                price_output_per_1k=row.price_output_per_1k,
            )
            return Target(
                kind=KIND,
                id=row.id,
                name=row.name,
                project_id=row.project_id,
                limits=Limits(row.tokens_per_minute, row.requests_per_minute),
                deployments={row.name: itself},
                traffic={row.name: 100},
            )

    def project_name(self, project_id: int) -> str:
        with self.db.session() as s:
            project = s.get(Project, project_id)
            return project.name if project else ""
