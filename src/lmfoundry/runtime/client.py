"""The wire between a gateway and an instance: HTTP over a unix socket, deltas as NDJSON."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from lmfoundry.engines.base import Delta, GenerationRequest
from lmfoundry.errors import EngineFailed, InvalidRequest


class InstanceLost(Exception):
    """The connection to the instance broke (it may have died)."""


class InstanceClient:
    def __init__(self, socket: str) -> None:
        self.socket = socket
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket),
            base_url="http://instance",
            timeout=httpx.Timeout(None, connect=5.0),
        )

    async def health(self, timeout: float = 5.0) -> dict[str, Any]:
        response = await self._http.get("/health", timeout=timeout)
        response.raise_for_status()
        return dict(response.json())

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Deltas from the instance; `InstanceLost` when the connection breaks, so the caller
        can tell a dead instance from a refused request."""
        try:
            async with self._http.stream("POST", "/generate", json=request.to_dict()) as response:
                if response.status_code != 200:
                    body = (await response.aread()).decode(errors="replace")
                    raise EngineFailed(f"The instance refused the request: {body[:300]}")
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    item = json.loads(line)
                    if "error" in item:
                        raise InvalidRequest(
                            item["error"]["message"], param=item["error"].get("param")
                        )
                    yield Delta(
                        text=item["text"],
                        completion_tokens=item["n"],
                        finish_reason=item.get("finish_reason"),
                    )
        except (httpx.TransportError, json.JSONDecodeError) as exc:
            raise InstanceLost(str(exc)) from exc

    async def aclose(self) -> None:
        await self._http.aclose()
