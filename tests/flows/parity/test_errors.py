"""Errors: a failing line fails in both, and lmfoundry names the node and the user's own
file and line, never its own source paths; flows Prompt flow refuses are refused."""

from __future__ import annotations

from pathlib import Path

from tests.flows.helpers import write_flow
from tests.flows.parity.conftest import both, needs_promptflow

pytestmark = needs_promptflow

FLOW = """
inputs:
  number: {type: int}
outputs:
  out: {type: int, reference: "${check.output}"}
nodes:
- name: check
  type: python
  source: {type: code, path: check.py}
  inputs: {number: "${inputs.number}"}
"""

CHECK = """
from promptflow.core import tool

from rules import validate


@tool
def check(number: int) -> int:
    return validate(number)
"""

RULES = """
def validate(number):
    if number < 0:
        raise ValueError(f"{number} is negative")
    return number
"""


def test_a_failing_line_names_the_node_and_the_users_file_and_line(tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "f", FLOW, {"check.py": CHECK, "rules.py": RULES})
    (lmf,) = both(flow, [{"number": 1}, {"number": -2}])
    error = lmf["lines"][1]["error"]
    assert error["node"] == "check"
    assert "-2 is negative" in error["message"]
    assert 'File "rules.py", line 4, in validate' in error["traceback"]
    assert 'File "check.py", line 9, in check' in error["traceback"]
    assert "lmfoundry" not in error["traceback"] + error["message"]


def test_a_missing_import_fails_to_load_in_both_naming_no_lmfoundry_path(tmp_path: Path) -> None:
    code = CHECK.replace("from rules import validate", "from promptflow.core import NoSuchThing")
    flow = write_flow(tmp_path / "f", FLOW, {"check.py": code})
    (lmf,) = both(flow, [{"number": 1}])
    assert "NoSuchThing" in lmf["load"]["message"]
    assert "/lmfoundry/" not in lmf["load"]["message"]


def test_flows_prompt_flow_refuses_are_refused(tmp_path: Path) -> None:
    cycle = FLOW.replace('"${inputs.number}"', '"${check.output}"')
    unknown_node = FLOW.replace("${check.output}", "${missing.output}")
    bad_activate = FLOW + '  activate: {when: "${inputs.number}"}\n'
    for name, text in (("cycle", cycle), ("unknown", unknown_node), ("activate", bad_activate)):
        flow = write_flow(tmp_path / name, text, {"check.py": CHECK, "rules.py": RULES})
        (lmf,) = both(flow, [{"number": 1}])
        assert lmf["load"] is not None, name
