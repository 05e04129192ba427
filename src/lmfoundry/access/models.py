"""Roles and the principal a request acts as, and the views the access services answer
with (users, tokens, projects, members, the audit log, keys)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class Me(BaseModel):
    """Who a token belongs to (`GET /me`)."""

    name: str
    is_admin: bool


class NewUser(BaseModel):
    """A user just created, with their first token: the only time it is shown."""

    name: str
    token: str = Field(description="Shown once; store it now.")


class UserView(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    is_admin: bool
    created_at: datetime
    disabled_at: datetime | None = Field(
        description="When an admin disabled the user (none of their tokens work); null: enabled."
    )


class TokenView(BaseModel):
    """A personal access token as listings show it: never the token, only its first
    characters (`prefix`). `expires_at` None: the token never expires (tokens made before
    expiry existed, and the operator's LMFOUNDRY_ADMIN_TOKEN)."""

    model_config = ConfigDict(frozen=True)

    name: str
    user: str
    prefix: str = Field(description="The token's first characters, to tell tokens apart.")
    created_at: datetime
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")
    expires_at: datetime | None = Field(description="null: never expires.")
    revoked_at: datetime | None
    status: Literal["active", "expired", "revoked"]
    scope: TokenScope


class NewToken(BaseModel):
    """A token just created: the only time the token itself is shown."""

    model_config = ConfigDict(frozen=True)

    name: str
    user: str
    token: str = Field(description="Shown once; store it now.")
    prefix: str
    expires_at: datetime | None
    scope: TokenScope


class ProjectView(BaseModel):
    """A project as the actor sees it: `role` is theirs (admins act as owners)."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    role: Role
    flows_enabled: bool = Field(
        description="Members with the developer role may test, run and deploy flows "
        "(owners switch it with PATCH flows_enabled)."
    )
    created_at: datetime


class MemberView(BaseModel):
    model_config = ConfigDict(frozen=True)

    user: str
    role: Role
    created_at: datetime


class AuditEventView(BaseModel):
    """One change in a project's audit log: who did what to which target, and when."""

    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    request_id: str | None = Field(
        default=None, description="The x-request-id of the request that made the change."
    )


class Keys(BaseModel):
    """The two keys of a serverless deployment, an online endpoint or a deployed flow: either
    opens it, so one can be regenerated while callers move to the other."""

    primary_key: str
    secondary_key: str
