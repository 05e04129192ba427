"""Starting and driving flow processes from the server.

Each flow process gets a private working folder (mode 0700) holding a copy of the flow, which
is its working directory, with HOME and TMPDIR inside it; an environment built from scratch
(no LMFOUNDRY_* variables, so never the master key); the flow's own connections, decrypted
here and written to its stdin; and a time limit per line, after which it is killed. Its
stderr goes to a log file with every secret it was handed replaced by "***"; outputs and
errors are masked the same way before they leave this module.

Unless the operator opts out (LMFOUNDRY_FLOW_SANDBOX=off), the process runs in the sandbox of
`sandbox.py` (bubblewrap: its own uid, mounts, pid and network namespaces, rlimits, seccomp)
and reaches the network only through the egress proxy of `egress.py`. Either way it leads a
process group of its own, killed whole when it is stopped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from lmfoundry.config import Settings
from lmfoundry.connections.models import ResolvedConnection
from lmfoundry.errors import FlowFailed, InvalidRequest
from lmfoundry.flows.egress import EgressPolicy, EgressProxy
from lmfoundry.flows.fields import connection_references
from lmfoundry.flows.flex import FlexFlow
from lmfoundry.flows.models import Dag
from lmfoundry.flows.sandbox import INSIDE, Sandbox, missing, seccomp_fd
from lmfoundry.observability import tracing

# Variables a flow process inherits; everything else (tokens, cloud credentials, the master
# key) stays with the server. Flow-specific values come from environment_variables.
INHERITED_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
PROXY_ENV = {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}
PYTHON_FLAGS = (
    "-I",  # no PYTHON* variables, no user site-packages, no cwd on the path
    "-B",
    "-u",
    "-X",
    "utf8",
)
STDOUT_LIMIT = 64 * 1024 * 1024  # bytes in one answer line (a line's outputs)
MIN_SECRET = 4  # shorter values would mask ordinary text; nothing that short is a real key


class Redactor:
    """Replaces each known secret value with "***" in text and in JSON-like values."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._values = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)

    @classmethod
    def of(cls, connections: dict[str, ResolvedConnection]) -> Redactor:
        return cls(v for c in connections.values() for v in c.secrets.values())

    def text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, "***")
        return text

    def value(self, value: Any) -> Any:
        if not self._values:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the flow process's whole group while its leader is still there (so the group
    id cannot belong to anyone else yet); in the sandbox, its pid namespace goes with it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "node": None, "traceback": ""}


