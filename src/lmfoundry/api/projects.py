"""`/api/v1/me`, `/users`, `/tokens`, `/projects` and members, and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.audit import list_events
from lmfoundry.access.models import (
    AuditEventView,
    Me,
    MemberView,
    NewToken,
    NewUser,
    ProjectView,
    Role,
    TokenScope,
    TokenView,
    UserView,
)
from lmfoundry.access.service import MAX_TOKEN_DAYS
from lmfoundry.api.deps import PlatformDep, PrincipalDep, ProjectDep

router = APIRouter(tags=["access"])


@router.get("/me")
def me(actor: PrincipalDep) -> Me:
    return Me(name=actor.name, is_admin=actor.is_admin)


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    is_admin: bool = False


@router.post("/users", status_code=201)
def create_user(body: UserCreate, plat: PlatformDep, actor: PrincipalDep) -> NewUser:
    return plat.access.create_user(actor, body.name, body.is_admin)


@router.get("/users")
def list_users(plat: PlatformDep, actor: PrincipalDep) -> list[UserView]:
    return plat.access.list_users(actor)


@router.post("/users/{user}/disable")
def disable_user(user: str, plat: PlatformDep, actor: PrincipalDep) -> UserView:
    return plat.access.set_user_disabled(actor, user, disabled=True)


@router.post("/users/{user}/enable")
def enable_user(user: str, plat: PlatformDep, actor: PrincipalDep) -> UserView:
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


@router.post("/tokens", status_code=201)
def create_token(body: TokenCreate, plat: PlatformDep, actor: PrincipalDep) -> NewToken:
    return plat.access.create_token(actor, body.name, body.expires_in_days, body.user, body.scope)


@router.get("/tokens")
def list_tokens(
    plat: PlatformDep,
    actor: PrincipalDep,
    user: Annotated[str | None, Query(description="Admins: this user's tokens.")] = None,
    all_users: Annotated[
        bool, Query(alias="all", description="Admins: everyone's tokens.")
    ] = False,
) -> list[TokenView]:
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


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flows_enabled: bool = Field(
        description="Switch flows on or off in the project (owners and admins only)."
    )


@router.get("/projects")
def list_projects(plat: PlatformDep, actor: PrincipalDep) -> list[ProjectView]:
    return plat.projects.list_projects(actor)


@router.post("/projects", status_code=201)
def create_project(body: ProjectCreate, plat: PlatformDep, actor: PrincipalDep) -> ProjectView:
    return plat.projects.create_project(actor, body.name, body.description)


@router.get("/projects/{project}")
def get_project(access: ProjectDep, plat: PlatformDep, actor: PrincipalDep) -> ProjectView:
    return next(p for p in plat.projects.list_projects(actor) if p.name == access.project)


@router.patch("/projects/{project}")
def update_project(body: ProjectUpdate, access: ProjectDep, plat: PlatformDep) -> ProjectView:
    return plat.projects.set_flows_enabled(access.principal, access.project, body.flows_enabled)


class MemberBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


@router.get("/projects/{project}/members")
def list_members(access: ProjectDep, plat: PlatformDep) -> list[MemberView]:
    return plat.projects.list_members(access.principal, access.project)


@router.put("/projects/{project}/members/{user}")
def set_member(user: str, body: MemberBody, access: ProjectDep, plat: PlatformDep) -> MemberView:
    return plat.projects.set_member(access.principal, access.project, user, body.role)


@router.delete("/projects/{project}/members/{user}", status_code=204)
def remove_member(user: str, access: ProjectDep, plat: PlatformDep) -> None:
    plat.projects.remove_member(access.principal, access.project, user)


@router.get("/projects/{project}/audit")
def audit(
    access: ProjectDep, plat: PlatformDep, since: datetime | None = None, limit: int = 200
) -> list[AuditEventView]:
    return list_events(plat.db, access.project_id, since, limit)
