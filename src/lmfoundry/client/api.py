"""The Python SDK: a thin client of the management API (the CLI uses it too).

from lmfoundry.client import Client
lmf = Client()                       # URL and token from $LMFOUNDRY_HOME/credentials
dep = lmf.create_serverless("my-smol", "SmolLM2-135M-Instruct")
keys = lmf.serverless_keys("my-smol")
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from lmfoundry import errors
from lmfoundry.config import get_settings

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


class Client:
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

    def __enter__(self) -> Client:
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

    def _p(self, project: str | None) -> str:
        return f"/projects/{project or self.project}"

    # -- identity, projects ------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/me")

    def projects(self) -> list[dict[str, Any]]:
        return self._call("GET", "/projects")

    def create_project(self, name: str, description: str = "") -> dict[str, Any]:
        return self._call("POST", "/projects", json={"name": name, "description": description})

    def members(self, project: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", self._p(project) + "/members")

    def set_member(self, user: str, role: str, project: str | None = None) -> dict[str, Any]:
        return self._call("PUT", self._p(project) + f"/members/{user}", json={"role": role})

    def remove_member(self, user: str, project: str | None = None) -> None:
        self._call("DELETE", self._p(project) + f"/members/{user}")

    def create_user(self, name: str, is_admin: bool = False) -> dict[str, Any]:
        return self._call("POST", "/users", json={"name": name, "is_admin": is_admin})

    def users(self) -> list[dict[str, Any]]:
        return self._call("GET", "/users")

    def create_token(self, name: str) -> dict[str, Any]:
        return self._call("POST", "/tokens", json={"name": name})

    def audit(self, project: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return self._call("GET", self._p(project) + "/audit", params={"limit": limit})

    # -- catalog -----------------------------------------------------------------------------

    def catalog(self) -> list[dict[str, Any]]:
        return self._call("GET", "/catalog")

    def card(self, model: str) -> dict[str, Any]:
        return self._call("GET", f"/catalog/{model}")

    def import_model(self, path: str, model_id: str | None = None) -> dict[str, Any]:
        body = {"path": str(Path(path).expanduser().resolve()), "id": model_id}
        return self._call("POST", "/catalog/import", json=body)

    def remove_import(self, model: str) -> None:
        self._call("DELETE", f"/catalog/{model}")

    # -- serverless deployments --------------------------------------------------------------

    def create_serverless(
        self, name: str, model: str, project: str | None = None, **quota: Any
    ) -> dict[str, Any]:
        body = {"name": name, "model": model, **{k: v for k, v in quota.items() if v is not None}}
        return self._call("POST", self._p(project) + "/serverless-deployments", json=body)

    def serverless(self, project: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", self._p(project) + "/serverless-deployments")

    def get_serverless(self, name: str, project: str | None = None) -> dict[str, Any]:
        return self._call("GET", self._p(project) + f"/serverless-deployments/{name}")

    def update_serverless(
        self, name: str, project: str | None = None, **changes: Any
    ) -> dict[str, Any]:
        return self._call(
            "PATCH", self._p(project) + f"/serverless-deployments/{name}", json=changes
        )

    def delete_serverless(self, name: str, project: str | None = None) -> None:
        self._call("DELETE", self._p(project) + f"/serverless-deployments/{name}")

    def serverless_keys(self, name: str, project: str | None = None) -> dict[str, str]:
        return self._call("GET", self._p(project) + f"/serverless-deployments/{name}/keys")

    def regenerate_serverless_key(
        self, name: str, key_type: str, project: str | None = None
    ) -> dict[str, str]:
        return self._call(
            "POST",
            self._p(project) + f"/serverless-deployments/{name}/keys/regenerate",
            json={"key_type": key_type},
        )

    # -- usage -------------------------------------------------------------------------------

    def usage(
        self,
        group_by: str = "deployment",
        start: str | None = None,
        end: str | None = None,
        project: str | None = None,
    ) -> list[dict[str, Any]]:
        params = {
            k: v
            for k, v in {"group_by": group_by, "start": start, "end": end}.items()
            if v is not None
        }
        return self._call("GET", self._p(project) + "/usage", params=params)


def chat_stream(
    target_url: str, key: str, messages: list[dict[str, str]], timeout: float = 300.0, **params: Any
) -> Iterator[dict[str, Any]]:
    """Stream a chat completion from a deployment's target URL; yields the chunks."""
    body = {"messages": messages, "stream": True, **params}
    with httpx.stream(
        "POST",
        target_url.rstrip("/") + "/chat/completions",
        json=body,
        headers={"api-key": key},
        timeout=timeout,
    ) as response:
        if response.status_code >= 400:
            response.read()
            raise_for(response)
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise errors.EngineFailed(chunk["error"].get("message", "stream failed"))
            yield chunk
