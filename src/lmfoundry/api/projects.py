"""`/api/v1/me`, `/users`, `/tokens`, `/projects` and members, and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.audit import list_events
from lmfoundry.access.models import MemberView as AccessMemberView
from lmfoundry.access.models import NewToken, Role, TokenScope
from lmfoundry.access.models import ProjectView as AccessProjectView
from lmfoundry.access.models import TokenView as AccessTokenView
from lmfoundry.access.models import UserView as AccessUserView
from lmfoundry.access.service import MAX_TOKEN_DAYS
from lmfoundry.api.deps import PlatformDep, PrincipalDep, ProjectDep

router = APIRouter(tags=["access"])


class Me(BaseModel):
    name: str
    is_admin: bool


@router.get("/me", response_model=Me)
def me(actor: PrincipalDep) -> Me:
    return Me(name=actor.name, is_admin=actor.is_admin)


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    is_admin: bool = False


class UserCreated(BaseModel):
    name: str
    token: str = Field(description="Shown once; store it now.")


@router.post("/users", response_model=UserCreated, status_code=201)
def create_user(body: UserCreate, plat: PlatformDep, actor: PrincipalDep) -> UserCreated:
    name, token = plat.access.create_user(actor, body.name, body.is_admin)
    return UserCreated(name=name, token=token)


class UserView(BaseModel):
    name: str
    is_admin: bool
    created_at: datetime
    disabled_at: datetime | None = Field(
        description="When an admin disabled the user (none of their tokens work); null: enabled."
    )


@router.get("/users", response_model=list[UserView])
def list_users(plat: PlatformDep, actor: PrincipalDep) -> list[AccessUserView]:
    return plat.access.list_users(actor)


@router.post("/users/{user}/disable", response_model=UserView)
def disable_user(user: str, plat: PlatformDep, actor: PrincipalDep) -> AccessUserView:
    return plat.access.set_user_disabled(actor, user, disabled=True)


@router.post("/users/{user}/enable", response_model=UserView)
def enable_user(user: str, plat: PlatformDep, actor: PrincipalDep) -> AccessUserView:
    return plat.access.set_user_disabled(actor, user, disabled=False)


@router.delete("/users/{user}", status_code=204)
def delete_user(user: str, plat: PlatformDep, actor: PrincipalDep) -> None:
    plat.access.delete_user(actor, user)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, description="Unique among your active tokens.")
    expires_in_days: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TOKEN_DAYS,
        description="Days the token stays valid; default LMFOUNDRY_TOKEN_TTL_DAYS (90).",
    )
    user: str | None = Field(
        default=None, description="Admins only: create the token for this user."
    )
    scope: TokenScope = Field(
        default=TokenScope.all,
        description="`all`: the management API and the studio; `metrics`: only GET /metrics "
        "(for a Prometheus scraper; admins only).",
    )


class TokenCreated(BaseModel):
    name: str
    user: str
    token: str = Field(description="Shown once; store it now.")
    prefix: str
    expires_at: datetime | None
    scope: TokenScope


class TokenView(BaseModel):
    name: str
    user: str
    prefix: str = Field(description="The token's first characters, to tell tokens apart.")
    created_at: datetime
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")
    expires_at: datetime | None = Field(description="null: never expires.")
    revoked_at: datetime | None
    status: Literal["active", "expired", "revoked"]
    scope: TokenScope


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, plat: PlatformDep, actor: PrincipalDep) -> NewToken:
    return plat.access.create_token(actor, body.name, body.expires_in_days, body.user, body.scope)


@router.get("/tokens", response_model=list[TokenView])
def list_tokens(
    plat: PlatformDep,
    actor: PrincipalDep,
    user: Annotated[str | None, Query(description="Admins: this user's tokens.")] = None,
    all_users: Annotated[
        bool, Query(alias="all", description="Admins: everyone's tokens.")
    ] = False,
) -> list[AccessTokenView]:
    return plat.access.list_tokens(actor, user, all_users)


@router.delete("/tokens/{name}", status_code=204)
def revoke_token(
    name: str,
    plat: PlatformDep,
    actor: PrincipalDep,
    user: Annotated[str | None, Query(description="Admins: revoke this user's token.")] = None,
) -> None:
    plat.access.revoke_token(actor, name, user)


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""


class ProjectView(BaseModel):
    name: str
    description: str
    role: Role
    flows_enabled: bool = Field(
        description="Members with the developer role may test, run and deploy flows "
        "(owners switch it with PATCH flows_enabled)."
    )
    created_at: datetime


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flows_enabled: bool = Field(
        description="Switch flows on or off in the project (owners and admins only)."
    )


@router.get("/projects", response_model=list[ProjectView])
def list_projects(plat: PlatformDep, actor: PrincipalDep) -> list[AccessProjectView]:
    return plat.projects.list_projects(actor)


@router.post("/projects", response_model=ProjectView, status_code=201)
def create_project(
    body: ProjectCreate, plat: PlatformDep, actor: PrincipalDep
) -> AccessProjectView:
    return plat.projects.create_project(actor, body.name, body.description)


@router.get("/projects/{project}", response_model=ProjectView)
def get_project(access: ProjectDep, plat: PlatformDep, actor: PrincipalDep) -> AccessProjectView:
    return next(p for p in plat.projects.list_projects(actor) if p.name == access.project)


@router.patch("/projects/{project}", response_model=ProjectView)
def update_project(body: ProjectUpdate, access: ProjectDep, plat: PlatformDep) -> AccessProjectView:
    return plat.projects.set_flows_enabled(access.principal, access.project, body.flows_enabled)


class MemberBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


class MemberView(BaseModel):
    user: str
    role: Role
    created_at: datetime


@router.get("/projects/{project}/members", response_model=list[MemberView])
def list_members(access: ProjectDep, plat: PlatformDep) -> list[AccessMemberView]:
    return plat.projects.list_members(access.principal, access.project)


@router.put("/projects/{project}/members/{user}", response_model=MemberView)
def set_member(
    user: str, body: MemberBody, access: ProjectDep, plat: PlatformDep
) -> AccessMemberView:
    return plat.projects.set_member(access.principal, access.project, user, body.role)


@router.delete("/projects/{project}/members/{user}", status_code=204)
def remove_member(user: str, access: ProjectDep, plat: PlatformDep) -> None:
    plat.projects.remove_member(access.principal, access.project, user)


class AuditView(BaseModel):
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    request_id: str | None = Field(
        default=None, description="The x-request-id of the request that made the change."
    )


@router.get("/projects/{project}/audit", response_model=list[AuditView])
def audit(
    access: ProjectDep, plat: PlatformDep, since: datetime | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    with plat.db.session() as s:
        return list_events(s, access.project_id, since, max(1, min(limit, 5000)))
