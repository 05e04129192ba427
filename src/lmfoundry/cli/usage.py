"""`lmfoundry usage` and `lmfoundry audit`."""

from __future__ import annotations

import csv
import sys
from typing import Annotated, Any

import typer

from lmfoundry.cli._output import JsonOpt, ProjectOpt, client, show
from lmfoundry.metering.models import GROUPS, NUMBERS


def usage(
    group_by: Annotated[
        str,
        typer.Option(
            help="target (what requests were sent to), deployment (what answered them), key, "
            "day or model"
        ),
    ] = "target",
    start: Annotated[str | None, typer.Option(help="From (ISO 8601, inclusive).")] = None,
    end: Annotated[str | None, typer.Option(help="To (ISO 8601, exclusive).")] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
    csv_: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
) -> None:
    """Tokens, requests and cost of a project's inference traffic."""
    with client(project) as lmf:
        report = lmf.usage(group_by, start, end)
    columns = GROUPS.get(group_by, []) + NUMBERS
    # as the API answers: only the grouping's columns, not the others' nulls
    rows: list[dict[str, Any]] = [r.model_dump(exclude_none=True) for r in report]
    if csv_:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return
    if not json_ and rows:
        rows = [*rows, {columns[0]: "total", **{n: sum(r[n] for r in rows) for n in NUMBERS}}]
    show(rows, json_, columns, title=None if json_ else f"Usage by {group_by}")


def audit(
    limit: Annotated[int, typer.Option(help="How many events, newest first.")] = 50,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Who changed keys, members, deployments and quotas, and when."""
    with client(project) as lmf:
        show(lmf.audit(limit=limit), json_, ["at", "actor", "action", "target", "detail"])
