"""Structured logs: one JSON line per request (`lmfoundry up --log-format json`).

The request's id (the `x-request-id` response header) is kept in a context variable for the
request's whole life (`begin`), so what the request does reads it where it happens: the usage
record has it from the gateway, the audit log from `current_request_id()`, the trace as an
attribute of the request's span. The gateway notes the target, deployment, key and tokens in
the request's `RequestInfo` as it learns them; the middleware writes the line at the end.

A line names the key by its target and slot (`serverless/chat/primary`), never by its value.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmfoundry.deployments.targets import Target
    from lmfoundry.metering.service import Usage

REQUESTS = logging.getLogger("lmfoundry.requests")


@dataclass(slots=True)
class RequestInfo:
    """What one request's log line says; filled in as the request goes."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    route: str = ""
    status: int | None = None
    project_id: int | None = None
    project: str | None = None
    target_kind: str | None = None
    target: str | None = None
    deployment: str | None = None
    key_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    trace_id: str | None = None

    def fields(self) -> dict[str, Any]:
        """The line's fields, leaving out what this request never had."""
        values = {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "status": self.status,
            "project": self.project,
            "target_kind": self.target_kind,
            "target": self.target,
            "deployment": self.deployment,
            "key_id": self.key_id,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": self.ttft_ms,
            "latency_ms": self.latency_ms,
            "trace_id": self.trace_id,
        }
        return {k: v for k, v in values.items() if v is not None and v != ""}


_current: ContextVar[RequestInfo | None] = ContextVar("lmfoundry_request", default=None)


def begin(info: RequestInfo) -> Token[RequestInfo | None]:
    return _current.set(info)


def end(token: Token[RequestInfo | None]) -> None:
    _current.reset(token)


def current() -> RequestInfo | None:
    return _current.get()


def current_request_id() -> str | None:
    """The id of the HTTP request being served here, if any (for the audit log)."""
    info = _current.get()
    return info.request_id if info is not None else None


def note_target(target: Target, deployment: str, key_slot: str) -> None:
    """The gateway knows where the request goes and which key opened it."""
    info = _current.get()
    if info is not None:
        _note(info, target.project_id, target.kind, target.name, deployment, key_slot)


def _note(
    info: RequestInfo, project_id: int, kind: str, target: str, deployment: str, key_slot: str
) -> None:
    info.project_id = project_id
    info.target_kind, info.target, info.deployment = kind, target, deployment
    info.key_id = f"{kind}/{target}/{key_slot}"


def note_usage(usage: Usage) -> None:
    """What the request used, from its usage record (a mirrored copy's is not the caller's)."""
    info = _current.get()
    if info is None or usage.mirrored or info.request_id != usage.request_id:
        return
    _note(info, usage.project_id, usage.target_kind, usage.target, usage.deployment, usage.key_slot)
    info.prompt_tokens = usage.prompt_tokens
    info.completion_tokens = usage.completion_tokens
    if usage.ttft_ms is not None:
        info.ttft_ms = round(usage.ttft_ms, 3)


def write(info: RequestInfo) -> None:
    REQUESTS.info("request", extra={"request": info.fields()})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and a request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = getattr(record, "request", None)
        if isinstance(request, dict):
            line.update(request)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def logging_config(log_format: str, level: str) -> dict[str, Any] | None:
    """uvicorn's `log_config` for `log_format`: None keeps uvicorn's own (text); `json` sends
    every record of uvicorn and lmfoundry as JSON lines, the request lines to stdout and the
    rest to stderr (as uvicorn does with its access and error logs), and drops uvicorn's
    access log, which the request lines replace."""
    if log_format != "json":
        return None
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            "lmfoundry": {"handlers": ["stderr"], "level": level, "propagate": False},
            REQUESTS.name: {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        },
    }
