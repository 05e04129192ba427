"""Sign-in with a token, sign-out, the project list and switcher."""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from lmfoundry.access.secrets import constant_time_equal
from lmfoundry.access.sessions import COOKIE, SIGNIN_COOKIE
from lmfoundry.api.deps import PlatformDep, PrincipalDep
from lmfoundry.errors import Forbidden, Unauthorized
from lmfoundry.web.render import NAV, StudioRoute, render

router = APIRouter(route_class=StudioRoute, include_in_schema=False)

SECTIONS = {path for path, _ in NAV}


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _local(target: str | None) -> str:
    """Only same-site paths after sign-in (no open redirect to `//evil` or `https://…`)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _signin_page(
    request: Request, next_: str, error: str | None = None, status_code: int = 200
) -> Response:
    token = request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(32)
    response = render(
        request,
        "signin.html",
        status_code=status_code,
        signin_csrf=token,
        next=_local(next_),
        error=error,
    )
    _cookie(response, request, SIGNIN_COOKIE, token, 3600)
    return response


@router.get("/signin")
def signin_form(request: Request, next: str = "/") -> Response:
    return _signin_page(request, next)


@router.post("/signin")
def signin(
    request: Request,
    plat: PlatformDep,
    token: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or not constant_time_equal(expected, csrf_token):
        raise Forbidden("The sign-in form expired or did not come from this site; reload it.")
    try:
        plat.access.authenticate(token.strip())
    except (Unauthorized, Forbidden) as exc:  # Forbidden: a metrics-only token
        return _signin_page(request, next, exc.message, status_code=exc.status_code)
    cookie, _ = plat.sessions.issue(token.strip())
    response = RedirectResponse(_local(next), status_code=303)
    _cookie(response, request, COOKIE, cookie, plat.sessions.lifetime)
    response.delete_cookie(SIGNIN_COOKIE, path="/")
    return response


@router.post("/signout")
def signout(
    request: Request, plat: PlatformDep, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    session = plat.sessions.open(request.cookies.get(COOKIE))
    if session is not None and not session.csrf_matches(csrf_token):
        raise Forbidden("Missing or wrong CSRF token; reload the page and sign out again.")
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/")
def home(plat: PlatformDep, actor: PrincipalDep) -> Response:
    projects = [p.name for p in plat.projects.list_projects(actor)]
    default = plat.settings.default_project
    if not projects:
        return RedirectResponse("/projects", status_code=303)
    project = default if default in projects else projects[0]
    return RedirectResponse(f"/projects/{project}/catalog", status_code=303)


@router.get("/projects")
def projects(request: Request, actor: PrincipalDep) -> Response:
    return render(request, "projects.html", principal=actor, section="projects")


@router.get("/switch")
def switch(
    actor: PrincipalDep,
    project: Annotated[str, Query()],
    section: Annotated[str, Query()] = "catalog",
) -> Response:
    """The project switcher (a GET form, so it works without scripts): same section, other
    project. Sections that name one resource go to the list."""
    section = section if section in SECTIONS else "catalog"
    return RedirectResponse(f"/projects/{quote(project, safe='')}/{section}", status_code=303)
