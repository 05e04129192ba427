"""The flow process: runs one flow's lines for the server, in a process of its own.

    python -I -m lmfoundry.flows.process [--parent PID] [--sandboxed] [--egress SOCKET]
        [--limits JSON]

The server (`launcher.py`) starts it in a private working folder with a scrubbed environment
and talks JSON lines. It writes to stdin, first

    {"op": "init", "flow_dir": DIR, "connections": {NAME: {configs, secrets}}}

(the only way secrets reach the process), then any number of

    {"op": "line", "index": N, "inputs": {...}, "stream": false, "traceparent": "00-..."}
    {"op": "aggregate", "inputs": {NODE: {INPUT: [one value per line]}}}

and closes stdin when done. The answers go to the process's original stdout:

    {"event": "ready"} or {"event": "failed", "error": {...}}      after init
    {"event": "outputs", "index", "outputs", "stream": NAME}        streaming lines only, then
    {"event": "chunk", "index", "text"}                              one per yielded chunk
    {"event": "line", "index", "status", "outputs", "error", "aggregation_inputs", "duration_s",
     "spans": [one per node when the line has a traceparent (observability/tracing.py)]}
    {"event": "aggregated", "status", "metrics", "outputs", "error"}

Whatever flow code prints or logs goes to stderr, which the server keeps in a log with
secrets masked. stdin is /dev/null for flow code, so it cannot read the protocol either.

Before it answers a line or an aggregation it kills what flow code started: its process
group, and in the sandbox (`sandbox.py`, `--sandboxed`), where it is pid 2 of a pid namespace
of its own, every other process there, so nothing (double-forked or not) outlives the line.
`--egress` names the Unix socket of the server's egress proxy (`egress.py`): a forwarder on
the sandbox's 127.0.0.1 passes connections there, and HTTP(S)_PROXY point at it. `--limits`
sets rlimits (soft = hard) before any flow code loads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from lmfoundry.errors import LmfError
from lmfoundry.flows import bindings
from lmfoundry.flows.dag import load_dag
from lmfoundry.flows.executor import Executor, NodeError, describe
from lmfoundry.flows.flex_executor import executor_for
from lmfoundry.observability.tracing import LineTrace
from lmfoundry.runtime.lifeline import die_with_parent

COMPAT = Path(__file__).parent / "compat"


def _protocol_streams() -> tuple[TextIO, TextIO]:
    """Keep private copies of stdin/stdout for the protocol; point fd 0 at /dev/null and fd 1 at
    stderr, so flow code can neither read commands nor write into the answers."""
    commands = os.fdopen(os.dup(0), "r", encoding="utf-8")
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return commands, answers


def _check_json(values: dict[str, Any], what: str) -> None:
    for key, value in values.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{what} {key!r} is a {type(value).__name__}, which is not JSON; return "
                "strings, numbers, booleans, lists or dicts."
            ) from exc


LIMITS = {
    "cpu_seconds": resource.RLIMIT_CPU,
    "memory_bytes": resource.RLIMIT_AS,
    "processes": resource.RLIMIT_NPROC,
    "file_bytes": resource.RLIMIT_FSIZE,
    "open_files": resource.RLIMIT_NOFILE,
    "core_bytes": resource.RLIMIT_CORE,
}


def _set_limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        resource.setrlimit(LIMITS[name], (value, value))


def _stop_strays(sandboxed: bool) -> None:
    """Kill what flow code started: in the sandbox, every process of this pid namespace but
    pid 1 (bwrap's init, which reaps) and this one; outside it, every process of this one's
    process group (the launcher made it a group of its own). A process that left the group
    with setsid escapes the latter; only the sandbox stops those."""
    me, group = os.getpid(), os.getpgid(0)
    for _ in range(20):  # a process forking as fast as it can needs a few rounds
        alive = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in (1, me):
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                state, pgrp = fields[0], int(fields[2])
                if state != "Z" and (sandboxed or pgrp == group):  # zombies are dead already
                    alive.append(int(entry))
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        if not alive:
            return
        time.sleep(0.005)


def _splice(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _forward(client: socket.socket, proxy: str) -> None:
    with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
        try:
            upstream.connect(proxy)
        except OSError:
            return
        back = threading.Thread(target=_splice, args=(upstream, client), daemon=True)
        back.start()
        _splice(client, upstream)
        back.join()


def _egress(proxy: str) -> None:
    """Listen on 127.0.0.1 (the sandbox's own loopback) and hand every connection to the
    server's egress proxy; point the usual proxy variables there for flow code."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def serve() -> None:
        while True:
            client, _ = listener.accept()
            threading.Thread(target=_forward, args=(client, proxy), daemon=True).start()

    threading.Thread(target=serve, daemon=True, name="egress-forwarder").start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for name in ("NO_PROXY", "no_proxy"):
        os.environ.pop(name, None)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ[name] = url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmfoundry-flow")
    parser.add_argument("--parent", type=int, default=os.getppid())
    parser.add_argument("--sandboxed", action="store_true")
    parser.add_argument("--egress", help="Unix socket of the server's egress proxy")
    parser.add_argument("--limits", type=json.loads, default={})
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    _set_limits(args.limits)
    if args.egress:
        _egress(args.egress)
    commands, answers = _protocol_streams()

    def emit(event: dict[str, Any]) -> None:
        if event.get("event") in ("line", "aggregated"):
            _stop_strays(args.sandboxed)
        answers.write(json.dumps(event) + "\n")

    init = json.loads(commands.readline())
    flow_dir = Path(init["flow_dir"])
    os.chdir(flow_dir)  # in the sandbox, bwrap leaves it at /
    # Imported above, before the flow folder goes on the path, so a flow file named like a
    # library (yaml.py, say) cannot replace what the executor uses.
    sys.path[:0] = [str(flow_dir), str(COMPAT)]
    try:
        dag = bindings.apply(load_dag(flow_dir), init.get("bindings") or {})
        executor = executor_for(dag, init.pop("connections"), init.pop("init", None))
        executor.load()
    except (LmfError, NodeError) as exc:
        message = exc.message if isinstance(exc, LmfError) else describe(exc)["message"]
        emit({"event": "failed", "error": {**describe(exc), "message": message}})
        sys.exit(1)
    del init
    emit({"event": "ready"})

    for raw in commands:
        command = json.loads(raw)
        if command["op"] == "line":
            _line(executor, command, emit)
        elif command["op"] == "aggregate":
            result = executor.aggregate(command["inputs"])
            result["outputs"] = json.loads(json.dumps(result["outputs"], default=repr))
            emit({"event": "aggregated", **result})


def _line(
    executor: Executor, command: dict[str, Any], emit: Callable[[dict[str, Any]], None]
) -> None:
    index = command["index"]
    started = time.monotonic()
    executor.trace = LineTrace(command.get("traceparent"))  # node spans, sent back below
    result = executor.run_line(command["inputs"], bool(command.get("stream")))
    if result.status == "completed" and result.stream_output:
        name = result.stream_output
        chunks = result.outputs.pop(name)
        emit({"event": "outputs", "index": index, "outputs": result.outputs, "stream": name})
        parts = []
        try:
            for chunk in chunks:
                parts.append(str(chunk))
                emit({"event": "chunk", "index": index, "text": parts[-1]})
            result.outputs[name] = "".join(parts)
        except Exception as exc:  # noqa: BLE001 - the generator is user code
            output = executor.dag.outputs.get(name)  # a flex flow's outputs are what it returns
            node = output.reference.root if output is not None else name
            result.status, result.error = "failed", describe(NodeError(node, exc))
            result.outputs = {}
    if result.status == "completed":
        try:
            _check_json(result.outputs, "Output")
            for node, values in result.aggregation_inputs.items():
                _check_json(values, f"Aggregation node {node!r} input")
        except TypeError as exc:
            result.status, result.error, result.outputs = "failed", describe(exc), {}
            result.aggregation_inputs = {}
    emit(
        {
            "event": "line",
            "index": index,
            "status": result.status,
            "outputs": result.outputs if result.status == "completed" else None,
            "error": result.error,
            "aggregation_inputs": result.aggregation_inputs,
            "duration_s": round(time.monotonic() - started, 4),
            "spans": executor.trace.spans,
        }
    )


if __name__ == "__main__":
    main()
