"""FastAPI dependencies: the platform, the caller, their role in a project."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lmfoundry.access.models import Principal, ProjectAccess
from lmfoundry.access.sessions import COOKIE, CSRF_HEADER, SAFE_METHODS
from lmfoundry.errors import Forbidden
from lmfoundry.platform import Platform

bearer = HTTPBearer(auto_error=False, description="A personal access token: lmf_pat_...")


async def platform(request: Request) -> Platform:
    # async: a plain def would make FastAPI hop to a worker thread on every request
    return request.app.state.platform  # type: ignore[no-any-return]


PlatformDep = Annotated[Platform, Depends(platform)]


def principal(
    request: Request,
    plat: PlatformDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller: a bearer token (CLI, SDK, scripts) or a studio session cookie. A cookie is
    sent by the browser on its own, so a mutating request made with one must also carry the
    session's CSRF token in `X-CSRF-Token` (see access/sessions.py)."""
    if credentials is None:
        session = plat.sessions.open(request.cookies.get(COOKIE))
        if session is not None:
            if request.method not in SAFE_METHODS and not session.csrf_matches(
                request.headers.get(CSRF_HEADER)
            ):
                raise Forbidden(
                    "Missing or wrong CSRF token (X-CSRF-Token); reload the studio page "
                    "and try again."
                )
            request.state.session = session
            return plat.access.authenticate_digest(session.token_digest)
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
