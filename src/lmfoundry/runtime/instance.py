"""One local instance: a llama-server process for a GGUF model, or a Python worker
(`runtime.worker`) for the engines that run in Python; its start, readiness, death and restart,
and the client a gateway talks to it with. Groups of them are `runtime.local`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from lmfoundry.engines.base import Delta, GenerationRequest
from lmfoundry.errors import EngineFailed, Unavailable
from lmfoundry.runtime import llama_server
from lmfoundry.runtime.backend import InstanceInfo
from lmfoundry.runtime.client import InstanceClient, InstanceLost
from lmfoundry.runtime.environment import child_environment
from lmfoundry.runtime.lifeline import parent_death_signal
from lmfoundry.runtime.spec import InstanceSpec

log = logging.getLogger("lmfoundry.runtime")

READY_POLL_SECONDS = 0.02


Client = InstanceClient | llama_server.LlamaServerClient


def instance_client(spec: InstanceSpec, socket: str) -> Client:
    """How a gateway talks to an instance of `spec`: llama-server's HTTP for GGUF models,
    the worker's line protocol for the engines that run in a Python worker."""
    if spec.engine == llama_server.ENGINE:
        return llama_server.LlamaServerClient(socket, spec.options_dict.get("loras") or ())
    return InstanceClient(socket)


def instance_command(spec: InstanceSpec, socket: str) -> list[str]:
    """The process of one instance: llama-server itself for GGUF models, else a worker."""
    if spec.engine == llama_server.ENGINE:
        return llama_server.command(
            llama_server.find_binary(), spec.model_path, socket, spec.options_dict
        )
    return [
        sys.executable,
        "-m",
        "lmfoundry.runtime.worker",
        "--socket",
        socket,
        "--spec",
        spec.to_json(),
        "--parent",
        str(os.getpid()),
    ]


