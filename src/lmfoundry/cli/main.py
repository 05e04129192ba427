"""`lmfoundry`: the command line. Commands are thin clients of the management API, except
`up` (which runs the server) and `tokens new` (which needs none)."""

from __future__ import annotations

import sys

import typer

from lmfoundry import __version__
from lmfoundry.cli import (
    access,
    catalog,
    chat,
    connections,
    datasets,
    endpoints,
    flow_export,
    flows,
    jobs,
    quotas,
    serverless,
    status,
    up,
    usage,
)
from lmfoundry.cli._output import err_console
from lmfoundry.errors import LmfError

app = typer.Typer(
    name="lmfoundry",
    help="Self-hosted platform for small language models. Start with `lmfoundry up`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("up")(up.up)
app.command("login")(access.login)
app.command("chat")(chat.chat)
app.command("usage")(usage.usage)
app.command("status")(status.status)
app.command("audit")(usage.audit)
app.add_typer(catalog.catalog_app, name="catalog")
app.add_typer(catalog.models_app, name="models")
access.projects_app.command("quota")(quotas.projects_quota)
app.add_typer(access.projects_app, name="projects")
app.add_typer(access.users_app, name="users")
app.add_typer(access.tokens_app, name="tokens")
app.add_typer(serverless.app, name="serverless")
app.add_typer(endpoints.app, name="endpoints")
app.add_typer(datasets.app, name="datasets")
app.add_typer(jobs.app, name="jobs")
app.add_typer(connections.app, name="connections")
flows.app.command("export")(flow_export.export)
app.add_typer(flows.app, name="flow")


@app.command("version")
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    """Entry point: one place where errors become a message and an exit code."""
    try:
        app()
    except LmfError as exc:
        err_console.print(f"[bold red]Error:[/] {exc.message}", highlight=False)
        sys.exit(2 if 400 <= exc.status_code < 500 else 1)
    except KeyboardInterrupt:
        sys.exit(130)
