"""The SDK's connection to a server: where it is and which token it holds (as the CLI
saved them, or given), one call with error statuses mapped to lmfoundry's exceptions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
from pydantic import TypeAdapter

from lmfoundry import errors
from lmfoundry.config import get_settings

T = TypeVar("T")

_BY_STATUS: dict[int, type[errors.LmfError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    422: errors.Unprocessable,
    429: errors.RateLimited,
    502: errors.EngineFailed,
    503: errors.Unavailable,
    504: errors.Timeout,
}


def load_credentials(home: Path | None = None) -> dict[str, str]:
    path = (home or get_settings().home) / "credentials"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        error = body.get("error", body)
        message = error.get("message") or json.dumps(body)
        param = error.get("param")
    except ValueError:
        message, param = response.text[:500] or response.reason_phrase, None
    cls = _BY_STATUS.get(response.status_code, errors.LmfError)
    exc = cls(message, param=param, headers=dict(response.headers))
    exc.status_code = response.status_code
    raise exc


class BaseClient:
    """The connection: URL, token and default project, and one call with its errors mapped
    to lmfoundry's exceptions. `Client` adds a method per API operation."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        project: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        settings = get_settings()
        saved = load_credentials(settings.home)
        self.url = (url or settings.url or saved.get("url") or settings.base_url).rstrip("/")
        self.token = token or settings.token or saved.get("token")
        self.project = project or settings.default_project
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise errors.Unavailable(
                f"Cannot reach lmfoundry at {self.url}; start it with `lmfoundry up` or set "
                "LMFOUNDRY_URL."
            ) from exc
        raise_for(response)
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def _one(self, view: type[T], method: str, path: str, **kwargs: Any) -> T:
        """`_call`, its JSON read as `view`: the type the server's service answers with."""
        return _adapter(view).validate_python(self._call(method, path, **kwargs))

    def _many(self, view: type[T], method: str, path: str, **kwargs: Any) -> list[T]:
        """`_call` for a listing, each item read as `view`."""
        return _adapter(list[view]).validate_python(self._call(method, path, **kwargs))  # type: ignore[valid-type]

    def _p(self, project: str | None) -> str:
        return f"/projects/{project or self.project}"


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(view: Any) -> TypeAdapter[Any]:
    """One pydantic adapter per view type (building one costs about a millisecond)."""
    adapter = _ADAPTERS.get(view)
    if adapter is None:
        adapter = _ADAPTERS[view] = TypeAdapter(view)
    return adapter