class LocalInstance:
    def __init__(
        self,
        group: str,
        name: str,
        spec: InstanceSpec,
        index: int,
        sockets: Path,
        logs: Path,
        homes: Path,
    ) -> None:
        self.spec = spec
        self.id = f"{group}-{index}"
        self.home = homes / self.id  # the process's HOME and TMPDIR; it sees no other
        self.name = name  # the group's: the deployment it serves, for messages
        # The pid keeps two servers on one home (several gateways) from sharing a socket.
        self.socket = sockets / f"{os.getpid()}-{self.id}.sock"
        self.log_path = logs / f"{self.id}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.state = "stopped"
        self.active = 0
        self.restarts = 0
        self.started_at: float | None = None
        self.last_error: str | None = None
        self._starting: asyncio.Task[None] | None = None
        self._client: Client | None = None
        self._log_start = 0  # where this run's output begins in the (appended) log

    # -- lifecycle ---------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def ensure_started(self, timeout: float) -> None:
        """Start the process if needed and wait until it answers its health check."""
        if self.ready():
            return
        if self._starting is None or self._starting.done():  # stopped, or failed: (re)start
            self._starting = asyncio.create_task(self._start(timeout))
        await asyncio.shield(self._starting)

    async def _start(self, timeout: float) -> None:
        try:
            await self._spawn_and_wait(timeout)
        except BaseException as exc:
            self.state = "failed"
            self.last_error = str(exc)
            raise

    async def _spawn_and_wait(self, timeout: float) -> None:
        await self._terminate()
        self.state = "starting"
        self.last_error = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = instance_command(self.spec, str(self.socket))
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child from here
        try:
            self._log_start = log_file.tell()
            self.process = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                # none of the server's secrets: the variables it needs, a HOME of its own
                env=child_environment(self.home),
                # llama-server has no parent watchdog of its own (the worker has).
                preexec_fn=parent_death_signal,
            )
        finally:
            log_file.close()
        self.started_at = time.time()
        self._client = instance_client(self.spec, str(self.socket))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(
                    f"The instance for {Path(self.spec.model_path).name} exited while loading "
                    f"(code {self.process.returncode}): {self._exit_reason()}"
                )
            if self.socket.exists():
                try:
                    await self._client.health(timeout=2.0)
                except InstanceLost:
                    pass
                else:
                    self.state = "ready"
                    log.info("instance %s ready (pid %s)", self.id, self.process.pid)
                    return
            await asyncio.sleep(READY_POLL_SECONDS)
        await self._terminate()
        raise Unavailable(
            f"The instance for {Path(self.spec.model_path).name} did not become ready within "
            f"{timeout:.0f} s; raise LMFOUNDRY_INSTANCE_START_TIMEOUT or check {self.log_path}."
        )

    def _exit_reason(self) -> str:
        """Why this run's process exited, in its own words."""
        if self.spec.engine != llama_server.ENGINE:
            return self._log_tail()
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(self._log_start)
                text = log_file.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return llama_server.error_line(text)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(no output)"

    async def stop(self) -> None:
        self.state = "stopping"
        await self._terminate()
        self.state = "stopped"
        self._starting = None

    async def _terminate(self, grace: float = 5.0) -> None:
        process, self.process = self.process, None
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            process.kill()
            await asyncio.to_thread(process.wait)

    def mark_dead(self) -> None:
        """Called when the process is found gone; the supervisor restarts it."""
        code = self.process.returncode if self.process else None
        self.fail(f"instance process exited (code {code}); {self._exit_reason()}")

    def fail(self, reason: str) -> None:
        """Take the instance out of routing at once; the supervisor's next tick restarts it
        (stopping the old process first, if it is still there)."""
        if self.state in ("ready", "starting"):
            self.state = "failed"
            self.last_error = reason
            log.warning("instance %s failed: %s", self.id, reason)

    def ready(self) -> bool:
        return self.state == "ready" and self.alive()

    # -- requests ----------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        if self._client is None or not self.alive():
            raise Unavailable("instance is not running")
        return await self._client.health()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        client = self._client
        if client is None or not self.alive():
            raise Unavailable(
                "The instance is not running; retry in a moment.", headers={"Retry-After": "1"}
            )
        self.active += 1
        try:
            async for delta in client.generate(request):
                yield delta
        except InstanceLost as exc:
            # The process died, its engine failed, or the connection to it broke: in each
            # case the instance is restarted rather than trusted with the next request.
            await llama_server.exit_settled(self.process)
            reason = str(exc)
            if self.alive():
                self.fail(f"{type(exc).__name__}: {exc}")
            else:
                code = self.process.returncode if self.process is not None else None
                reason = f"its process exited with code {code}"
                self.mark_dead()
            raise EngineFailed(
                f"Instance {self.id} of {self.name} failed while answering ({reason}); it is "
                "being restarted. Retry the request in a few seconds.",
                headers={"Retry-After": "2"},
            ) from exc
        finally:
            self.active -= 1

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One vector per input (token ids), from llama-server's embeddings mode."""
        client = self._client
        if client is None or not self.alive():
            raise Unavailable(
                "The instance is not running; retry in a moment.", headers={"Retry-After": "1"}
            )
        if not isinstance(client, llama_server.LlamaServerClient):
            raise Unavailable(f"The {self.spec.engine} engine does not compute embeddings.")
        self.active += 1
        try:
            return await client.embed(inputs)
        except InstanceLost as exc:
            await llama_server.exit_settled(self.process)
            if self.alive():
                self.fail(f"{type(exc).__name__}: {exc}")
            else:
                self.mark_dead()
            raise EngineFailed(
                f"Instance {self.id} of {self.name} failed while embedding ({exc}); it is "
                "being restarted. Retry the request in a few seconds.",
                headers={"Retry-After": "2"},
            ) from exc
        finally:
            self.active -= 1

    def info(self, group: str) -> InstanceInfo:
        return InstanceInfo(
            id=self.id,
            group=group,
            state=self.state,
            pid=self.process.pid if self.process and self.alive() else None,
            active=self.active,
            restarts=self.restarts,
            started_at=self.started_at,
            last_error=self.last_error,
            slots=_slots(self.spec),
        )


def _slots(spec: InstanceSpec) -> int | None:
    value = dict(spec.options).get("max_sequences")
    return int(value) if isinstance(value, int) else None
