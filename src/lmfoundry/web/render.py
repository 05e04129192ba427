"""Rendering studio pages: templates, the common page context, and errors as pages."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from lmfoundry import __version__
from lmfoundry.access.models import Principal, ProjectAccess, Role
from lmfoundry.api.errors import validation_message
from lmfoundry.errors import LmfError, Unauthorized

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["version"] = __version__


def usd(value: float | None) -> str:
    """A price without scientific notation: 2e-05 -> 0.00002."""
    text = f"{float(value or 0):.8f}".rstrip("0").rstrip(".")
    return text or "0"


templates.env.filters["usd"] = usd

# Everything the studio runs or styles comes from this server: no inline scripts, no CDN.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

# The studio's sections, in the order of the navigation bar: (path under the project, label).
NAV = [
    ("catalog", "Catalog"),
    ("deployments", "Deployments"),
    ("playground", "Playground"),
    ("datasets", "Datasets"),
    ("fine-tuning", "Fine-tuning"),
    ("models", "Models"),
    ("endpoints", "Endpoints"),
    ("connections", "Connections"),
    ("flows", "Flows"),
    ("usage", "Usage"),
]


def render(
    request: Request,
    template: str,
    *,
    principal: Principal | None = None,
    access: ProjectAccess | None = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page with the layout's context: who is signed in, their projects and role, the
    session's CSRF token, and the active section."""
    plat = request.app.state.platform
    principal = principal or (access.principal if access else None)
    session = getattr(request.state, "session", None)
    base: dict[str, Any] = {
        "principal": principal,
        "access": access,
        "project": access.project if access else None,
        "role": access.role.value if access else None,
        "can_write": bool(access and access.can(Role.developer)),
        "csrf": session.csrf if session else "",
        "projects": plat.projects.list_projects(principal) if principal else [],
        "nav": NAV,
        "section": context.pop("section", None),
    }
    response = templates.TemplateResponse(
        request, template, {**base, **context}, status_code=status_code
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def error_page(request: Request, exc: LmfError) -> Response:
    if isinstance(exc, Unauthorized):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
    return render(request, "error.html", status_code=exc.status_code, error=exc)


class StudioRoute(APIRoute):
    """A page route: errors become a page with the message (or, for a missing or expired
    session, a redirect to sign-in), never a JSON body or a stack trace."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except LmfError as exc:
                return error_page(request, exc)
            except RequestValidationError as exc:
                return error_page(request, validation_message(exc))

        return handle
