"""Differential runs: one flow, the same inputs, real Prompt flow and lmfoundry's executor.

Prompt flow 1.18.5 runs in its own venv (`scripts/promptflow-venv` makes .venv-promptflow;
promptflow-core pins a Starlette the server cannot use) through `pf_runner.py`. lmfoundry
runs the flow as the server does: `load_dag` (what an upload checks), then a flow process
(`launcher.FlowProcess`, the one the server starts, sandbox off because this machine may have
no bubblewrap) that answers each line, then the aggregation nodes over the lines that
completed. Both answers have one shape,

    {"load": None or {"type", "message"}, "lines": [{"status", "outputs", "error"}],
     "aggregation": None or {"status", "metrics", "error"}}

and `differences` names what disagrees, by kind. benchmarks/promptflow_parity.py uses the same
functions on Prompt flow's own test flows.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmfoundry.config import Settings
from lmfoundry.errors import LmfError
from lmfoundry.flows.dag import load_dag
from lmfoundry.flows.includes import with_includes
from lmfoundry.flows.launcher import FlowProcess
from lmfoundry.flows.models import Dag

ROOT = Path(__file__).resolve().parents[3]
PF_PYTHON = ROOT / ".venv-promptflow" / "bin" / "python"
PF_RUNNER = Path(__file__).with_name("pf_runner.py")
MISSING = (
    "Prompt flow 1.18.5 is not installed in .venv-promptflow: run scripts/promptflow-venv "
    "(scripts/test does) to run the differential tests"
)


def have_promptflow() -> bool:
    return PF_PYTHON.is_file()


def run_promptflow(flow: Path, lines: list[dict[str, Any]], timeout: int = 300) -> dict[str, Any]:
    """The flow's answers from real Prompt flow, in a snapshot of its folder and a fresh HOME."""
    return run_promptflow_many(flow, [lines], timeout)[0]


def run_promptflow_many(
    flow: Path, runs: list[list[dict[str, Any]]], timeout: int = 300
) -> list[dict[str, Any]]:
    """`run_promptflow` for several runs of one flow, with one Prompt flow process; `timeout`
    is each line's limit (as lmfoundry's), the process gets enough for every line."""
    return run_promptflow_flows([(flow, runs)], timeout)[0]


