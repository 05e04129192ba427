"""FastAPI dependencies: the platform, the caller, their role in a project."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lmfoundry.access.models import Principal, ProjectAccess
from lmfoundry.platform import Platform

bearer = HTTPBearer(auto_error=False, description="A personal access token: lmf_pat_...")


def platform(request: Request) -> Platform:
    return request.app.state.platform  # type: ignore[no-any-return]


PlatformDep = Annotated[Platform, Depends(platform)]


def principal(
    plat: PlatformDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    return plat.access.authenticate(credentials.credentials if credentials else None)


PrincipalDep = Annotated[Principal, Depends(principal)]


def project_access(
    plat: PlatformDep,
    actor: PrincipalDep,
    project: Annotated[str, Path(description="Project name.")],
) -> ProjectAccess:
    """The caller's standing in `{project}`: 404 for non-members, so names do not leak."""
    return plat.access.project_access(actor, project)


ProjectDep = Annotated[ProjectAccess, Depends(project_access)]
