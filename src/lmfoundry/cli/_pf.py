"""Prompt flow's command-line habits for `lmfoundry flow`: flags that take several values
(`--inputs a=1 b=2`, `--connections n.connection=c`, `--column-mapping q='${data.q}'`, as
`pf`'s argparse `nargs="+"` does), the flow given as `--flow DIR` or as the first argument,
and the lines that say which connection an open input was bound to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from typer.core import TyperCommand

from lmfoundry.cli._output import err_console
from lmfoundry.errors import InvalidRequest

# Flags whose NAME=VALUE values may follow one another after a single flag, as in pf.
GREEDY = ("--inputs", "-i", "--connections", "--column-mapping", "-m")


def spread(args: list[str]) -> list[str]:
    """`--inputs a=1 b=2` as `--inputs a=1 --inputs b=2` (Click takes one value per flag)."""
    out: list[str] = []
    active: str | None = None
    pending = False
    literal = False
    for token in args:
        if literal or pending:
            out.append(token)
            pending = False
            continue
        if token == "--":
            literal, active = True, None
            out.append(token)
            continue
        if active and "=" in token and not token.startswith("-"):
            out += [active, token]
            continue
        active = None
        flag = token.split("=", 1)[0] if token.startswith("--") else token
        if flag in GREEDY:
            active = flag
            pending = flag == token  # `--inputs=a=1` carries its first value
        out.append(token)
    return out


class PfCommand(TyperCommand):
    """A command that reads pf's multi-value flags."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # ctx: Typer's own (vendored) Click context
        return super().parse_args(ctx, spread(list(args)))


def flow_and_pairs(
    flow: str | None, flow_option: str | None, pairs: list[str] | None
) -> tuple[str, list[str]]:
    """The flow (the first argument, or pf's `--flow`) and the NAME=VALUE pairs after it."""
    rest = list(pairs or [])
    if flow_option is not None:
        if flow is not None:
            if "=" not in flow:
                raise InvalidRequest(
                    f"Give the flow once: as the first argument ({flow}) or with --flow "
                    f"({flow_option}).",
                    param="flow",
                )
            rest.insert(0, flow)
        return flow_option, rest
    if flow is None:
        raise InvalidRequest(
            "Give the flow: a folder with flow.dag.yaml (or an uploaded flow's name) as the "
            "first argument or with --flow.",
            param="flow",
        )
    return flow, rest


def say_bindings(defaulted: Mapping[str, str] | None, where: str = "the project") -> None:
    """Say which connection each open input was bound to by default (a result's, a deployed
    flow's or a new run's `defaulted_connections`), on stderr."""
    for key, name in (defaulted or {}).items():
        err_console.print(
            f"Bound {key} to connection {name!r}, {where}'s only connection of a fitting "
            f"type (choose another with --connections {key}=NAME).",
            highlight=False,
            markup=False,
        )
