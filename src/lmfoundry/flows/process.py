"""The flow process: runs one flow's lines for the server, in a process of its own.

    python -I -m lmfoundry.flows.process --parent PID

The server (`launcher.py`) starts it in a private working folder with a scrubbed environment
and talks JSON lines. It writes to stdin, first

    {"op": "init", "flow_dir": DIR, "connections": {NAME: {configs, secrets}}}

(the only way secrets reach the process), then any number of

    {"op": "line", "index": N, "inputs": {...}, "stream": false}
    {"op": "aggregate", "inputs": {NODE: {INPUT: [one value per line]}}}

and closes stdin when done. The answers go to the process's original stdout:

    {"event": "ready"} or {"event": "failed", "error": {...}}      after init
    {"event": "outputs", "index", "outputs", "stream": NAME}        streaming lines only, then
    {"event": "chunk", "index", "text"}                              one per yielded chunk
    {"event": "line", "index", "status", "outputs", "error", "aggregation_inputs", "duration_s"}
    {"event": "aggregated", "status", "metrics", "outputs", "error"}

Whatever flow code prints or logs goes to stderr, which the server keeps in a log with
secrets masked. stdin is /dev/null for flow code, so it cannot read the protocol either.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from lmfoundry.errors import LmfError
from lmfoundry.flows.dag import load_dag
from lmfoundry.flows.executor import Executor, NodeError, describe
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmfoundry-flow")
    parser.add_argument("--parent", type=int, default=os.getppid())
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    commands, answers = _protocol_streams()

    def emit(event: dict[str, Any]) -> None:
        answers.write(json.dumps(event) + "\n")

    init = json.loads(commands.readline())
    flow_dir = Path(init["flow_dir"])
    # Imported above, before the flow folder goes on the path, so a flow file named like a
    # library (yaml.py, say) cannot replace what the executor uses.
    sys.path[:0] = [str(flow_dir), str(COMPAT)]
    try:
        dag = load_dag(flow_dir)
        executor = Executor(dag, init.pop("connections"))
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
            node = executor.dag.outputs[name].reference.root
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
        }
    )


if __name__ == "__main__":
    main()
