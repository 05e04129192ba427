"""Aggregation as Prompt flow runs it: over the lines that completed, bypassed lines giving
None; metrics from log_metric (NaN and Infinity kept); outputs that refer to an aggregation
node left out of line outputs; activate on aggregation nodes."""

from __future__ import annotations

from pathlib import Path

from tests.flows.helpers import write_flow
from tests.flows.parity.conftest import both, needs_promptflow, outputs

pytestmark = needs_promptflow

FLOW = """
inputs:
  number: {type: int}
outputs:
  double: {type: int, reference: "${double.output}"}
  summary: {type: object, reference: "${summarise.output}"}
nodes:
- name: check
  type: python
  source: {type: code, path: check.py}
  inputs: {number: "${inputs.number}"}
- name: double
  type: python
  source: {type: code, path: double.py}
  inputs: {number: "${inputs.number}"}
  activate: {when: "${check.output}", is: true}
- name: summarise
  type: python
  source: {type: code, path: summarise.py}
  inputs: {doubled: "${double.output}", numbers: "${inputs.number}", label: sums}
  aggregation: true
- name: after
  type: python
  source: {type: code, path: after.py}
  inputs: {summary: "${summarise.output}"}
  aggregation: true
- name: never
  type: python
  source: {type: code, path: after.py}
  inputs: {summary: "${summarise.output}"}
  aggregation: true
  activate: {when: "${summarise.output.label}", is: other}
"""

TOOLS = {
    "check.py": """
        from promptflow.core import tool


        @tool
        def check(number: int) -> bool:
            if number == 13:
                raise ValueError("13 is unlucky")
            return number % 2 == 0
        """,
    "double.py": """
        from promptflow.core import tool


        @tool
        def double(number: int) -> int:
            return 2 * number
        """,
    "summarise.py": """
        from promptflow.core import log_metric, tool


        @tool
        def summarise(doubled: list, numbers: list, label: str) -> dict:
            log_metric("lines", len(numbers))
            log_metric("bypassed", sum(d is None for d in doubled))
            log_metric("total", sum(d for d in doubled if d is not None))
            log_metric("mean_ratio", float("nan") if not numbers else sum(numbers) / len(numbers))
            log_metric("ceiling", float("inf"))
            return {"label": label, "doubled": doubled}
        """,
    "after.py": """
        from promptflow.core import log_metric, tool


        @tool
        def after(summary: dict) -> None:
            log_metric("after_" + summary["label"], len(summary["doubled"]))
        """,
}


def test_aggregation_over_bypassed_and_failed_lines(tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "f", FLOW, TOOLS)
    single, batch = both(flow, [{"number": 4}], [{"number": n} for n in (2, 3, 13, 6)])
    # the output that refers to the aggregation node is not a line output
    assert outputs(single) == [{"double": 8}]
    assert single["aggregation"]["metrics"]["total"] == 8
    assert [line["status"] for line in batch["lines"]] == [
        "completed", "completed", "failed", "completed",
    ]  # fmt: skip
    assert outputs(batch)[1] == {"double": None}  # 3 is odd: double was bypassed
    metrics = batch["aggregation"]["metrics"]
    assert {k: metrics[k] for k in ("lines", "bypassed", "total", "after_sums")} == {
        "lines": 3,  # the failed line is left out
        "bypassed": 1,
        "total": 16,
        "after_sums": 3,
    }
    assert metrics["ceiling"] == float("inf")
    assert "after_other" not in metrics  # `never`'s condition does not hold
