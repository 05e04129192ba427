"""`activate` in every form Prompt flow reads, and its bypass rules: a bypassed input falls
back to the parameter's default or None; a node whose inputs are all bypassed is bypassed
unless its own condition holds; a condition on a bypassed node bypasses."""

from __future__ import annotations

from pathlib import Path

from tests.flows.helpers import write_flow
from tests.flows.parity.conftest import both, needs_promptflow, outputs

pytestmark = needs_promptflow

SAY = """
from promptflow.core import tool


@tool
def say(word: str) -> str:
    return word
"""


def node(name: str, when: str, value: str, word: str | None = None) -> str:
    return f"""
        - name: {name}
          type: python
          source: {{type: code, path: say.py}}
          inputs: {{word: {word or name}}}
          activate: {{when: {when}, is: {value}}}"""


def test_every_activate_form(tmp_path: Path) -> None:
    names = [
        "by_field", "by_node", "by_output", "by_input", "by_flow_prefix", "by_bool",
        "literal_met", "literal_not_met", "null_is_null", "on_bypassed",
    ]  # fmt: skip
    flow = write_flow(
        tmp_path / "f",
        """
        inputs:
          kind: {type: string}
        outputs:
        """
        + "".join(f'\n          {n}: {{type: string, reference: "${{{n}.output}}"}}' for n in names)
        + """
        nodes:
        - name: classify
          type: python
          source: {type: code, path: classify.py}
          inputs: {kind: "${inputs.kind}"}
        - name: plain
          type: python
          source: {type: code, path: say.py}
          inputs: {word: "${inputs.kind}"}"""
        + node("by_field", '"${classify.output.kind}"', "a")
        + node("by_node", '"${classify}"', "{kind: b, flag: false}")
        + node("by_output", '"${plain.output}"', "c")
        + node("by_input", '"${inputs.kind}"', "c")
        + node("by_flow_prefix", '"${flow.kind}"', "a")
        + node("by_bool", '"${classify.output.flag}"', "true")
        + node("literal_met", "yes", "yes")
        + node("literal_not_met", "1", "2")
        + node("null_is_null", "null", "null")
        + node("on_bypassed", '"${by_field.output}"', "by_field")
        + "\n",
        {
            "say.py": SAY,
            "classify.py": """
            from promptflow.core import tool


            @tool
            def classify(kind: str) -> dict:
                return {"kind": kind, "flag": kind == "a"}
            """,
        },
    )
    (lmf,) = both(flow, [{"kind": "a"}, {"kind": "b"}, {"kind": "c"}])
    ran = [{k for k, v in line.items() if v is not None} for line in outputs(lmf)]
    always = {"literal_met", "null_is_null"}
    assert ran == [
        always | {"by_field", "by_flow_prefix", "by_bool", "on_bypassed"},
        always | {"by_node"},
        always | {"by_output", "by_input"},
    ]


BYPASS_TOOLS = {
    "gate.py": SAY,
    "with_default.py": """
        from promptflow.core import tool


        @tool
        def with_default(x: str = "the default", y: str = "") -> str:
            return f"{x}|{y}"
        """,
    "no_default.py": """
        from promptflow.core import tool


        @tool
        def no_default(x, y):
            return f"{x!r}|{y}"
        """,
}


def test_bypassed_inputs_defaults_none_and_all_bypassed(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "f",
        """
        inputs:
          go: {type: bool}
          text: {type: string, default: t}
        outputs:
          gate: {type: string, reference: "${gate.output}"}
          with_default: {type: string, reference: "${with_default.output}"}
          no_default: {type: string, reference: "${no_default.output}"}
          all_bypassed: {type: string, reference: "${all_bypassed.output}"}
          chained: {type: string, reference: "${chained.output}"}
          active_anyway: {type: string, reference: "${active_anyway.output}"}
        nodes:
        - name: gate
          type: python
          source: {type: code, path: gate.py}
          inputs: {word: opened}
          activate: {when: "${inputs.go}", is: true}
        - name: text
          type: python
          source: {type: code, path: gate.py}
          inputs: {word: "${inputs.text}"}
        - name: with_default
          type: python
          source: {type: code, path: with_default.py}
          inputs: {x: "${gate.output}", y: "${text.output}"}
        - name: no_default
          type: python
          source: {type: code, path: no_default.py}
          inputs: {x: "${gate.output}", y: "${text.output}"}
        - name: all_bypassed
          type: python
          source: {type: code, path: no_default.py}
          inputs: {x: "${gate.output}", y: "${gate.output}"}
        - name: chained
          type: python
          source: {type: code, path: with_default.py}
          inputs: {x: "${all_bypassed.output}"}
        - name: active_anyway
          type: python
          source: {type: code, path: no_default.py}
          inputs: {x: "${gate.output}", y: "${gate}"}
          activate: {when: "${inputs.go}", is: false}
        """,
        BYPASS_TOOLS,
    )
    # `text` always runs, so with_default and no_default have one input bypassed, not all
    (lmf,) = both(flow, [{"go": True}, {"go": False, "text": "u"}])
    assert outputs(lmf) == [
        {
            "gate": "opened",
            "with_default": "opened|t",
            "no_default": "'opened'|t",
            "all_bypassed": "'opened'|opened",
            "chained": "'opened'|opened|",
            "active_anyway": None,
        },
        {
            "gate": None,
            "with_default": "the default|u",
            "no_default": "None|u",
            "all_bypassed": None,
            "chained": None,
            "active_anyway": "None|None",
        },
    ]
