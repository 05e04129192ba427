"""ASGI middleware: request ids, body size limits, and tidy paths.

Written as raw ASGI (not `BaseHTTPMiddleware`) so streaming responses pass through
untouched and the per-request cost stays in microseconds.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmfoundry.access.sessions import COOKIE
from lmfoundry.errors import LmfError, PayloadTooLarge
from lmfoundry.observability import logs, tracing

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The HTTP parser uvicorn uses (httptools) accepts headers of any size; this caps them.
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100


class RequestContext:
    """Adds `x-request-id` to every response (reusing a well-formed one from the caller),
    collapses duplicate slashes (SDKs join `endpoint/` + `/chat/completions`), answers 431
    for oversized headers, and limits bodies while they are read, before anything parses
    them (413 when a declared length is over, or as soon as the bytes read pass it).

    Limits: inference bodies `max_body`; the management API `max_api_body` (small); the
    upload routes (`UPLOADS`) `max_upload`, or `max_flow` for flow folders, but only for a
    caller whose token or studio session checks out first. An upload from anyone else is
    handed to the app with an empty body, unread, so the app answers 401 (and AuthThrottle
    counts it) without a byte of it being read."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        max_upload: int,
        max_api_body: int = 1024 * 1024,
        max_flow: int | None = None,
        log_requests: bool = False,
        project_names: Callable[[int], Awaitable[str]] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload
        self.max_api_body = max_api_body
        self.max_flow = max_flow if max_flow is not None else max_upload
        self.log_requests = log_requests  # one JSON line per request (--log-format json)
        self.project_names = project_names  # project id -> name, cached (for the line)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope["headers"]
        size = sum(len(k) + len(v) for k, v in raw_headers)
        if size > MAX_HEADER_BYTES or len(raw_headers) > MAX_HEADERS:
            await _refuse(
                send,
                431,
                "request_header_fields_too_large",
                f"The request's headers are {size:,} bytes in {len(raw_headers)} fields; at most "
                f"{MAX_HEADER_BYTES:,} bytes and {MAX_HEADERS} fields are accepted. Send less "
                "in headers (large values belong in the body).",
            )
            return
        headers = dict(raw_headers)
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path: str = scope["path"]
        if "//" in path:
            scope["path"] = re.sub(r"/{2,}", "/", path)
        raw_id = request_id.encode()
        info = logs.RequestInfo(request_id, scope["method"], scope["path"])

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", raw_id)]
            await send(message)

        # The request's span and log line (observability/): the span is a child of the
        # caller's traceparent; what the gateway learns lands in `info`.
        token = logs.begin(info)
        span = tracing.request(scope["method"], raw_headers)
        try:
            with span:
                try:
                    await self._limited(scope, receive, send_with_id, headers)
                except BaseException as exc:
                    info.status = info.status or _status_of(exc)
                    raise
                finally:
                    await self._observed(scope, info, span)
        finally:
            logs.end(token)
            if self.log_requests:
                logs.write(info)

    async def _observed(self, scope: Scope, info: logs.RequestInfo, span: tracing.Span) -> None:
        """Complete the request's line and span once it is answered (streams included)."""
        info.latency_ms = round((time.perf_counter() - info.started) * 1000, 3)
        info.route = _route(scope)
        if info.project_id is not None and self.project_names is not None:
            info.project = await self.project_names(info.project_id)
        info.trace_id = span.trace_id or None
        span.rename(f"{info.method} {info.route}" if info.route else info.method)
        span.set(
            **{
                "http.route": info.route,
                "http.response.status_code": info.status,
                "lmfoundry.request_id": info.request_id,
                "lmfoundry.project": info.project,
                "lmfoundry.target.kind": info.target_kind,
                "lmfoundry.target.name": info.target,
                "lmfoundry.deployment": info.deployment,
            }
        )
        if info.status is not None and info.status >= 500:
            span.fail(f"HTTP {info.status}", info.status)

    async def _limited(
        self, scope: Scope, receive: Receive, send_with_id: Send, headers: dict[bytes, bytes]
    ) -> None:
        limit = await self._limit(scope)
        if limit is None:  # an upload from a caller who is not signed in: never read it
            await self.app(scope, _empty_body(receive), send_with_id)
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit.bytes:
            await _too_large(send_with_id, limit)
            return
        received = 0
        started = refused = False

        async def receive_limited() -> Message:
            # Past the limit: answer 413 here, and tell the app the client left, so no
            # parser can turn the refusal into some other answer (FastAPI makes any error
            # while reading a body a 400).
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bytes:
                    if started:  # the app is already answering: all that is left is to stop
                        raise BodyTooLarge(limit)
                    refused = True
                    await _too_large(send_with_id, limit)
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 was the answer
            started = started or message["type"] == "http.response.start"
            await send_with_id(message)

        await self.app(scope, receive_limited, send_unless_refused)

    async def _limit(self, scope: Scope) -> BodyLimit | None:
        """The body limit of this request; None for an upload whose caller is not signed in."""
        path: str = scope["path"]
        if not path.startswith("/api/"):
            return BodyLimit(self.max_body, "LMFOUNDRY_MAX_BODY_BYTES", "inference bodies")
        upload = UPLOADS.match(path) if scope["method"] == "POST" else None
        if upload is None:
            return BodyLimit(
                self.max_api_body,
                "LMFOUNDRY_MAX_API_BODY_BYTES",
                "management API bodies other than uploads",
            )
        if not await _signed_in(scope):
            return None
        if upload["noun"] in ("flows", "flows/test"):
            # the packed folder plus room for the form's other fields
            return BodyLimit(self.max_flow + 64 * 1024, "LMFOUNDRY_FLOW_MAX_BYTES", "flow folders")
        return BodyLimit(self.max_upload, "LMFOUNDRY_MAX_UPLOAD_BYTES", "uploads")