def run_promptflow_flows(
    flows: list[tuple[Path, list[list[dict[str, Any]]]]],
    timeout: int = 300,
    process_timeout: float | None = None,
) -> list[list[dict[str, Any]]]:
    """`run_promptflow_many` for several flows in one Prompt flow process (each flow's
    environment and modules undone after it): what a benchmark over many flows needs."""
    request = {
        "flows": [{"flow": str(flow.resolve()), "runs": runs} for flow, runs in flows],
        "line_timeout": timeout,
    }
    lines = sum(len(run) for _, runs in flows for run in runs)
    with tempfile.TemporaryDirectory(prefix="pf-parity-") as tmp:
        # No trace service (pf would start one on the fixed port 23333) and no telemetry.
        (Path(tmp) / ".promptflow").mkdir()
        (Path(tmp) / ".promptflow" / "pf.yaml").write_text(
            "trace:\n  destination: none\ntelemetry:\n  enabled: false\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LMFOUNDRY_", "PF_"))}
        env.update(
            {
                "HOME": tmp,
                "PF_DISABLE_TRACING": "true",
                "PROMPTFLOW_DISABLE_TELEMETRY": "true",
                "PF_LOGGING_LEVEL": "CRITICAL",
                "PYTHONPATH": "",
            }
        )
        done = subprocess.run(
            [str(PF_PYTHON), str(PF_RUNNER)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
            timeout=process_timeout or 120 + 30 * len(flows) + timeout * lines,
        )
    last = done.stdout.strip().splitlines()[-1:] or [""]
    try:
        answers = list(json.loads(last[0]))
    except ValueError:
        why = f"exit {done.returncode}: {done.stderr[-2000:]}"
        raise RuntimeError(f"pf_runner gave no answer ({why})") from None
    for flow_answers in answers:
        for answer in flow_answers:
            folder = answer.pop("folder", None)
            for line in answer["lines"]:
                line["outputs"] = _in_flow(line["outputs"], folder)
    return answers


def run_lmfoundry(flow: Path, lines: list[dict[str, Any]], timeout: int = 300) -> dict[str, Any]:
    """The flow's answers from lmfoundry: checked as an upload is, run by a flow process."""
    return run_lmfoundry_many(flow, [lines], timeout)[0]


def run_lmfoundry_many(
    flow: Path, runs: list[list[dict[str, Any]]], timeout: int = 300
) -> list[dict[str, Any]]:
    """`run_lmfoundry` for several runs of one flow, one after the other in one flow process
    (a new one after a line that timed out, as a run's worker starts)."""
    with tempfile.TemporaryDirectory(prefix="lmf-snapshot-") as tmp:
        try:
            # the folder as the CLI packs it: additional includes added under their names
            dag = load_dag(with_includes(flow, Path(tmp) / "flow"))
        except LmfError as exc:
            refused = {"type": type(exc).__name__, "message": exc.message}
            return [{"load": refused, "lines": [], "aggregation": None} for _ in runs]
        return asyncio.run(_run_lmfoundry(dag, runs, timeout))


async def _run_lmfoundry(
    dag: Dag, runs: list[list[dict[str, Any]]], timeout: float
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="lmf-parity-") as tmp:
        settings = Settings(home=Path(tmp) / "home", flow_sandbox="off")

        def fresh() -> FlowProcess:
            return FlowProcess(dag, {}, timeout, Path(tmp) / "flow.log", settings)

        process = fresh()
        try:
            await process.start()
        except LmfError as exc:
            refused = {"type": type(exc).__name__, "message": exc.message}
            return [{"load": refused, "lines": [], "aggregation": None} for _ in runs]
        answers = []
        try:
            for lines in runs:
                answer = await _run(dag, process, lines, fresh)
                process = answer.pop("process")
                answers.append(answer)
        finally:
            await process.close()
    return answers


async def _run(
    dag: Dag, process: FlowProcess, lines: list[dict[str, Any]], fresh: Callable[[], FlowProcess]
) -> dict[str, Any]:
    """One run's lines, then its aggregation; the answer carries the process it ended with."""
    answer: dict[str, Any] = {"load": None, "lines": [], "aggregation": None}
    gathered: dict[str, dict[str, list[Any]]] = {}
    for index, given in enumerate(lines):
        try:
            inputs = dag.resolve_inputs(given)
        except LmfError as exc:
            error = {"type": type(exc).__name__, "message": exc.message}
            answer["lines"].append({"status": "failed", "outputs": None, "error": error})
            continue
        if not process.alive:  # a line timed out: a new process, as a run's worker
            process = fresh()
            await process.start()
        line = await process.run_line(index, inputs)
        ok = line["status"] == "completed"
        # the folder the flow process runs its copy of the flow in (Prompt flow runs a
        # snapshot too): paths into it are compared as "{flow}"
        folder = str(process._workdir / "flow") if process._workdir else None
        answer["lines"].append(
            {
                "status": line["status"],
                "outputs": _in_flow(line.get("outputs"), folder) if ok else None,
                "error": None if ok else line.get("error"),
            }
        )
        if ok:
            for node, values in (line.get("aggregation_inputs") or {}).items():
                for key, value in values.items():
                    gathered.setdefault(node, {}).setdefault(key, []).append(value)
    completed = any(line["status"] == "completed" for line in answer["lines"])
    if dag.aggregation_nodes and completed:
        if not process.alive:
            process = fresh()
            await process.start()
        result = await process.aggregate(gathered)
        answer["aggregation"] = {
            "status": result.get("status"),
            "metrics": result.get("metrics") or {},
            "error": result.get("error"),
        }
    answer["process"] = process
    return answer


def _in_flow(value: Any, folder: str | None) -> Any:
    """`value` with the runner's own copy of the flow folder written "{flow}": where each
    runner keeps its copy is not part of what the flow answers (`__file__` in an output)."""
    if folder is None:
        return value
    if isinstance(value, str):
        return value.replace(folder, "{flow}")
    if isinstance(value, list):
        return [_in_flow(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _in_flow(v, folder) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal as values, NaN equal to NaN, ints equal to the floats they are."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float) and isinstance(b, int | float) and a == b
    )


def differences(pf: dict[str, Any], lmf: dict[str, Any]) -> list[tuple[str, str]]:
    """What disagrees, as (kind, detail): kinds `refused` (Prompt flow loads the flow, lmfoundry
    does not), `accepted` (the reverse), `status`, `outputs`, `metrics`."""
    if pf["load"] or lmf["load"]:
        if pf["load"] and lmf["load"]:
            return []
        if lmf["load"]:
            return [("refused", lmf["load"]["message"])]
        return [("accepted", f"Prompt flow refuses it: {pf['load']['message']}")]
    found = []
    for index, (a, b) in enumerate(zip(pf["lines"], lmf["lines"], strict=True)):
        if a["status"] != b["status"]:
            why = (b.get("error") or a.get("error") or {}).get("message", "")
            found.append(("status", f"line {index}: {a['status']} / {b['status']}: {why}"))
        elif a["status"] == "completed" and not _same(a["outputs"], b["outputs"]):
            found.append(("outputs", f"line {index}: {a['outputs']!r} != {b['outputs']!r}"))
    pa, la = pf["aggregation"], lmf["aggregation"]
    if (pa is None) != (la is None):
        found.append(("metrics", f"aggregation ran in one only: {pa!r} / {la!r}"))
    elif pa is not None and la is not None:
        if pa["status"] != la["status"]:
            why = (la.get("error") or pa.get("error") or {}).get("message", "")
            found.append(("status", f"aggregation {pa['status']} / {la['status']}: {why}"))
        elif not _same(pa["metrics"], la["metrics"]):
            found.append(("metrics", f"{pa['metrics']!r} != {la['metrics']!r}"))
    return found
