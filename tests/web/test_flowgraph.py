"""The flow.dag.yaml check behind the flow editor and graph."""

from __future__ import annotations

from lmfoundry.web.flowgraph import parse_flow

CHAT_FLOW = """\
inputs:
  question:
    type: string
    is_chat_input: true
  chat_history:
    type: list
    is_chat_history: true
outputs:
  answer:
    type: string
    reference: ${answer.output}
    is_chat_output: true
nodes:
- name: retrieve
  type: python
  source: {type: code, path: retrieve.py}
  inputs:
    query: ${inputs.question}
- name: prompt
  type: prompt
  inputs:
    context: ${retrieve.output.documents}
    history: ${inputs.chat_history}
- name: answer
  type: llm
  inputs:
    prompt: ${prompt.output}
    connection: my-conn
  activate:
    when: ${retrieve.output.found}
    is: true
"""


def test_nodes_edges_and_layers_come_from_references() -> None:
    graph = parse_flow(CHAT_FLOW)
    assert graph.errors == []
    assert graph.is_chat
    assert [(n["id"], n["type"], n["layer"]) for n in graph.nodes] == [
        ("retrieve", "python", 1),
        ("prompt", "prompt", 2),
        ("answer", "llm", 3),
    ]
    edges = {(e["from"], e["to"]) for e in graph.edges}
    assert edges == {
        ("inputs", "retrieve"),
        ("inputs", "prompt"),
        ("retrieve", "prompt"),
        ("prompt", "answer"),
        ("retrieve", "answer"),  # through `activate`
        ("answer", "outputs"),
    }


def test_problems_name_their_line() -> None:
    broken = CHAT_FLOW.replace("${prompt.output}", "${promt.output}").replace(
        "${inputs.question}", "${inputs.query}"
    )
    graph = parse_flow(broken)
    messages = {(e["line"], e["message"]) for e in graph.errors}
    assert (14, "retrieve uses ${inputs.query}, which is not an input.") in messages
    assert (24, "answer uses ${promt.output}; there is no node 'promt'.") in messages


def test_duplicates_cycles_and_syntax() -> None:
    twice = parse_flow("nodes:\n- name: a\n  type: python\n- name: a\n  type: python\n")
    assert twice.errors == [{"line": 4, "message": "node name 'a' is used twice (also on line 2)."}]
    cycle = parse_flow(
        "nodes:\n- name: a\n  type: python\n  inputs: {x: '${b.output}'}\n"
        "- name: b\n  type: python\n  inputs: {x: '${a.output}'}\n"
    )
    assert any("cycle" in e["message"] for e in cycle.errors)
    syntax = parse_flow("inputs:\n  q: [1, 2\nnodes: []\n")
    assert syntax.errors[0]["line"] == 3 and syntax.errors[0]["message"].startswith("YAML syntax")
    assert parse_flow("- just a list\n").errors[0]["message"].startswith("flow.dag.yaml must be")
    assert parse_flow("inputs: {}\nnodes: []\n").errors == [
        {"line": None, "message": "nodes must be a non-empty list."}
    ]