# The routes that take files (multipart): datasets, flow folders, a run's data.
UPLOADS = re.compile(
    r"^/api/v1/projects/[^/]+/(?P<noun>datasets|flows|flows/test|flows/[^/]+/runs)/?$"
)


@dataclass(frozen=True)
class BodyLimit:
    bytes: int
    setting: str  # the environment variable that sets it
    what: str  # the bodies it applies to


async def _signed_in(scope: Scope) -> bool:
    """Whether the request carries a valid token or studio session, checked as the routes
    check it (api/deps.py) but before the body is read. The CSRF token and the caller's
    role are left to the route."""
    app = scope.get("app")
    platform = getattr(getattr(app, "state", None), "platform", None)
    if platform is None:
        return False
    headers = Headers(scope=scope)
    scheme, _, token = headers.get("authorization", "").partition(" ")
    try:
        if scheme.lower() == "bearer" and token.strip():
            await asyncio.to_thread(platform.access.authenticate, token.strip())
            return True
        session = platform.sessions.open(cookie_parser(headers.get("cookie", "")).get(COOKIE))
        if session is None:
            return False
        await asyncio.to_thread(platform.access.authenticate_digest, session.token_digest)
        return True
    except LmfError:  # refused, or the database is busy: the route checks again and says so
        return False


def _route(scope: Scope) -> str:
    """The matched route's path template (`/api/v1/projects/{project}/flows`), or "". FastAPI
    puts the route of an included router in the scope without the router's prefix: the
    prefix is the part of the path before what the route's own pattern matches."""
    route = scope.get("route")
    template, pattern = getattr(route, "path", None), getattr(route, "path_regex", None)
    if not isinstance(template, str) or pattern is None:
        return ""
    path: str = scope["path"]
    for at in (i for i, c in enumerate(path) if c == "/"):
        if pattern.match(path[at:]):
            return path[:at] + template
    return template


def _status_of(exc: BaseException) -> int:
    """The status a request that raised ends with: its error's, or 499 when the client left."""
    if isinstance(exc, LmfError):
        return exc.status_code
    return 499 if isinstance(exc, asyncio.CancelledError) else 500


def _empty_body(receive: Receive) -> Receive:
    """A `receive` whose body is empty; the real one is never read."""
    sent = False

    async def empty() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await receive()  # after the body: the disconnect, as uvicorn sends it

    return empty


