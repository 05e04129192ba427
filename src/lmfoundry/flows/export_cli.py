"""The command line of a flow exported to Microsoft Agent Framework (`lmfoundry flow export`).

Copied, unchanged, beside the program as `flow_cli.py`; lmfoundry itself never imports it.
`python main.py NAME=VALUE ...` runs one line (and the aggregation nodes over it, as
`lmfoundry flow test` does) and prints its outputs as `lmfoundry flow test` prints them;
`python main.py --data lines.jsonl` runs every line, then the aggregation nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
from pathlib import Path
from typing import Any

from flow_runtime import Flow, Input, reference, run_batch


def convert(spec: Input, value: Any) -> Any:
    """`value` as the input's declared type (as `lmfoundry flow test` converts it)."""

    def bad(why: str = "") -> SystemExit:
        return SystemExit(f"Input {spec.name!r} is declared {spec.type} but got {value!r}{why}.")

    kind = "list" if spec.is_chat_history else spec.type
    if kind == "string":
        return json.dumps(value) if isinstance(value, dict | list) else str(value)
    if kind == "int":
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value.strip()) if isinstance(value, str) else _exact(value, int)
        except ValueError:
            raise bad() from None
    if kind == "double":
        if isinstance(value, bool):
            raise bad()
        try:
            return float(value.strip()) if isinstance(value, str) else float(_number(value))
        except ValueError:
            raise bad() from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise bad(" (use true or false)")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise bad(" (give it as JSON)") from None
    if not isinstance(value, list if kind == "list" else dict):
        raise bad()
    return value


def _exact(value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise ValueError(value)
    return value


def _number(value: Any) -> Any:
    if not isinstance(value, int | float):
        raise ValueError(value)
    return value


def resolve(flow: Flow, given: dict[str, Any], strict: bool) -> dict[str, Any]:
    unknown = sorted(set(given) - set(flow.inputs))
    if unknown and strict:
        raise SystemExit(
            f"The flow has no input {unknown[0]!r}; its inputs are {', '.join(flow.inputs)}."
        )
    values = {}
    for spec in flow.inputs.values():
        if spec.name in given:
            values[spec.name] = convert(spec, given[spec.name])
        elif spec.has_default:
            values[spec.name] = copy.deepcopy(spec.default)
        elif spec.is_chat_history:
            values[spec.name] = []
        else:
            raise SystemExit(
                f"Input {spec.name!r} has no value and no default; give {spec.name}=..."
            )
    return values


def _rows(flow: Flow, data: Path, mapping: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for number, text in enumerate(data.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError as exc:
            raise SystemExit(f"{data} line {number} is not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise SystemExit(f"{data} line {number} is not a JSON object.")
        given: dict[str, Any] = {}
        for name, spec in mapping.items():
            ref = reference(spec)
            if ref is None:
                given[name] = spec
            elif ref[0] == "data":
                value: Any = row
                for part in ref[1]:
                    if not isinstance(value, dict) or part not in value:
                        raise SystemExit(f"{data} line {number}: {spec} has no value.")
                    value = value[part]
                given[name] = value
            else:
                raise SystemExit(
                    f"--column-mapping {name}={spec}: use ${{data.COLUMN}} ({data}:{number})"
                )
        given.update({k: row[k] for k in flow.inputs if k not in mapping and k in row})
        rows.append(resolve(flow, given, strict=False))
    if not rows:
        raise SystemExit(f"{data} has no lines; give one JSON object per line.")
    return rows


def _pairs(values: list[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"Give inputs as NAME=VALUE, not {value!r}.")
        pairs[key] = item
    return pairs


def main(flow: Flow, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Run flow {flow.name} on Agent Framework.")
    parser.add_argument("pairs", nargs="*", help="inputs as NAME=VALUE")
    parser.add_argument(
        "--inputs", "-i", action="append", default=[], help="an input as NAME=VALUE"
    )
    parser.add_argument("--inputs-json", help="the inputs as a JSON object (or @FILE)")
    parser.add_argument(
        "--data", "-d", type=Path, help="a JSONL file: run every line, then aggregate"
    )
    parser.add_argument(
        "--column-mapping", "-m", action="append", default=[], help="INPUT=${data.COLUMN}"
    )
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.add_argument(
        "--workers", type=int, default=4, help="lines of --data run at once (default 4)"
    )
    args = parser.parse_args(argv)
    if args.data is not None:
        rows = _rows(flow, args.data, _pairs(args.column_mapping))
        batch = asyncio.run(run_batch(flow, rows, workers=args.workers))
        lines = [
            {
                "line_number": r.index,
                "status": r.status,
                "outputs": r.outputs,
                "error": r.error,
            }
            for r in batch.lines
        ]
        failed = batch.error is not None or any(r.status != "completed" for r in batch.lines)
        print(
            json.dumps(
                {
                    "status": "failed" if batch.error else "completed",
                    "lines": lines,
                    "metrics": batch.metrics,
                    "error": batch.error["message"] if batch.error else None,
                },
                indent=2,
            )
        )
        return 1 if failed else 0
    given: dict[str, Any] = {}
    if args.inputs_json:
        text = args.inputs_json
        given.update(json.loads(Path(text[1:]).read_text() if text.startswith("@") else text))
    given.update(_pairs([*args.inputs, *args.pairs]))
    batch = asyncio.run(run_batch(flow, [resolve(flow, given, strict=True)], single=True))
    (line,) = batch.lines
    error = line.error or batch.error
    status = "completed" if error is None else "failed"
    if args.json:
        result = {
            "status": status,
            "outputs": line.outputs,
            "error": error,
            "metrics": batch.metrics,
        }
        print(json.dumps(result, indent=2))
    elif status == "completed":
        outputs = line.outputs
        if len(outputs) == 1:
            value = next(iter(outputs.values()))
            print(value if isinstance(value, str) else json.dumps(value, indent=2))
        else:
            print(json.dumps(outputs, indent=2))
        if batch.metrics:
            print(f"metrics: {json.dumps(batch.metrics)}")
    if error is not None and not args.json:
        print(f"Failed: {error['message']}", file=sys.stderr)
        if error.get("traceback"):
            print(error["traceback"].rstrip(), file=sys.stderr)
    return 0 if status == "completed" else 1
