"""`lmfoundry projects quota`: a project's limits with their current use; admins change them."""

from __future__ import annotations

from typing import Annotated

import typer

from lmfoundry.cli._output import JsonOpt, ProjectOpt, client, print_json, records, table
from lmfoundry.errors import InvalidRequest

COLUMNS = ["name", "limit", "used", "unit", "default", "custom"]


def parse_setting(text: str) -> tuple[str, int | None]:
    """`NAME=VALUE` (a whole number; `1G`-style suffixes for bytes) or `NAME=default`."""
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip().lower()
    if not sep or not name or not raw:
        raise InvalidRequest(f"--set {text!r}: write NAME=VALUE, e.g. --set instances=4.")
    if raw == "default":
        return name, None
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    scale = 1
    if raw[-1] in units:
        raw, scale = raw[:-1], units[raw[-1]]
    try:
        return name, int(raw) * scale
    except ValueError:
        raise InvalidRequest(
            f"--set {text!r}: the value must be a whole number (or 10G for bytes, or "
            "'default' for the server's default)."
        ) from None


def projects_quota(
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="NAME=VALUE (admins): instances, instance_threads, finetune_jobs, "
            "flow_runs_per_minute, flow_calls_per_minute, storage_bytes (10G works); "
            "NAME=default goes back to the server's default. Repeat for several.",
        ),
    ] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """A project's quotas and current use; admins change them with --set NAME=VALUE."""
    changes = dict(parse_setting(s) for s in set_ or [])
    with client(project) as lmf:
        view = lmf.set_quotas(changes) if changes else lmf.quotas()
    if json_:
        print_json(view)
        return
    table(records(view.quotas), COLUMNS, title=f"Quotas of project {view.project}")
