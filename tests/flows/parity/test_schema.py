"""The top-level fields Prompt flow accepts: name, environment, node_variants with
use_variants, environment_variables that are not strings; names with underscores."""

from __future__ import annotations

from pathlib import Path

from tests.flows.helpers import write_flow
from tests.flows.parity.conftest import both, needs_promptflow, outputs

pytestmark = needs_promptflow

ECHO = """
from promptflow.core import tool


@tool
def echo(text: str) -> str:
    return text
"""


def test_name_environment_and_other_top_level_fields(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "f",
        """
        $schema: https://azuremlschemas.azureedge.net/promptflow/latest/Flow.schema.json
        name: my_flow_name
        display_name: My flow
        description: a flow with every top-level field
        tags: {team: parity}
        environment:
          python_requirements_txt: requirements.txt
        inputs:
          text: {type: string, default: hi}
        outputs:
          out: {type: string, reference: "${echo.output}"}
        nodes:
        - name: echo
          type: python
          source: {type: code, path: echo.py}
          inputs: {text: "${inputs.text}"}
        """,
        {"echo.py": ECHO, "requirements.txt": ""},
    )
    (lmf,) = both(flow, [{"text": "a"}, {}])
    assert outputs(lmf) == [{"out": "a"}, {"out": "hi"}]


def test_node_variants_run_the_default_variant(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "f",
        """
        inputs:
          text: {type: string}
        outputs:
          out: {type: string, reference: "${shout.output}"}
        nodes:
        - name: shout
          use_variants: true
        node_variants:
          shout:
            default_variant_id: variant_1
            variants:
              variant_0:
                node:
                  type: python
                  source: {type: code, path: lower.py}
                  inputs: {text: "${inputs.text}"}
              variant_1:
                node:
                  type: python
                  source: {type: code, path: upper.py}
                  inputs: {text: "${inputs.text}", suffix: "!"}
        """,
        {
            "lower.py": ECHO.replace("return text", "return text.lower()"),
            "upper.py": ECHO.replace("text: str)", "text: str, suffix: str)").replace(
                "return text", "return text.upper() + suffix"
            ),
        },
    )
    (lmf,) = both(flow, [{"text": "Mixed"}])
    assert outputs(lmf) == [{"out": "MIXED!"}]


def test_environment_variables_that_are_not_strings(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "f",
        """
        environment_variables:
          AN_INT: 3
          A_FLOAT: 0.5
          A_BOOL: true
          A_LIST: [1, "two"]
          A_DICT: {k: v}
          A_STRING: plain
        inputs: {}
        outputs:
          env: {type: object, reference: "${read.output}"}
        nodes:
        - name: read
          type: python
          source: {type: code, path: read.py}
          inputs: {}
        """,
        {
            "read.py": """
            import os

            from promptflow.core import tool


            @tool
            def read() -> dict:
                names = ["AN_INT", "A_FLOAT", "A_BOOL", "A_LIST", "A_DICT", "A_STRING"]
                return {n: os.environ.get(n) for n in names}
            """
        },
    )
    (lmf,) = both(flow, [{}])
    assert outputs(lmf)[0]["env"] == {
        "AN_INT": "3",
        "A_FLOAT": "0.5",
        "A_BOOL": "True",
        "A_LIST": '[1, "two"]',
        "A_DICT": '{"k": "v"}',
        "A_STRING": "plain",
    }


def test_names_with_underscores(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "f",
        """
        inputs:
          _first_input: {type: string}
          second__input: {type: int, default: 2}
        outputs:
          _out_put: {type: string, reference: "${_my__node.output}"}
          count_: {type: int, reference: "${inputs.second__input}"}
        nodes:
        - name: _my__node
          type: python
          source: {type: code, path: echo_node_.py}
          inputs: {text: "${inputs._first_input}"}
        """,
        {"echo_node_.py": ECHO},
    )
    (lmf,) = both(flow, [{"_first_input": "x"}, {"_first_input": "y", "second__input": 5}])
    assert outputs(lmf) == [{"_out_put": "x", "count_": 2}, {"_out_put": "y", "count_": 5}]
