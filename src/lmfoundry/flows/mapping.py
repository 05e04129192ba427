"""Column mapping for batch runs, as Prompt flow does it: `${data.COLUMN}`, and for an
evaluation run over an earlier run `${run.outputs.NAME}` and `${run.inputs.NAME}` (lines
matched by number); an input left unmapped reads the column of its own name, else its
default. Also the JSONL reader, with the line number of the first bad line."""

from __future__ import annotations

import json
from typing import Any

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows.models import Dag, parse_reference
from lmfoundry.storage.models import FlowRunLine


def parse_jsonl(data: bytes, source: str) -> list[dict[str, Any]]:
    """The rows of a JSONL file; 400 with the line number of the first bad line."""
    rows = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{source} is not UTF-8 text.", param="data") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(
                f"{source} line {number} is not valid JSON: {exc.msg}.", param="data"
            ) from exc
        if not isinstance(row, dict):
            raise InvalidRequest(
                f"{source} line {number} is not a JSON object; each line is one object of columns.",
                param="data",
            )
        rows.append(row)
    if not rows:
        raise InvalidRequest(f"{source} has no lines.", param="data")
    return rows


def _lookup(value: Any, path: list[str], where: str) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise KeyError(where)
        value = value[part]
    return value


class LineSource:
    """Builds each line's flow inputs from the data row, the earlier run and the mapping."""

    def __init__(
        self,
        dag: Dag,
        mapping: dict[str, str],
        rows: list[dict[str, Any]],
        parent: str | None = None,
        parent_lines: dict[int, FlowRunLine] | None = None,
    ) -> None:
        self.dag = dag
        self.mapping = mapping
        self.rows = rows
        self.parent = parent
        self.parent_lines = parent_lines or {}

    def inputs(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        given: dict[str, Any] = {}
        for name, spec in self.mapping.items():
            ref = parse_reference(spec)
            if ref is None:
                given[name] = spec
            elif ref.root == "data":
                try:
                    given[name] = _lookup(row, list(ref.path), spec)
                except KeyError:
                    raise InvalidRequest(
                        f"Line {index}: {spec} has no value; the line's columns are "
                        f"{', '.join(row) or 'none'}.",
                        param=f"column_mapping.{name}",
                    ) from None
            else:  # ${run.outputs.x} / ${run.inputs.x}
                given[name] = self._from_parent(index, name, spec, list(ref.path))
        for name in self.dag.inputs:
            if name not in self.mapping and name in row:
                given[name] = row[name]
        return self.dag.resolve_inputs(given, strict=False)

    def _from_parent(self, index: int, name: str, spec: str, path: list[str]) -> Any:
        line = self.parent_lines.get(index)
        if line is None or line.status != "completed":
            state = "has no line" if line is None else "failed on that line"
            raise InvalidRequest(
                f"Line {index}: run {self.parent} {state}, so {spec} has no value.",
                param=f"column_mapping.{name}",
            )
        source = line.outputs if path[0] == "outputs" else line.inputs
        try:
            return _lookup(source, path[1:], spec)
        except KeyError:
            raise InvalidRequest(
                f"Line {index}: {spec} has no value in run {self.parent}.",
                param=f"column_mapping.{name}",
            ) from None


def check_mapping(
    dag: Dag, mapping: dict[str, str], first: dict[str, Any], parent: Dag | None
) -> None:
    """Reject a mapping that cannot work, before anything runs (checked on the first line)."""
    for name, spec in mapping.items():
        if name not in dag.inputs:
            raise InvalidRequest(
                f"column_mapping names {name!r}, which is not an input of the flow (inputs: "
                f"{', '.join(dag.inputs) or 'none'}).",
                param=f"column_mapping.{name}",
            )
        if not isinstance(spec, str):
            raise InvalidRequest(
                f"column_mapping.{name} must be a string such as '${{data.{name}}}'.",
                param=f"column_mapping.{name}",
            )
        ref = parse_reference(spec)
        if ref is None:
            continue
        if ref.root == "data":
            if not ref.path:
                raise InvalidRequest(f"Write ${{data.COLUMN}}, not {spec}.", param=name)
            if ref.path[0] not in first:
                raise InvalidRequest(
                    f"column_mapping.{name} is {spec}, but the data's first line has no column "
                    f"{ref.path[0]!r} (columns: {', '.join(first) or 'none'}).",
                    param=f"column_mapping.{name}",
                )
        elif ref.root == "run":
            if parent is None:
                raise InvalidRequest(
                    f"column_mapping.{name} is {spec}, which reads an earlier run; give it "
                    "with --run RUN_ID.",
                    param=f"column_mapping.{name}",
                )
            names = parent.outputs if ref.path[:1] == ("outputs",) else parent.inputs
            if len(ref.path) < 2 or ref.path[0] not in ("outputs", "inputs"):
                raise InvalidRequest(
                    f"Write ${{run.outputs.NAME}} or ${{run.inputs.NAME}}, not {spec}.",
                    param=f"column_mapping.{name}",
                )
            if ref.path[1] not in names:
                raise InvalidRequest(
                    f"column_mapping.{name} is {spec}, but the earlier run's flow has no "
                    f"{ref.path[0][:-1]} {ref.path[1]!r} ({', '.join(names) or 'none'}).",
                    param=f"column_mapping.{name}",
                )
        else:
            raise InvalidRequest(
                f"column_mapping.{name} is {spec}; use ${{data.COLUMN}}, ${{run.outputs.NAME}} "
                "or ${run.inputs.NAME}.",
                param=f"column_mapping.{name}",
            )
    for flow_input in dag.inputs.values():
        name = flow_input.name
        if name in mapping or name in first or flow_input.has_default:
            continue
        if not flow_input.is_chat_history:
            raise InvalidRequest(
                f"Input {name!r} has no value: the data has no column {name!r} and the input "
                f"has no default; map it with --column-mapping {name}='${{data.COLUMN}}'.",
                param=f"column_mapping.{name}",
            )
