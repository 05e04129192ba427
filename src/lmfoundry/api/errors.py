"""The one place where errors become HTTP responses."""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmfoundry.errors import InsufficientStorage, InvalidRequest, LmfError, Unavailable
from lmfoundry.serving.wire import _path

log = logging.getLogger("lmfoundry.api")

FULL_DISK = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class ErrorDetail(BaseModel):
    code: str
    message: str
    status: int
    param: str | None = None
    detail: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Bad input; the message names the field and the fix.",
        401: "Missing or invalid token or key.",
        403: "Your role does not allow this, or the key belongs to another deployment.",
        404: "Not found (also for resources of projects you are not a member of).",
        409: "Conflicts with an existing resource.",
        413: "Request body too large.",
        431: "Request headers too large (over 32 KiB or 100 fields).",
        422: "A valid parameter the model does not support.",
        429: "Over quota; see Retry-After.",
        503: "No healthy instance; see Retry-After.",
        507: "The server's disk is full; nothing was stored.",
    }.items()
}


def disk_full(request: Request, exc: BaseException | None) -> JSONResponse | None:
    """507 for a write that failed on a full disk, wherever it was (a body Starlette spooled
    to a temporary file, a dataset, a flow archive): the writers remove what they started,
    so nothing half-written stays and the caller may retry."""
    if not (isinstance(exc, OSError) and exc.errno in FULL_DISK):
        return None
    log.error("disk full on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        InsufficientStorage(
            "The server ran out of disk space while writing this request "
            f"({os.strerror(exc.errno or 0)}); nothing was stored. Free space under "
            "LMFOUNDRY_HOME (or the temporary folder) and retry."
        )
    )


def error_response(exc: LmfError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error's JSON body; `headers` are the answer's headers decided before it failed
    (the error's own win)."""
    return JSONResponse(
        exc.to_body(), status_code=exc.status_code, headers={**(headers or {}), **exc.headers}
    )


def validation_message(exc: RequestValidationError) -> InvalidRequest:
    errors = exc.errors()
    first = errors[0]
    loc = tuple(p for p in first["loc"] if p != "body")
    path = _path(loc) if loc else ""
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field; remove it"
    elif first["type"] == "missing":
        message = "field required"
    elif first["type"] == "json_invalid":
        message = "the body is not valid JSON"
    text = f"{path}: {message}" if path else message
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return InvalidRequest(f"Invalid request: {text}{more}.", param=path or None)


def install(app: FastAPI) -> None:
    @app.exception_handler(LmfError)
    async def _lmf(request: Request, exc: LmfError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        full = disk_full(request, exc.__cause__)  # FastAPI's "error parsing the body"
        if full is not None:
            return full
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"No route for {request.method} {request.url.path}; see /docs."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs."
        return JSONResponse(
            {"error": {"code": code, "message": message, "status": exc.status_code}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        full = disk_full(request, exc)
        if full is not None:
            return full
        if isinstance(exc, OperationalError) and "database is locked" in str(exc):
            log.error("database locked on %s %s", request.method, request.url.path)
            return error_response(
                Unavailable(
                    "The database is locked by another writer and stayed locked longer than "
                    "LMFOUNDRY_DATABASE_BUSY_SECONDS; nothing was changed. Retry shortly; if "
                    "it persists, look for a process holding a write transaction open.",
                    headers={"Retry-After": "1"},
                )
            )
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {
                "error": {
                    "code": "internal_error",
                    "status": 500,
                    "message": "Internal error; the server log has the "
                    "details (x-request-id names the request).",
                }
            },
            status_code=500,
        )
