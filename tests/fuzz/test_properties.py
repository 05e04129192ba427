"""Property tests (hypothesis) for the chat JSONL validator and the flow reference parser."""

from __future__ import annotations

import json
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from lmfoundry.datasets.validate import ROLES, Validator, check_row
from lmfoundry.flows.models import parse_reference

text = st.text(min_size=1).filter(lambda s: s.strip() != "")
message = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": text})
conversation = st.lists(message, min_size=1, max_size=6).map(
    lambda ms: [*ms, {"role": "assistant", "content": "ok"}]
)


@settings(max_examples=300, derandomize=True)
@given(conversation)
def test_every_well_formed_conversation_is_accepted_as_it_is(messages: list) -> None:
    raw = json.dumps({"messages": messages}, ensure_ascii=False).encode()
    parsed, problem = check_row(raw)
    assert problem is None
    assert parsed == messages


@settings(max_examples=500, derandomize=True)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_either_a_conversation_or_a_named_problem(raw: bytes) -> None:
    parsed, problem = check_row(raw)
    assert (parsed is None) != (problem is None)
    if problem is not None:
        assert problem.strip()


@settings(max_examples=200, derandomize=True)
@given(st.lists(st.one_of(st.binary(max_size=60), conversation), max_size=30))
def test_the_validator_counts_every_line_once(lines: list) -> None:
    validator = Validator()
    expected_rows = expected_errors = 0
    for number, line in enumerate(lines, 1):
        raw = (json.dumps({"messages": line}).encode() if isinstance(line, list) else line).replace(
            b"\n", b" "
        )
        if raw.strip():
            ok = check_row(raw)[1] is None
            expected_rows += ok
            expected_errors += not ok
        validator.feed(number, raw)
    assert (validator.rows, validator.error_count) == (expected_rows, expected_errors)
    assert all(1 <= e.line <= len(lines) for e in validator.errors)
    assert (validator.problem("f.jsonl") is None) == (expected_errors == 0 and expected_rows > 0)


name = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=12)


@settings(max_examples=300, derandomize=True)
@given(name, st.lists(name, min_size=1, max_size=4), st.sampled_from(["", " ", "  "]))
def test_references_parse_into_their_parts(root: str, path: list, pad: str) -> None:
    written = pad + "${" + ".".join([root, *path]) + "}" + pad
    reference = parse_reference(written)
    assert reference is not None
    assert (reference.root, list(reference.path)) == (root, path)
    assert reference.node == (None if root == "inputs" else root)


@settings(max_examples=500, derandomize=True)
@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.lists(st.text(max_size=5))))
def test_anything_else_is_a_literal_or_a_reference_never_an_error(value: object) -> None:
    reference = parse_reference(value)
    if reference is not None:
        assert isinstance(value, str) and value.strip().startswith("${")
        assert value.strip().endswith("}")
