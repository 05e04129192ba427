"""Differential tests: each flow here runs in real Prompt flow 1.18.5 and in lmfoundry, and
the two must agree (harness.py says how). They skip, saying why, when .venv-promptflow is
absent; scripts/test makes it (scripts/promptflow-venv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.flows.parity.harness import (
    MISSING,
    differences,
    have_promptflow,
    run_lmfoundry_many,
    run_promptflow_many,
)

Answer = dict[str, Any]


# every test module here: pytestmark = needs_promptflow
needs_promptflow = pytest.mark.skipif(not have_promptflow(), reason=MISSING)


def both(flow: Path, *runs: list[dict[str, Any]]) -> list[Answer]:
    """Run `flow` in both, once per run (a list of lines), assert they agree, and return
    lmfoundry's answers for the test's own checks."""
    pf = run_promptflow_many(flow, list(runs))
    lmf = run_lmfoundry_many(flow, list(runs))
    for index, (a, b) in enumerate(zip(pf, lmf, strict=True)):
        found = differences(a, b)
        assert not found, f"run {index}: {found}\nPrompt flow: {a}\nlmfoundry: {b}"
    return lmf


def outputs(answer: Answer) -> list[Any]:
    return [line["outputs"] for line in answer["lines"]]
