"""`lmfoundry status`: what runs now (like `ollama ps`) and how each deployment did in the
last hour, from the same API as the studio's cluster and monitoring pages."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from lmfoundry.cli._output import JsonOpt, ProjectOpt, client, console, print_json, records
from lmfoundry.errors import Forbidden
from lmfoundry.observability.models import InstanceView, TargetSummary
from lmfoundry.observability.monitoring import duration, mib


def status(
    window: Annotated[str, typer.Option(help="hour or day.")] = "hour",
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Instances (admins: model, state, memory, slots, uptime) and each deployment's
    requests, errors, 429s and p50 latency over the last hour."""
    with client(project) as lmf:
        try:
            instances: list[InstanceView] | None = lmf.cluster()
        except Forbidden:
            instances = None  # instances serve every project: an admin's to see
        targets = lmf.monitoring(window)
        name = lmf.project
    if json_:
        print_json({"instances": records(instances), "targets": records(targets)})
        return
    if instances is None:
        console.print("Instances: only an admin sees them (they serve every project).")
    else:
        console.print(_instances(instances))
    console.print(_targets(targets, name, window))


def _instances(rows: list[InstanceView]) -> Table | str:
    if not rows:
        return "No instance is running (a serverless deployment starts one on its first request)."
    out = Table(title="Instances")
    for column in ("instance", "model", "state", "pid", "memory", "slots busy/total", "uptime"):
        out.add_column(column)
    for i in rows:
        slots = "-" if i.slots is None else str(i.slots)
        out.add_row(
            i.id,
            i.model,
            i.state,
            "-" if i.pid is None else str(i.pid),
            mib(i.rss_bytes),
            f"{i.busy}/{slots}",
            duration(i.uptime_seconds),
        )
    return out


def _targets(rows: list[TargetSummary], project: str, window: str) -> Table | str:
    if not rows:
        return f"No requests to the deployments of {project} in the last {window}."
    out = Table(title=f"{project}, last {window}")
    for column in ("kind", "deployment", "requests", "errors", "429", "tokens", "p50 ms"):
        out.add_column(column, justify="left" if column in ("kind", "deployment") else "right")
    for row in rows:
        t = row.totals
        p50 = t.latency_p50_ms
        out.add_row(
            row.target_kind,
            row.target,
            str(t.requests),
            str(t.errors),
            str(t.rate_limited),
            str(t.prompt_tokens + t.completion_tokens),
            "-" if p50 is None else f"{p50:.0f}",
        )
    return out
