"""Prompt flow's flags on `lmfoundry flow test|run|deploy`: several NAME=VALUE values after one
flag (`--inputs a=1 b=2`, as pf's argparse reads them), the flow given as `--flow`, and the
errors for a flow given twice or not at all. Runs of these flags against a server:
tests/flows/test_bindings.py and tests/flows/test_tutorial_pasted.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lmfoundry.cli._pf import flow_and_pairs, spread
from lmfoundry.cli.main import app
from lmfoundry.errors import InvalidRequest


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--inputs", "a=1", "b=2", "DIR"],
            ["--inputs", "a=1", "--inputs", "b=2", "DIR"],
        ),
        (
            ["--flow", "f", "--connections", "n.connection=c", "m.conn=d", "--stream"],
            [
                "--flow",
                "f",
                "--connections",
                "n.connection=c",
                "--connections",
                "m.conn=d",
                "--stream",
            ],
        ),
        (
            ["--column-mapping=q=${data.q}", "x=${data.x}"],
            ["--column-mapping=q=${data.q}", "--column-mapping", "x=${data.x}"],
        ),
        (["-i", "a=1", "b=2"], ["-i", "a=1", "-i", "b=2"]),
        # an input whose value starts with a dash, a lone pair after another flag, `--`
        (["--inputs", "a=-1", "b=2"], ["--inputs", "a=-1", "--inputs", "b=2"]),
        (["DIR", "--json", "a=1"], ["DIR", "--json", "a=1"]),
        (["--inputs", "a=1", "--", "b=2"], ["--inputs", "a=1", "--", "b=2"]),
    ],
)
def test_spread_repeats_the_flag_for_each_value(args: list[str], expected: list[str]) -> None:
    assert spread(args) == expected


def test_the_flow_comes_from_the_argument_or_from_flow() -> None:
    assert flow_and_pairs("DIR", None, ["a=1"]) == ("DIR", ["a=1"])
    # with --flow, what click took as the flow argument is the first pair
    assert flow_and_pairs("a=1", "DIR", ["b=2"]) == ("DIR", ["a=1", "b=2"])
    with pytest.raises(InvalidRequest, match="Give the flow once"):
        flow_and_pairs("OTHER", "DIR", [])
    with pytest.raises(InvalidRequest, match="Give the flow"):
        flow_and_pairs(None, None, [])


@pytest.mark.parametrize("verb", ["test", "run", "deploy"])
def test_help_lists_prompt_flows_flags(verb: str) -> None:
    result = CliRunner().invoke(app, ["flow", verb, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    wanted = {
        "test": ["--flow", "--inputs", "--connections", "--local", "--connection-file", "--stream"],
        "run": ["--flow", "--data", "--column-mapping", "--connections", "--name", "--stream"],
        "deploy": ["--flow", "--name", "--connections"],
    }[verb]
    for flag in wanted:
        assert flag in result.output, (flag, result.output)


def test_a_bad_connections_value_names_the_form() -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["flow", "test", "/nonexistent", "--connections", "no-dot=x"], env={"COLUMNS": "200"}
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, InvalidRequest)
    assert "NODE.INPUT=CONNECTION" in result.exception.message
