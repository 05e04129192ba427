"""flow.dag.yaml validation: bad flows are rejected before any code runs, naming the node and
the field; inputs are converted to their declared types."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfoundry.errors import InvalidRequest
from lmfoundry.flows.dag import load_dag
from tests.conftest import Api
from tests.flows.helpers import DATA, FLOWS, write_flow

TOOL = """
from promptflow import tool

@tool
def run(text: str) -> str:
    return text
"""


def node(name: str, text: str = "${inputs.text}", path: str = "run.py") -> str:
    return f"""
    - name: {name}
      type: python
      source: {{type: code, path: {path}}}
      inputs:
        text: {text}
    """


def flow(nodes: str, output: str = "${a.output}") -> str:
    return f"""
    inputs:
      text: {{type: string}}
    outputs:
      out: {{type: string, reference: "{output}"}}
    nodes:{nodes}
    """


def problem(folder: Path) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        load_dag(folder)
    return caught.value


def test_the_example_flows_are_valid() -> None:
    for folder in sorted(p for p in DATA.iterdir() if p.is_dir()):
        dag = load_dag(folder)
        assert dag.interface()["nodes"], folder  # flex and prompty flows: their entry
    chat = load_dag(DATA / "score_chat")
    assert (chat.kind, chat.chat_input, chat.chat_history, chat.chat_output) == (
        "chat",
        "question",
        "chat_history",
        "answer",
    )
    assert chat.connection_names == ["connection"]
    numbers = load_dag(DATA / "numbers")
    assert [n.name for n in numbers.aggregation_nodes] == ["summary"]


def test_a_cycle_names_its_nodes(tmp_path: Path) -> None:
    folder = write_flow(
        tmp_path,
        flow(node("a", "${c.output}") + node("b", "${a.output}") + node("c", "${b.output}")),
        {"run.py": TOOL},
    )
    error = problem(folder)
    assert "'a' -> 'c' -> 'b' -> 'a' form a cycle" in error.message
    assert error.param == "nodes.a"


def test_a_reference_to_a_missing_node_or_input(tmp_path: Path) -> None:
    folder = write_flow(
        tmp_path,
        flow(node("a", "${inputs.txt}") + node("b", "${nope.output}"), output="${gone.output}"),
        {"run.py": TOOL},
    )
    error = problem(folder)
    messages = [p["message"] for p in error.detail["problems"]]
    assert (
        "node 'a' input 'text' refers to ${inputs.txt}, but the flow has no input 'txt'"
        in (messages[0])
    )
    assert any("node 'b' input 'text' refers to ${nope.output}" in m for m in messages)
    assert any("no node named 'nope'" in m for m in messages)
    assert any("output 'out' refers to ${gone.output}" in m for m in messages)
    assert error.param == "nodes.a.inputs.text"


def test_a_file_without_a_tool_function(tmp_path: Path) -> None:
    folder = write_flow(tmp_path, flow(node("a")), {"run.py": "def run(text):\n    return text\n"})
    error = problem(folder)
    assert "node 'a': run.py has no function decorated with @tool" in error.message
    assert error.param == "nodes.a.source.path"


@pytest.mark.parametrize(
    ("nodes", "files", "words", "param"),
    [
        (node("a", path="missing.py"), {}, "node 'a': source file 'missing.py' does not exist", ""),
        (
            "\n    - name: a\n      type: magic\n      inputs: {}\n",
            {},
            "node 'a' has type 'magic'",
            "nodes.a.type",
        ),
        (node("a"), {"run.py": "@tool\ndef run(:\n"}, "node 'a': run.py line 2 does not parse", ""),
        (
            node("a"),
            {"run.py": TOOL + "\n@tool\ndef other(text):\n    return text\n"},
            "more than one @tool function (run, other)",
            "",
        ),
        (
            node("a") + node("a"),
            {"run.py": TOOL},
            "two nodes are named 'a'",
            "nodes.a",
        ),
        (
            "\n    - name: a\n      type: python\n      source: {type: code, path: run.py}\n"
            "      inputs:\n        text: ${inputs.text}\n        colour: red\n",
            {"run.py": TOOL},
            "node 'a' input 'colour' is not a parameter of run(text)",
            "nodes.a.inputs.colour",
        ),
        (
            "\n    - name: a\n      type: prompt\n      source: {type: code, path: t.jinja2}\n"
            "      inputs: {}\n",
            {"t.jinja2": "{% for x in %}"},
            "node 'a': template t.jinja2 line 1 does not parse",
            "",
        ),
        (
            "\n    - name: a\n      type: llm\n      source: {type: code, path: t.jinja2}\n"
            "      inputs: {}\n",
            {"t.jinja2": "# user:\nhi"},
            "node 'a': an llm node names its connection",
            "nodes.a.connection",
        ),
    ],
)
def test_node_problems_name_the_node(
    tmp_path: Path, nodes: str, files: dict[str, str], words: str, param: str
) -> None:
    folder = write_flow(tmp_path, flow(nodes), files)
    error = problem(folder)
    assert any(words in p["message"] for p in error.detail["problems"]), error.detail
    if param:
        assert error.param == param


def test_the_tutorial_node_without_its_connection_input(tmp_path: Path) -> None:
    """Prompt flow's portal adds `connection: connection` when the connection is picked; a
    file without it is accepted, its connection parameter left to bind when the flow runs
    (tests/flows/test_bindings.py)."""
    dag = (DATA / "score_client" / "flow.dag.yaml").read_text()
    folder = write_flow(
        tmp_path,
        dag.replace("    connection: connection\n", ""),
        {"ask_endpoint.py": (DATA / "score_client" / "ask_endpoint.py").read_text()},
    )
    node = load_dag(folder).node("ask_endpoint")
    assert "connection" not in node.inputs and node.connection_inputs == {}


def test_chat_flags_and_aggregation_rules(tmp_path: Path) -> None:
    folder = write_flow(
        tmp_path,
        """
        inputs:
          text: {type: string, is_chat_input: true}
        outputs:
          out: {type: string, reference: "${agg.output}"}
        nodes:
        - name: a
          type: python
          source: {type: code, path: run.py}
          inputs: {text: "${agg.output}"}
        - name: agg
          type: python
          source: {type: code, path: run.py}
          inputs: {text: "${inputs.text}"}
          aggregation: true
        """,
        {"run.py": TOOL},
    )
    messages = " / ".join(p["message"] for p in problem(folder).detail["problems"])
    assert "is_chat_output" in messages
    assert "node 'a' input 'text' refers to aggregation node 'agg'" in messages
    # an output that refers to an aggregation node is left out of line outputs (a warning,
    # as Prompt flow does: tests/flows/parity/test_aggregation.py)
    assert "output 'out'" not in messages


def test_inputs_are_converted_to_their_types() -> None:
    dag = load_dag(DATA / "numbers")
    assert dag.resolve_inputs({"number": "7"}) == {"number": 7}
    assert dag.resolve_inputs({"number": 7.0}) == {"number": 7}
    with pytest.raises(InvalidRequest, match="declared int") as bad:
        dag.resolve_inputs({"number": "seven"})
    assert bad.value.param == "inputs.number"
    with pytest.raises(InvalidRequest, match="no value and no default"):
        dag.resolve_inputs({})
    with pytest.raises(InvalidRequest, match="no input 'numbr'"):
        dag.resolve_inputs({"number": 1, "numbr": 2})
    assert dag.resolve_inputs({"number": 1, "numbr": 2}, strict=False) == {"number": 1}
    chat = load_dag(DATA / "score_chat")
    assert chat.resolve_inputs({"question": "hi"}) == {"question": "hi", "chat_history": []}
    # any list, as in Prompt flow: the flow's code decides what it reads
    given = {"question": "hi", "chat_history": ["hi"]}
    assert chat.resolve_inputs(given) == given


def test_an_invalid_upload_is_rejected_naming_the_node(api: Api, tmp_path: Path) -> None:
    from lmfoundry.flows.archive import pack

    nodes = node("a", "${b.output}") + node("b", "${a.output}")
    folder = write_flow(tmp_path, flow(nodes), {"run.py": TOOL})
    response = api.post(FLOWS, data={"name": "loop"}, files={"file": ("f.tgz", pack(folder))})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "'a' -> 'b' -> 'a' form a cycle" in error["message"]
    assert error["param"] == "nodes.a"
    assert api.get(FLOWS).json() == []
    not_a_flow = api.post(FLOWS, data={"name": "x"}, files={"file": ("f.tgz", b"nonsense")})
    assert not_a_flow.status_code == 400
    assert "not a readable tar.gz or zip" in not_a_flow.json()["error"]["message"]
