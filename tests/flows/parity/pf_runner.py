"""Runs a flow with real Prompt flow 1.18.5 (in .venv-promptflow, never in lmfoundry's venv).

    .venv-promptflow/bin/python tests/flows/parity/pf_runner.py < request.json

The request is {"flow": DIR, "runs": [[{input: value}, ...], ...], "line_timeout": SECONDS}:
one or more runs, each a list of lines, all with one executor; or {"flows": [{"flow",
"runs"}, ...], "line_timeout"} for several flows in one process (a list of answers). The
answer (stdout, one JSON list, one entry a run, NaN and Infinity as Python's json writes
them) has for each run

    {"load": null or {"type", "message"},
     "lines": [{"status", "outputs", "error"}, ...],
     "aggregation": null or {"status", "metrics", "error"}}

as Prompt flow's executor runs it: each line with `exec_line` (inputs validated, defaults
applied, generators joined), then the aggregation nodes once over the lines that completed,
as `pf run` does (and `pf flow test` over its one line). The flow's environment_variables are
set first, as `pf flow test` sets them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _error(exc: BaseException | dict[str, Any] | None) -> dict[str, Any] | None:
    if exc is None:
        return None
    if isinstance(exc, dict):
        inner = exc
        while inner.get("innerError"):
            inner = inner["innerError"]
        return {"type": str(exc.get("code", "")), "message": str(exc.get("message", ""))}
    return {"type": type(exc).__name__, "message": str(exc)}


def _outputs(outputs: Any, processor: Any) -> dict[str, Any]:
    """A line's outputs without the `line_number` Prompt flow adds to batch lines."""
    # images as Prompt flow's own serving endpoint writes them: {"data:image/png;base64": ...}
    outputs = processor.convert_multimedia_data_to_base64_dict(dict(outputs or {}))
    return {k: v for k, v in outputs.items() if k != "line_number"}


def main() -> None:
    request = json.loads(sys.stdin.read())
    flows = request.get("flows", [request])
    answers = [_flow(f["flow"], f["runs"], request.get("line_timeout")) for f in flows]
    print(json.dumps(answers if "flows" in request else answers[0], default=repr))


def _flow(folder: str, runs: list[list[dict[str, Any]]], timeout: int | None) -> list[Any]:
    """One flow's runs, leaving the process as it found it (environment, path, the flow's
    own modules), so that many flows can share one Prompt flow process."""
    from promptflow._sdk._utilities.general_utils import (
        _merge_local_code_and_additional_includes as snapshot_of,
    )

    environ, path, cwd = dict(os.environ), list(sys.path), os.getcwd()
    try:
        with snapshot_of(Path(folder).resolve()) as snapshot:
            try:
                return _runs(Path(snapshot), runs, timeout)
            finally:
                for name, module in list(sys.modules.items()):
                    if str(getattr(module, "__file__", None) or "").startswith(str(snapshot)):
                        del sys.modules[name]
    except Exception as exc:  # noqa: BLE001 - an include that is missing, say
        return [{"load": _error(exc), "lines": [], "aggregation": None} for _ in runs]
    finally:
        os.environ.clear()
        os.environ.update(environ)
        sys.path[:] = path
        os.chdir(cwd)


def _runs(
    flow_dir: Path, runs: list[list[dict[str, Any]]], timeout: int | None
) -> list[dict[str, Any]]:
    """The flow's snapshot (its additional includes added, as `pf flow test` makes it), run."""
    flow_file = next(
        flow_dir / n for n in ("flow.dag.yaml", "flow.dag.yml") if (flow_dir / n).is_file()
    )
    os.chdir(flow_dir)
    try:
        from promptflow.contracts.flow import Flow
        from promptflow.executor import FlowExecutor

        flow = Flow.from_yaml(flow_file, working_dir=flow_dir)
        os.environ.update(flow.get_environment_variables_with_overrides())
        executor = FlowExecutor.create(flow_file, {}, working_dir=flow_dir, raise_ex=False)
    except Exception as exc:  # noqa: BLE001 - whatever Prompt flow refuses, reported
        return [{"load": _error(exc), "lines": [], "aggregation": None} for _ in runs]
    # where the snapshot was: the harness compares paths into it as "{flow}"
    return [{**_run(executor, lines, timeout), "folder": str(flow_dir)} for lines in runs]


def _run(executor: Any, lines: list[dict[str, Any]], timeout: int | None) -> dict[str, Any]:
    from promptflow._utils.execution_utils import apply_default_value_for_input as with_defaults

    answer: dict[str, Any] = {"load": None, "lines": [], "aggregation": None}
    completed: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for index, inputs in enumerate(lines):
        try:
            result = executor.exec_line(inputs, index=index, line_timeout_sec=timeout)
        except Exception as exc:  # noqa: BLE001 - a refused input, say
            answer["lines"].append({"status": "failed", "outputs": None, "error": _error(exc)})
            continue
        status = result.run_info.status.value.lower()
        ok = status == "completed"
        answer["lines"].append(
            {
                "status": "completed" if ok else "failed",
                "outputs": _outputs(result.output, executor._multimedia_processor) if ok else None,
                "error": None if ok else _error(result.run_info.error),
            }
        )
        if ok:
            # the line's inputs as Prompt flow's batch engine hands them to the aggregation:
            # as given, defaults applied, images not loaded (run_info.inputs holds loaded ones)
            completed.append(
                (with_defaults(executor._flow.inputs, inputs), result.aggregation_inputs or {})
            )
    if executor.has_aggregation_node and completed:
        names = {k for inputs, _ in completed for k in inputs}
        flow_inputs = {k: [inputs.get(k) for inputs, _ in completed] for k in names}
        keys = {k for _, agg in completed for k in agg}
        lists = {k: [agg.get(k) for _, agg in completed] for k in keys}
        try:
            aggregated = executor.exec_aggregation(flow_inputs, lists)
            failed = [
                r for r in aggregated.node_run_infos.values() if r.status.value.lower() == "failed"
            ]
            answer["aggregation"] = {
                "status": "failed" if failed else "completed",
                "metrics": dict(aggregated.metrics or {}),
                "error": _error(failed[0].error) if failed else None,
            }
        except Exception as exc:  # noqa: BLE001
            answer["aggregation"] = {"status": "failed", "metrics": {}, "error": _error(exc)}
    return answer


if __name__ == "__main__":
    main()
