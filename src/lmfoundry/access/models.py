"""Roles and the principal a request acts as."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel

from lmfoundry.errors import Forbidden


class Role(StrEnum):
    """`reader` reads (no keys); `developer` also creates, deletes and reads keys;
    `owner` also manages members."""

    reader = "reader"
    developer = "developer"
    owner = "owner"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.reader: 0, Role.developer: 1, Role.owner: 2}


class TokenScope(StrEnum):
    """What a token opens: `all` (the management API and the studio) or `metrics` (only
    GET /metrics, for a Prometheus scraper that should hold nothing more)."""

    all = "all"
    metrics = "metrics"


@dataclass(frozen=True)
class Principal:
    user_id: int
    name: str
    is_admin: bool
    scope: TokenScope = TokenScope.all


@dataclass(frozen=True)
class ProjectAccess:
    """A principal's standing in one project, established by `AccessService.project_access`."""

    project_id: int
    project: str
    principal: Principal
    role: Role

    def can(self, needed: Role) -> bool:
        return self.role.allows(needed)

    def require(self, needed: Role, what: str) -> None:
        """403 naming the role needed, e.g. `require(Role.developer, "read keys")`."""
        if not self.can(needed):
            raise Forbidden(
                f"Your role in project {self.project!r} is {self.role.value}; "
                f"to {what} you need {needed.value} or higher."
            )


@dataclass(frozen=True)
class TokenView:
    """A personal access token as listings show it: never the token, only its first
    characters (`prefix`). `expires_at` None: the token never expires (tokens made before
    expiry existed, and the operator's LMFOUNDRY_ADMIN_TOKEN)."""

    name: str
    user: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    status: str  # active, expired or revoked
    scope: str = "all"


@dataclass(frozen=True)
class NewToken:
    """A token just created: the only time the token itself is shown."""

    name: str
    user: str
    token: str
    prefix: str
    expires_at: datetime | None
    scope: str = "all"


@dataclass(frozen=True)
class UserView:
    name: str
    is_admin: bool
    created_at: datetime
    disabled_at: datetime | None


@dataclass(frozen=True)
class ProjectView:
    """A project as the actor sees it: `role` is theirs (admins act as owners)."""

    name: str
    description: str
    role: Role
    flows_enabled: bool
    created_at: datetime


@dataclass(frozen=True)
class MemberView:
    user: str
    role: Role
    created_at: datetime


class Keys(BaseModel):
    """The two keys of a serverless deployment, an online endpoint or a deployed flow: either
    opens it, so one can be regenerated while callers move to the other."""

    primary_key: str
    secondary_key: str
