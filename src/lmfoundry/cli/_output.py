"""Shared CLI options and rendering: Rich tables for people, `--json` for scripts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from lmfoundry.client import Client

console = Console()
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ProjectOpt = Annotated[
    str | None, typer.Option("--project", "-p", help="Project name (default: default).")
]


def client(project: str | None = None) -> Client:
    return Client(project=project)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def records(data: Any) -> Any:
    """The SDK's typed views (pydantic models, dataclasses) as plain records, lists kept;
    a pydantic view as the API's JSON has it (times in ISO 8601, enums as their values)."""
    if isinstance(data, list):
        return [records(item) for item in data]
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.asdict(data)
    return data


def print_json(data: Any) -> None:
    typer.echo(json.dumps(records(data), indent=2, default=_plain))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    out = Table(title=title, show_lines=False)
    for column in columns:
        out.add_column(column.replace("_", " "))
    for row in rows:
        out.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(out)


def show(
    data: Any, as_json: bool, columns: Sequence[str] | None = None, title: str | None = None
) -> None:
    """Render a record or a list of records (dicts or the SDK's typed views)."""
    data = records(data)
    if as_json:
        print_json(data)
        return
    if isinstance(data, list):
        table(data, columns or (list(data[0].keys()) if data else []), title)
        return
    out = Table(show_header=False, title=title)
    out.add_column("field", style="bold")
    out.add_column("value", overflow="fold")
    for key in columns or data.keys():
        out.add_row(key.replace("_", " "), _cell(data.get(key)))
    console.print(out)
