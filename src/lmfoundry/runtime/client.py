"""The wire between a gateway and an instance: newline-delimited JSON over a unix socket.

A request is one line, `{"op": "health"}` or `{"op": "generate", "request": {...}}`; the
instance answers health with one line, and generate with one line per delta, the last one
carrying `finish_reason` (or an `error`). Connections are kept and reused one request at a
time; closing one mid-answer cancels that sequence in the instance.

Written here rather than taken from a library: this hop used to be HTTP (httpx to uvicorn),
and with the echo engine it took about a fifth of the gateway's CPU per request (py-spy),
per-token framing included; a line of JSON per message is all the protocol needs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from lmfoundry.engines.base import Delta, GenerationRequest
from lmfoundry.errors import EngineFailed, InvalidRequest

LINE_LIMIT = 1 << 20  # a delta is small; a health answer is a few hundred bytes
IDLE_CONNECTIONS = 64  # kept per instance; more concurrent requests open more and close them

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class InstanceLost(Exception):
    """The connection to the instance broke (it may have died), or its engine failed."""


class EngineDied(InstanceLost):
    """The instance said its engine can answer nothing more; it exits to be restarted."""


class InstanceClient:
    def __init__(self, socket: str) -> None:
        self.socket = socket
        self._idle: list[Connection] = []

    async def _connect(self, timeout: float = 5.0) -> Connection:
        if self._idle:
            return self._idle.pop()
        try:
            return await asyncio.wait_for(
                asyncio.open_unix_connection(self.socket, limit=LINE_LIMIT), timeout
            )
        except (OSError, TimeoutError) as exc:
            raise InstanceLost(f"cannot connect to {self.socket}: {exc}") from exc

    def _release(self, connection: Connection) -> None:
        if len(self._idle) < IDLE_CONNECTIONS and not connection[1].is_closing():
            self._idle.append(connection)
        else:
            connection[1].close()

    async def health(self, timeout: float = 5.0) -> dict[str, Any]:
        reader, writer = await self._connect(timeout)
        try:
            writer.write(b'{"op": "health"}\n')
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                raise InstanceLost("the instance closed the connection")
            answer = dict(json.loads(line))
        except (OSError, TimeoutError, ValueError) as exc:
            writer.close()
            raise InstanceLost(str(exc)) from exc
        except BaseException:
            writer.close()
            raise
        self._release((reader, writer))
        return answer

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Deltas from the instance; `InstanceLost` when the connection breaks, so the caller
        can tell a dead instance from a refused request."""
        reader, writer = await self._connect()
        finished = False
        choices = request.params.n  # the answer ends when each choice has finished
        try:
            message = {"op": "generate", "request": request.to_dict()}
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    raise InstanceLost("the instance closed the connection")
                item = json.loads(line)
                if "error" in item:
                    finished = True
                    error = item["error"]
                    if error.get("kind") == "invalid":
                        raise InvalidRequest(error["message"], param=error.get("param"))
                    if error.get("kind") == "engine_failed":
                        finished = False  # the instance is going away: drop the connection
                        raise EngineDied(error["message"])
                    raise EngineFailed(
                        f"The instance refused the request: {error['message']}",
                        headers={"Retry-After": "1"},
                    )
                delta = Delta.from_item(item)
                if delta.finish_reason is not None:
                    choices -= 1
                finished = choices == 0
                yield delta
                if finished:
                    return
        except (OSError, ValueError) as exc:  # ValueError: a broken line (JSON or over limit)
            finished = False
            raise InstanceLost(str(exc)) from exc
        finally:
            if finished:
                self._release((reader, writer))
            else:
                writer.close()  # mid-answer: the instance sees EOF and stops the sequence

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
