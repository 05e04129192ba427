"""ASGI middleware: request ids, body size limits, and tidy paths.

Written as raw ASGI (not `BaseHTTPMiddleware`) so streaming responses pass through
untouched and the per-request cost stays in microseconds.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import deque
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmfoundry.errors import PayloadTooLarge

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The HTTP parser uvicorn uses (httptools) accepts headers of any size; this caps them.
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100


class RequestContext:
    """Adds `x-request-id` to every response (reusing a well-formed one from the caller),
    collapses duplicate slashes (SDKs join `endpoint/` + `/chat/completions`), answers 413
    for bodies over the limit before the app reads them, and 431 for oversized headers."""

    def __init__(self, app: ASGIApp, max_body: int, max_upload: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload

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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", raw_id)]
            await send(message)

        limit = self.max_upload if scope["path"].startswith("/api/") else self.max_body
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(send_with_id, limit)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, receive_limited, send_with_id)
        except BodyTooLarge:
            await _too_large(send_with_id, limit)


class BodyTooLarge(PayloadTooLarge):
    """Raised from `receive` mid-read; the app's error handler turns it into a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(_too_large_message(limit))
        self.limit = limit


def _too_large_message(limit: int) -> str:
    return (
        f"The request body is larger than {limit:,} bytes; send less (inference bodies: "
        "LMFOUNDRY_MAX_BODY_BYTES, uploads: LMFOUNDRY_MAX_UPLOAD_BYTES)."
    )


async def _too_large(send: Any, limit: int) -> None:
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