class BodyTooLarge(PayloadTooLarge):
    """Raised from `receive` mid-read; the app's error handler turns it into a 413."""

    def __init__(self, limit: BodyLimit) -> None:
        super().__init__(_too_large_message(limit))
        self.limit = limit


def _too_large_message(limit: BodyLimit) -> str:
    return (
        f"The request body is larger than {limit.bytes:,} bytes, the limit for {limit.what} "
        f"({limit.setting}); send less. Larger bodies are taken only on the upload routes "
        "(datasets, flows, run data), from a caller whose token checks out."
    )


async def _too_large(send: Any, limit: BodyLimit) -> None:
    await _refuse(send, 413, "payload_too_large", _too_large_message(limit))


async def _refuse(send: Any, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "status": status, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AuthThrottle:
    """Brute-force protection for tokens and keys. Authentication failures (401) are counted
    over `window` seconds in two ways, neither of them global:

    - per client address (`scope["client"]`, which `ForwardedClient` sets from the headers
      of trusted proxies): an address with `limit` failures gets 429 for every credentialed
      request, right or wrong credentials alike, so guessing many keys from one place gains
      nothing; other addresses go on as before;
    - per credential prefix (the first PREFIX_CHARS characters of the token or key
      presented; token listings show this much): a prefix with `limit` failures gets 429
      wherever it comes from, so guesses at one key spread over many addresses are stopped
      too, while other keys and tokens work on.

    Counted per process (several gateways multiply the limit).
    """

    PREFIX_CHARS = 12  # "lmf_pat_" and 4 random characters; 12 hex digits of a key
    MAX_TRACKED = 10_000  # addresses or prefixes with recent failures kept in memory

    def __init__(self, app: ASGIApp, limit: int = 30, window: float = 60.0) -> None:
        self.app = app
        self.limit = limit
        self.window = window
        self._by_address: dict[str, deque[float]] = {}
        self._by_prefix: dict[str, deque[float]] = {}

    def _wait(self, table: dict[str, deque[float]], key: str, now: float) -> int | None:
        """Seconds until `key` may try again, or None when it is under the limit."""
        failures = table.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.limit:
            return None
        return max(1, int(failures[0] + self.window - now) + 1)

    def _fail(self, table: dict[str, deque[float]], key: str, now: float) -> None:
        failures = table.get(key)
        if failures is None:
            if len(table) >= self.MAX_TRACKED:  # forget the idle first, keep memory bounded
                for old in [k for k, v in table.items() if not v or v[-1] <= now - self.window]:
                    del table[old]
                while len(table) >= self.MAX_TRACKED:
                    del table[next(iter(table))]
            failures = table[key] = deque(maxlen=self.limit)
        failures.append(now)

    def _prefixes(self, headers: dict[bytes, bytes]) -> set[str]:
        presented = [headers.get(b"api-key", b"")]
        scheme, _, credential = headers.get(b"authorization", b"").partition(b" ")
        presented.append(credential.strip() if scheme.lower() == b"bearer" else b"")
        return {p[: self.PREFIX_CHARS].decode("latin-1") for p in presented if p.strip()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        headers = dict(scope["headers"])
        credentialed = any(h in headers for h in (b"authorization", b"api-key", b"cookie"))
        prefixes = self._prefixes(headers)
        now = time.monotonic()
        if credentialed:
            wait, source = self._wait(self._by_address, client, now), f"from {client}"
            if wait is None:
                waits = [w for p in prefixes if (w := self._wait(self._by_prefix, p, now))]
                wait, source = (max(waits), "with this token or key") if waits else (None, "")
            if wait is not None:
                await _too_many_failures(send, source, wait)
                return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                at = time.monotonic()
                self._fail(self._by_address, client, at)
                for prefix in prefixes:
                    self._fail(self._by_prefix, prefix, at)
            await send(message)

        await self.app(scope, receive, watch)


async def _too_many_failures(send: Send, source: str, wait: int) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "too_many_failures",
                "status": 429,
                "message": f"Too many failed authentication attempts {source}; wait {wait} s "
                "and check your token or key.",
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(wait).encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