class FlowProcess:
    """One flow process, answering lines one at a time."""

    def __init__(
        self,
        dag: Dag,
        connections: dict[str, ResolvedConnection],
        timeout: float,
        log_path: Path,
        settings: Settings,
        bindings: dict[str, str] | None = None,
    ) -> None:
        self.dag = dag
        self.bindings = dict(bindings or {})  # node.input -> connection, bound at run time
        self.connections = connections
        self.timeout = timeout
        self.log_path = log_path
        self.redactor = Redactor.of(connections)
        self.settings = settings
        self._sandbox: Sandbox | None = None
        self._proxy: EgressProxy | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._workdir: Path | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=8)
        self._busy = False  # a line or an aggregation is under way

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def sandboxed(self) -> bool:
        return self.settings.flow_sandbox == "bwrap"

    def _environment(self, workdir: Path) -> dict[str, str]:
        names = [n for n in INHERITED_ENV if not (self.sandboxed and n in PROXY_ENV)]
        env = {k: os.environ[k] for k in names if k in os.environ}  # not config
        env.update(self.dag.environment_variables)
        env.update(self._referenced_fields())
        env.update({"HOME": str(workdir / "home"), "TMPDIR": str(workdir / "tmp")})
        return env

    def _referenced_fields(self) -> dict[str, str]:
        """The environment variables written `${connection.field}`, as that field's value
        (a secret stays masked in everything the process answers); 400 naming a missing one."""
        values = {}
        for variable, (name, key) in connection_references(self.dag.environment_variables).items():
            connection = self.connections.get(name)
            fields = {} if connection is None else {**connection.configs, **connection.secrets}
            if key not in fields:
                known = ", ".join(sorted(fields)) or "none"
                raise InvalidRequest(
                    f"environment_variables.{variable} reads ${{{name}.{key}}}, but connection "
                    f"{name!r} has no field {key!r} (its fields: {known}); fix the reference.",
                    param=f"environment_variables.{variable}",
                )
            values[variable] = str(fields[key])
        return values

    def _limits(self) -> dict[str, int]:
        limits = {
            "cpu_seconds": self.settings.flow_cpu_seconds,
            "memory_bytes": self.settings.flow_memory_bytes,
            "file_bytes": self.settings.flow_file_bytes,
            "open_files": 1024,
            "core_bytes": 0,
        }
        if self.sandboxed:  # counted per user (namespace): only meaningful for a uid of its own
            limits["processes"] = self.settings.flow_processes
        return limits

    async def _sandboxed_command(self, workdir: Path, fd: int | None) -> list[str]:
        """bwrap's command line, with the egress proxy listening and the folder handed over."""
        self._sandbox = Sandbox(self.settings)
        self._sandbox.acquire()
        policy = EgressPolicy.of(self.connections, self.settings)
        self._proxy = EgressProxy(policy, workdir / "egress.sock")
        await self._proxy.start()
        await asyncio.to_thread(self._sandbox.own, workdir)
        inner = [sys.executable, *PYTHON_FLAGS, "-m", "lmfoundry.flows.process", "--sandboxed"]
        inner += ["--egress", str(INSIDE / "egress.sock"), "--limits", json.dumps(self._limits())]
        return self._sandbox.command(workdir, inner, fd)

    async def start(self) -> None:
        """Start the process and hand it the flow and its connections; FlowFailed if the
        flow's code cannot even be imported."""
        self._workdir = Path(tempfile.mkdtemp(prefix="lmfoundry-flow-"))
        flow_dir = self._workdir / "flow"
        await asyncio.to_thread(
            shutil.copytree,
            self.dag.folder,
            flow_dir,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        for sub in ("home", "tmp"):
            (self._workdir / sub).mkdir(mode=0o700)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        seen = self._workdir  # the working folder as the flow process sees it
        fd = seccomp_fd() if self.sandboxed else None
        try:
            if self.sandboxed:
                argv, seen = await self._sandboxed_command(self._workdir, fd), INSIDE
            else:
                argv = [sys.executable, *PYTHON_FLAGS, "-m", "lmfoundry.flows.process"]
                argv += ["--parent", str(os.getpid()), "--limits", json.dumps(self._limits())]
            self._process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=flow_dir,
                env=self._environment(seen),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=STDOUT_LIMIT,
                start_new_session=True,  # a process group of its own, killed whole at the end
                pass_fds=(fd,) if fd is not None else (),
            )
        except BaseException:
            await self.close()
            raise
        finally:
            if fd is not None:
                os.close(fd)
        if self._process.stderr is None:
            raise RuntimeError("the flow process has no stderr pipe")
        self._stderr_task = asyncio.create_task(self._copy_stderr(self._process.stderr))
        init = {
            "op": "init",
            "flow_dir": str(seen / "flow"),
            "connections": {n: c.to_wire() for n, c in self.connections.items()},
            "bindings": self.bindings,
            **({"init": self.dag.init_kwargs} if isinstance(self.dag, FlexFlow) else {}),
        }
        try:
            await self._send(init)
            event = await self._next(self.timeout)
        except (TimeoutError, EOFError, ConnectionError, ValueError) as exc:
            await self._wait_for_exit()
            why, setup = self._why(exc), self._sandbox_failure()
            await self.close()
            if setup:
                raise missing(setup) from exc
            raise FlowFailed(f"The flow process did not start: {why}") from exc
        if event.get("event") != "ready":
            await self.close()
            error = self.redactor.value(event.get("error") or {})
            raise FlowFailed(
                error.get("message") or "The flow process failed to start.",
                detail={"node": error.get("node"), "traceback": error.get("traceback")},
            )

    async def _copy_stderr(self, stderr: asyncio.StreamReader) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            while line := await stderr.readline():
                text = self.redactor.text(line.decode("utf-8", errors="replace"))
                self._tail.append(text.rstrip())
                log.write(text)
                log.flush()

    async def _send(self, message: dict[str, Any]) -> None:
        if self._process is None or self._process.stdin is None:
            raise ConnectionError("the flow process is not running")
        self._process.stdin.write(json.dumps(message).encode() + b"\n")
        await self._process.stdin.drain()

    async def _next(self, timeout: float) -> dict[str, Any]:
        if self._process is None or self._process.stdout is None:
            raise EOFError
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
        if not line:
            raise EOFError
        return dict(json.loads(line))

    def _sandbox_failure(self) -> str | None:
        """bubblewrap's own complaint, when it could not set the sandbox up."""
        for line in self._tail:
            if line.startswith("bwrap:"):
                hint = ""
                if "namespace" in line or "uid map" in line:
                    hint = (
                        " (unprivileged user namespaces are off: sysctl "
                        "kernel.unprivileged_userns_clone=1, or on Ubuntu "
                        "kernel.apparmor_restrict_unprivileged_userns=0)"
                    )
                return f"bubblewrap failed: {line.removeprefix('bwrap:').strip()}{hint}"
        return None

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, ValueError):
            return f"its answer was larger than {STDOUT_LIMIT // 2**20} MiB"
        if isinstance(exc, TimeoutError):
            return (
                f"it took longer than {self.timeout:g} s (LMFOUNDRY_FLOW_LINE_TIMEOUT) and was "
                "stopped"
            )
        code = self._process.returncode if self._process else None
        tail = " | ".join(self._tail) or "no output"
        return f"the flow process exited (code {code}): {tail}"

    async def line(
        self, index: int, inputs: dict[str, Any], stream: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Run one line: yields `outputs` and `chunk` events while streaming, then the `line`
        event. A timeout or a crash ends the process and yields a failed line. Traced, the
        line is a `flow.line` span and the process sends back one span per node."""
        span = tracing.start("flow.line", **{"lmfoundry.flow.line": index})
        try:
            async with contextlib.aclosing(
                self._line(index, inputs, stream, span.traceparent())
            ) as events:
                async for event in events:
                    if event.get("event") == "line":
                        tracing.record_remote(span, event.pop("spans", None))
                        span.end(200 if event.get("status") == "completed" else 500)
                    yield event
        finally:
            span.end()

    async def _line(
        self, index: int, inputs: dict[str, Any], stream: bool, traceparent: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        self._busy = True
        try:
            line = {"op": "line", "index": index, "inputs": inputs, "stream": stream}
            await self._send({**line, "traceparent": traceparent} if traceparent else line)
            while True:
                event = self.redactor.value(await self._next(deadline - loop.time()))
                if event.get("event") == "line":
                    self._busy = False
                yield event
                if event.get("event") == "line":
                    return
        except (TimeoutError, EOFError, ConnectionError, ValueError) as exc:
            failure: BaseException = exc
        # The process timed out or died: report the line, and clean up before saying so (a
        # caller may stop reading at the line event).
        await self._wait_for_exit()
        kind = "Timeout" if isinstance(failure, TimeoutError) else "ProcessExited"
        message = f"Line {index} failed: {self._why(failure)}."
        elapsed = round(self.timeout - (deadline - loop.time()), 4)
        await self.close()
        yield {
            "event": "line",
            "index": index,
            "status": "failed",
            "outputs": None,
            "error": _error(kind, message),
            "aggregation_inputs": {},
            "duration_s": elapsed,
        }

    async def run_line(self, index: int, inputs: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        async for event in self.line(index, inputs):
            result = event  # the last event is the line's result
        return result

    async def aggregate(self, lists: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
        self._busy = True
        try:
            await self._send({"op": "aggregate", "inputs": lists})
            result = dict(self.redactor.value(await self._next(self.timeout)))
            self._busy = False
            return result
        except (TimeoutError, EOFError, ConnectionError, ValueError) as exc:
            await self._wait_for_exit()
            message = f"Aggregation failed: {self._why(exc)}."
            await self.close()
            return {"status": "failed", "error": _error("ProcessExited", message), "metrics": {}}

    async def _wait_for_exit(self) -> None:
        """Give a crashed process a moment to be reaped so its exit code and stderr are known;
        a hung one is killed."""
        if self._process is None:
            return
        if self._process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), 0.2)
        if self._process.returncode is None:
            _kill(self._process)
            await self._process.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)

    async def close(self) -> None:
        """Stop the process and remove what it had. A cancel while it closes (a run canceled,
        the server stopping) still kills the process group and cleans up, without waiting:
        the uid goes back to the pool only with the rest."""
        process, self._process = self._process, None
        try:
            if process is not None:
                if self._busy and process.returncode is None:  # canceled mid-line: stop it now
                    _kill(process)
                if process.stdin is not None and not process.stdin.is_closing():
                    process.stdin.close()
                try:
                    await asyncio.wait_for(process.wait(), 2.0)
                except TimeoutError:
                    _kill(process)
                    await process.wait()
                except asyncio.CancelledError:
                    _kill(process)
                    raise
            if self._stderr_task is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stderr_task, 2.0)
            if self._workdir is not None:
                await asyncio.to_thread(shutil.rmtree, self._workdir, True)
                self._workdir = None
        finally:
            self._release()

    def _release(self) -> None:
        """What `close` must never skip, at once."""
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            self._stderr_task = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, True)
            self._workdir = None
        if self._sandbox is not None:
            self._sandbox.release()  # only now: nothing of the uid is left
            self._sandbox = None
