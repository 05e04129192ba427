"""The studio: pages served at `/` by `lmfoundry up`, with their scripts and styles.

Pages are rendered on the server (Jinja2) and made interactive by small script modules in
static/ that call the JSON API with the session cookie and the CSRF token. Nothing is
fetched from another site: the studio works without a network.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from lmfoundry.web import auth, flows, monitoring, pages, playground, training, usage


def install(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    for module in (auth, pages, usage, training, flows, monitoring):
        app.include_router(module.router)
    app.include_router(playground.router)
    app.include_router(flows.checks)
    app.include_router(pages.fallback)  # last: only paths no other route took
